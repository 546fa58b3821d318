// LightPrefetchTuner (see prefetch_tuner.h): the measuring per class of matrix, built without ISA
// flags.
#include "kernels/cpu/prefetch_tuner.h"

#include <algorithm>

namespace alem::cpu {

float median_of(float* values, int n) {
  std::sort(values, values + n);
  return n % 2 == 1 ? values[n / 2] : 0.5f * (values[n / 2 - 1] + values[n / 2]);
}

int LightPrefetchTuner::samples_for(size_t bytes) {
  const size_t calls = (kSampleBytes + std::max<size_t>(bytes, 1) - 1) / std::max<size_t>(bytes, 1);
  return static_cast<int>(std::clamp<size_t>(calls, kMinSamples, kSamples));
}

LightPrefetch LightPrefetchTuner::choose(uint64_t matrix_class) {
  std::lock_guard<std::mutex> lock(mutex_);
  Class& c = classes_[matrix_class];
  if (c.chosen != LightPrefetch::kSetting) {
    if (c.calls < kExploitCalls) return c.chosen;
    c.chosen = LightPrefetch::kSetting;  // measure again
    c.calls = kWarmCalls;
  }
  if (c.calls < kWarmCalls) return LightPrefetch::kSetting;
  // In turn, off first: the setting with fewer samples this round.
  return c.taken[0] <= c.taken[1] ? LightPrefetch::kOff : LightPrefetch::kOn;
}

void LightPrefetchTuner::record(uint64_t matrix_class, LightPrefetch used, double seconds,
                                size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  Class& c = classes_[matrix_class];
  ++c.calls;
  if (used == LightPrefetch::kSetting || c.chosen != LightPrefetch::kSetting) return;
  const int arm = used == LightPrefetch::kOn ? 1 : 0;
  if (c.taken[arm] < kSamples) {
    c.seconds_per_byte[arm][c.taken[arm]++] =
        static_cast<float>(seconds / static_cast<double>(std::max<size_t>(bytes, 1)));
  }
  const int needed = samples_for(bytes);
  if (c.taken[0] < needed || c.taken[1] < needed) return;
  const float off = median_of(c.seconds_per_byte[0], c.taken[0]);
  const float on = median_of(c.seconds_per_byte[1], c.taken[1]);
  c.chosen = on < off ? LightPrefetch::kOn : LightPrefetch::kOff;
  c.calls = 0;
  c.taken[0] = c.taken[1] = 0;
}

LightPrefetch LightPrefetchTuner::chosen(uint64_t matrix_class) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = classes_.find(matrix_class);
  return it == classes_.end() ? LightPrefetch::kSetting : it->second.chosen;
}

LightPrefetchTuner::Counts LightPrefetchTuner::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Counts counts;
  for (const auto& [key, c] : classes_) {
    if (c.chosen == LightPrefetch::kOn) ++counts.on;
    if (c.chosen == LightPrefetch::kOff) ++counts.off;
  }
  return counts;
}

}  // namespace alem::cpu
