// One logit row's sampling statistics on AVX-512 (the CPU backend's sampling_candidates; the
// contract is LogitRowStatsFn in kernels/backend.h). A decode step reads every row of the
// vocabulary once for these, so they are vector loops: pass 1 finds the NaN/+inf flag, the
// maximum and the first index of the maximum (16 lanes, each keeping its first best, ties to the
// lower index at the end); pass 2 sums exp(x - max) in double with a vector exp good to about
// 3e-14 relative per term, so the sum matches the portable f64 loop to well under 1e-12.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512 {
namespace {

// e^x for x <= 0 in double: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor series to r^11
// (truncation below 3e-14 relative), scaled by 2^n; x below -746 gives 0.
inline __m512d exp_nonpositive_pd(__m512d x) {
  x = _mm512_max_pd(x, _mm512_set1_pd(-746.0));
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
  r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
  __m512d p = _mm512_set1_pd(1.0 / 39916800.0);  // 1/11!
  constexpr double kInverseFactorials[] = {
      1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0,
      1.0 / 24.0,      1.0 / 6.0,      0.5,           1.0,          1.0};
  for (double c : kInverseFactorials) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c));
  return _mm512_scalef_pd(p, n);
}

}  // namespace

void logit_row_stats(const float* x, int64_t n, LogitRowStats* out) {
  const __m512 inf = _mm512_set1_ps(__builtin_huge_valf());
  __m512 best = _mm512_set1_ps(-__builtin_huge_valf());
  __m512i best_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512i index = best_index;
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 live = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_huge_valf()), live, x + i);
    bad |= static_cast<__mmask16>(~_mm512_cmp_ps_mask(v, inf, _CMP_LT_OQ));  // NaN or +inf
    const __mmask16 better = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, better, v);
    best_index = _mm512_mask_mov_epi32(best_index, better, index);
    index = _mm512_add_epi32(index, step);
  }
  out->invalid = bad != 0;
  if (out->invalid) return;
  // Lanes reduced through memory, once per row (GCC 12 warns on its reduce intrinsics).
  alignas(64) float lane_best[16];
  alignas(64) int32_t lane_index[16];
  _mm512_store_ps(lane_best, best);
  _mm512_store_si512(lane_index, best_index);
  float max_logit = lane_best[0];
  int32_t argmax = lane_index[0];
  for (int l = 1; l < 16; ++l) {
    if (lane_best[l] > max_logit || (lane_best[l] == max_logit && lane_index[l] < argmax)) {
      max_logit = lane_best[l];
      argmax = lane_index[l];
    }
  }
  out->max_logit = max_logit;
  out->argmax = argmax;
  out->sum_exp = 0.0;
  if (max_logit == -__builtin_huge_valf()) return;
  const __m512d max_d = _mm512_set1_pd(static_cast<double>(max_logit));
  __m512d sum_a = _mm512_setzero_pd(), sum_b = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16) {
    const int64_t left = n - i;
    const __mmask16 live = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-__builtin_huge_valf()), live, x + i);
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi =
        _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    sum_a = _mm512_add_pd(sum_a, exp_nonpositive_pd(_mm512_sub_pd(lo, max_d)));
    sum_b = _mm512_add_pd(sum_b, exp_nonpositive_pd(_mm512_sub_pd(hi, max_d)));
  }
  alignas(64) double lane_sum[8];
  _mm512_store_pd(lane_sum, _mm512_add_pd(sum_a, sum_b));
  double sum = 0.0;
  for (double s : lane_sum) sum += s;
  out->sum_exp = sum;
}

}  // namespace alem::cpu::avx512
