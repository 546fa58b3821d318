// Why this exists: whether a light decode stream (one row of x against bf16, f16, f32, Q8_0 or
// int8 weights) reads faster with software prefetches or with the hardware prefetchers alone is
// not a property of the CPU model: on the same AMD Zen 4 it went one way in one session and the
// other way in a later one (docs/kernels-decode-streams.md, "Which streams prefetch"). So the CPU
// backend measures it while it serves, for each class of matrix, and keeps the faster setting.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu {

// Per class of matrix (the backend keys one by weight type, layout, row length and size in
// powers of two, the things that decide how a stream meets the caches): calls with the prefetches
// off and on in turn, timed per weight byte, then the setting whose median was lower for the next
// kExploitCalls calls of the class, then measure again (the neighbours' load on the memory
// changes). A class pools the matrices of every layer, so one decode step gives it tens of samples,
// where one matrix gives one. The first kWarmCalls calls of a class (page faults, a cold L3) are
// not measured. Thread-safe; the calls it times are whole matmuls.
class LightPrefetchTuner {
 public:
  static constexpr int kWarmCalls = 4;
  // Samples per setting and round of measuring: enough calls to read kSampleBytes of weights,
  // from kMinSamples (the LM head, read once a step) to kSamples (small matrices, whose calls
  // take tens of microseconds and vary more).
  static constexpr int kMinSamples = 5;
  static constexpr int kSamples = 15;
  static constexpr size_t kSampleBytes = size_t{32} << 20;
  static constexpr int64_t kExploitCalls = 4000;
  static int samples_for(size_t bytes);

  // The setting the next call in `matrix_class` runs with.
  LightPrefetch choose(uint64_t matrix_class);
  // What that call took: seconds for `bytes` of weights.
  void record(uint64_t matrix_class, LightPrefetch used, double seconds, size_t bytes);
  // The setting the class runs with now: kSetting while it is still measured or not yet seen.
  LightPrefetch chosen(uint64_t matrix_class) const;
  // Classes whose last round of measuring chose on / off (for the bench's report).
  struct Counts {
    int on = 0;
    int off = 0;
  };
  Counts counts() const;

 private:
  struct Class {
    int64_t calls = 0;  // since first seen, or since the last choice
    LightPrefetch chosen = LightPrefetch::kSetting;
    int taken[2] = {0, 0};  // samples this round, [off, on]
    float seconds_per_byte[2][kSamples] = {};
  };
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, Class> classes_;
};

// The median of n values (n <= LightPrefetchTuner::kSamples); reorders them.
float median_of(float* values, int n);

}  // namespace alem::cpu
