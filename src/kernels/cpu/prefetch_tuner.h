// Why this exists: whether a light decode stream (one row of x against bf16, f16, f32, Q8_0 or
// int8 weights) reads faster with software prefetches or with the hardware prefetchers alone is
// not a property of the CPU model: on the same AMD Zen 4 it went one way in one session and the
// other way in a later one (docs/kernels-quantized.md, "Which streams prefetch"). So the CPU
// backend measures it for each matrix while it serves, and keeps the faster setting.
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu {

// Per matrix (keyed by its weights' address): a few calls with the prefetches on and off in
// turn, then the one whose median time was lower for the next kExploitCalls calls, then measure
// again (the neighbours' load on the memory changes). The first kWarmCalls calls of a matrix
// (page faults, a cold L3) are not measured. Thread-safe; the calls it times are whole matmuls.
class LightPrefetchTuner {
 public:
  static constexpr int kWarmCalls = 2;
  static constexpr int kSamples = 5;  // per setting, per round of measuring
  static constexpr int64_t kExploitCalls = 1000;

  // The setting the next call on `matrix` runs with.
  LightPrefetch choose(const void* matrix);
  // What that call took, in seconds.
  void record(const void* matrix, LightPrefetch used, double seconds);
  // The setting `matrix` runs with now: kSetting while it is still measured or not yet seen.
  LightPrefetch chosen(const void* matrix) const;
  // Matrices whose last round of measuring chose on / off (for the bench's report).
  struct Counts {
    int on = 0;
    int off = 0;
  };
  Counts counts() const;

 private:
  struct Matrix {
    int64_t calls = 0;  // since first seen, or since the last choice
    LightPrefetch chosen = LightPrefetch::kSetting;
    int taken[2] = {0, 0};  // samples this round, [off, on]
    float seconds[2][kSamples] = {};
  };
  mutable std::mutex mutex_;
  std::unordered_map<const void*, Matrix> matrices_;
};

// The median of n values (n <= LightPrefetchTuner::kSamples); reorders them.
float median_of(float* values, int n);

}  // namespace alem::cpu
