// One logit row's sampling statistics, portable (the contract is LogitRowStatsFn in
// cpu_kernels.h): the CPU backend's fallback below AVX-512, the same arithmetic as
// KernelBackend::sampling_candidates' host loop (f64 sum of exp(x - max), ties to the lower index).
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::scalar {

void logit_row_stats(const float* x, int64_t n, LogitRowStats* out) {
  float max_logit = -HUGE_VALF;
  int32_t argmax = 0;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(x[i] < HUGE_VALF);  // NaN or +inf
    if (x[i] > max_logit) {
      max_logit = x[i];
      argmax = static_cast<int32_t>(i);
    }
  }
  out->invalid = bad;
  if (bad) return;
  out->max_logit = max_logit;
  out->argmax = argmax;
  double sum = 0.0;
  if (max_logit != -HUGE_VALF) {
    for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max_logit);
  }
  out->sum_exp = sum;
}

}  // namespace alem::cpu::scalar
