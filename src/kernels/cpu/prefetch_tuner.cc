// LightPrefetchTuner (see prefetch_tuner.h): the per-matrix measuring, built without ISA flags.
#include "kernels/cpu/prefetch_tuner.h"

#include <algorithm>

namespace alem::cpu {

float median_of(float* values, int n) {
  std::sort(values, values + n);
  return n % 2 == 1 ? values[n / 2] : 0.5f * (values[n / 2 - 1] + values[n / 2]);
}

LightPrefetch LightPrefetchTuner::choose(const void* matrix) {
  std::lock_guard<std::mutex> lock(mutex_);
  Matrix& m = matrices_[matrix];
  if (m.chosen != LightPrefetch::kSetting) {
    if (m.calls < kExploitCalls) return m.chosen;
    m.chosen = LightPrefetch::kSetting;  // measure again
    m.calls = kWarmCalls;
  }
  if (m.calls < kWarmCalls) return LightPrefetch::kSetting;
  // In turn, off first: the setting with fewer samples this round.
  return m.taken[0] <= m.taken[1] ? LightPrefetch::kOff : LightPrefetch::kOn;
}

void LightPrefetchTuner::record(const void* matrix, LightPrefetch used, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  Matrix& m = matrices_[matrix];
  ++m.calls;
  if (used == LightPrefetch::kSetting || m.chosen != LightPrefetch::kSetting) return;
  const int arm = used == LightPrefetch::kOn ? 1 : 0;
  if (m.taken[arm] < kSamples) m.seconds[arm][m.taken[arm]++] = static_cast<float>(seconds);
  if (m.taken[0] < kSamples || m.taken[1] < kSamples) return;
  const float off = median_of(m.seconds[0], kSamples), on = median_of(m.seconds[1], kSamples);
  m.chosen = on < off ? LightPrefetch::kOn : LightPrefetch::kOff;
  m.calls = 0;
  m.taken[0] = m.taken[1] = 0;
}

LightPrefetch LightPrefetchTuner::chosen(const void* matrix) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = matrices_.find(matrix);
  return it == matrices_.end() ? LightPrefetch::kSetting : it->second.chosen;
}

LightPrefetchTuner::Counts LightPrefetchTuner::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  Counts c;
  for (const auto& [key, m] : matrices_) {
    if (m.chosen == LightPrefetch::kOn) ++c.on;
    if (m.chosen == LightPrefetch::kOff) ++c.off;
  }
  return c;
}

}  // namespace alem::cpu
