// Paged causal attention for CPUs with AVX2 and FMA but no AVX-512: the span method of
// attention_spans.inc (shared with attention_avx512.cc) on 8-lane vectors. Written by hand
// because the portable kernel (attention_kernel.inc) compiled with AVX2 flags took about 11% of
// SmolLM2-135M's decode step with ALEM_CPU_ISA=avx2. What this file supplies: scores 8 keys per
// vector, by 8 x 8 transposes in registers (prefill) or dot products folded by an unpack-add tree
// (decode); exp with 2^n built in the exponent bits (AVX2 has no scalef); the last chunk's mask
// from an integer compare; p . V with 16 columns of 4 queries' accumulators in registers.
// head_dim must be a multiple of 16 (64, 80, 128, 256, ...); other sizes use the portable kernel.
// The cache is f32 or bf16; bf16 rows are split into even and odd elements as they are loaded
// (load16 below), the queries permuted to match once per tile and the outputs put back.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/attention_rows.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/registers_avx2.h"

namespace alem::cpu::avx2 {
namespace portable {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace portable

namespace {

constexpr int kKeys = 8;  // keys per chunk (one vector of scores)
// Query vectors sharing one pass over the cache (a prefill tile's transposed keys serve them
// all): 32 against 16, SmolLM2's shape, 256 queries at 2048 keys, one thread: 17.5-19.5 ->
// 16.4-17.3 ms.
constexpr int kTileQueries = kMaxTaskQueries;
constexpr int kSpanKeys = 256;     // keys whose scores are held at once (32 KiB for 32 queries)
constexpr int kPrefetchKeys = 48;  // keys asked for ahead of the scores (6 chunks)
constexpr int kHeadDimMultiple = 16;
using Scores = __m256;  // the scores of one chunk of keys

inline void store_scores(float* p, __m256 v) {
  _mm256_store_ps(p, v);
}
// p[0 .. n) = 0, and *= s; n a multiple of 8, p 32-byte aligned.
inline void zero_floats(float* p, int n) {
  for (int i = 0; i < n; i += 8) _mm256_store_ps(p + i, _mm256_setzero_ps());
}
inline void scale_floats(float* p, float s, int n) {
  const __m256 factor = _mm256_set1_ps(s);
  for (int i = 0; i < n; i += 8)
    _mm256_store_ps(p + i, _mm256_mul_ps(_mm256_load_ps(p + i), factor));
}

// e^x per lane for x <= 0 (Cephes expf polynomial, about 1 ulp); x below -87 gives ~0. AVX2 has
// no scalef: 2^n is built in the exponent bits (n >= -126 after the clamp, so it stays normal).
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.f));
  const __m256i pow2 =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(pow2));
}

inline float exp_nonpositive(float x) {
  return _mm256_cvtss_f32(exp_nonpositive(_mm256_set1_ps(x)));
}

// All bits set in lanes [0, n), clear in the others (0 <= n <= 8).
inline __m256 first_lanes(int n) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// Slots d / 8 and d / 8 + 1 (d a multiple of 16) of a cache row as f32, 8 elements each. An f32
// row is read as it lies. A bf16 row is read 16 elements (one 32-byte load) at a time and split
// without a shuffle: the even elements are the low halves of its 32-bit lanes shifted up, the
// odd ones the high halves masked (a bf16 is the top half of an f32). So for bf16 caches slot 2m
// holds elements 16m, 16m + 2, ... and slot 2m + 1 elements 16m + 1, 16m + 3, ...: the queries
// are put in that order once per tile (permute_query) and the outputs put back
// (unpermute_output).
inline void load16(const float* row, int d, __m256& lo, __m256& hi) {
  lo = _mm256_loadu_ps(row + d);
  hi = _mm256_loadu_ps(row + d + 8);
}
inline void load16(const uint16_t* row, int d, __m256& lo, __m256& hi) {
  const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + d));
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  hi = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xFFFF0000u))));
}

template <typename KV>
constexpr bool kPermutedSlots = false;
template <>
constexpr bool kPermutedSlots<uint16_t> = true;

// dst[0..head_dim) = src scaled, in the cache's slot order.
template <typename KV>
inline void permute_query(const float* src, float scale, int head_dim, float* dst) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int d = 0; d < head_dim; d += 16) {
    const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(src + d), s);
    const __m256 b = _mm256_mul_ps(_mm256_loadu_ps(src + d + 8), s);
    if constexpr (kPermutedSlots<KV>) {
      // shuffle: a0 a2 b0 b2 | a4 a6 b4 b6 (and the odd ones); then 64-bit pieces 0, 2, 1, 3.
      const __m256 even = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
      const __m256 odd = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
      _mm256_store_ps(dst + d, even);
      _mm256_store_ps(dst + d + 8, odd);
    } else {
      _mm256_store_ps(dst + d, a);
      _mm256_store_ps(dst + d + 8, b);
    }
  }
}

// dst[0..head_dim) = src (in slot order) x scale, back in the head's own order.
template <typename KV>
inline void unpermute_output(const float* src, float scale, int head_dim, float* dst) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int d = 0; d < head_dim; d += 16) {
    const __m256 a = _mm256_mul_ps(_mm256_load_ps(src + d), s);
    const __m256 b = _mm256_mul_ps(_mm256_load_ps(src + d + 8), s);
    if constexpr (kPermutedSlots<KV>) {
      // a: elements 0, 2, ..., 14; b: 1, 3, ..., 15. Interleave, then join the 128-bit halves.
      const __m256 low = _mm256_unpacklo_ps(a, b);   // 0 1 2 3 | 8 9 10 11
      const __m256 high = _mm256_unpackhi_ps(a, b);  // 4 5 6 7 | 12 13 14 15
      _mm256_storeu_ps(dst + d, _mm256_permute2f128_ps(low, high, 0x20));
      _mm256_storeu_ps(dst + d + 8, _mm256_permute2f128_ps(low, high, 0x31));
    } else {
      _mm256_storeu_ps(dst + d, a);
      _mm256_storeu_ps(dst + d + 8, b);
    }
  }
}

// Scores of 4 queries (rows of q_scaled, stride kMaxHeadDim) against the 8 keys in kt.
inline void scores_of_four(const float* q_scaled, const float* kt, int head_dim, __m256 out[4]) {
  __m256 even[4], odd[4];
  for (int j = 0; j < 4; ++j) even[j] = odd[j] = _mm256_setzero_ps();
  for (int d = 0; d < head_dim; d += 2) {
    const __m256 k0 = _mm256_load_ps(kt + d * kKeys);
    const __m256 k1 = _mm256_load_ps(kt + (d + 1) * kKeys);
    for (int j = 0; j < 4; ++j) {
      even[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(q_scaled + j * kMaxHeadDim + d), k0, even[j]);
      odd[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(q_scaled + j * kMaxHeadDim + d + 1), k1, odd[j]);
    }
  }
  for (int j = 0; j < 4; ++j) out[j] = _mm256_add_ps(even[j], odd[j]);
}

// kt[d][0..8) = slot-order element d of the 8 keys, for d in [0, head_dim).
template <typename KV>
inline void transpose_keys(CacheRows<KV> key_rows, int head_dim, float* kt) {
  for (int d0 = 0; d0 < head_dim; d0 += 16) {
    __m256 lo[8], hi[8];
    for (int t = 0; t < kKeys; ++t) load16(key_rows[t], d0, lo[t], hi[t]);
    transpose8x8(lo);
    transpose8x8(hi);
    for (int i = 0; i < 8; ++i) {
      _mm256_store_ps(kt + (d0 + i) * kKeys, lo[i]);
      _mm256_store_ps(kt + (d0 + 8 + i) * kKeys, hi[i]);
    }
  }
}

// acc[q][0..head_dim) += sum_t p[q][t] * v[t] over `count` values, for QN queries (rows of
// `acc` and `p`, strides kMaxHeadDim and kSpanKeys): each value row is loaded once for all QN.
template <int QN, typename KV>
inline void accumulate_values(float (*acc)[kMaxHeadDim], const float (*p)[kSpanKeys],
                              CacheRows<KV> values, int count, int head_dim) {
  for (int d0 = 0; d0 < head_dim; d0 += 16) {
    __m256 sum[QN][2];
    for (int q = 0; q < QN; ++q) {
      sum[q][0] = _mm256_load_ps(&acc[q][d0]);
      sum[q][1] = _mm256_load_ps(&acc[q][d0 + 8]);
    }
    for (int t = 0; t < count; ++t) {
      __m256 lo, hi;
      load16(values[t], d0, lo, hi);
      for (int q = 0; q < QN; ++q) {
        const __m256 weight = _mm256_broadcast_ss(&p[q][t]);
        sum[q][0] = _mm256_fmadd_ps(weight, lo, sum[q][0]);
        sum[q][1] = _mm256_fmadd_ps(weight, hi, sum[q][1]);
      }
    }
    for (int q = 0; q < QN; ++q) {
      _mm256_store_ps(&acc[q][d0], sum[q][0]);
      _mm256_store_ps(&acc[q][d0 + 8], sum[q][1]);
    }
  }
}

template <typename KV>
inline void accumulate_values(int queries, float (*acc)[kMaxHeadDim], const float (*p)[kSpanKeys],
                              CacheRows<KV> values, int count, int head_dim) {
  int q = 0;
  for (; q + 4 <= queries; q += 4) accumulate_values<4>(acc + q, p + q, values, count, head_dim);
  switch (queries - q) {
    case 3:
      accumulate_values<3>(acc + q, p + q, values, count, head_dim);
      break;
    case 2:
      accumulate_values<2>(acc + q, p + q, values, count, head_dim);
      break;
    case 1:
      accumulate_values<1>(acc + q, p + q, values, count, head_dim);
      break;
    default:
      break;
  }
}

// Scores of one query (scaled, contiguous, slot order) against 8 keys in place in the cache, in
// dot form: 8 partial-sum vectors folded into one vector of 8 scores by a transpose-add tree.
// Cheaper than transposing the keys when few queries share a chunk (decode).
template <typename KV>
inline __m256 scores_dot(const float* q_scaled, CacheRows<KV> key_rows, int head_dim) {
  __m256 v[8];
  for (int t = 0; t < 8; ++t) v[t] = _mm256_setzero_ps();
  for (int d = 0; d < head_dim; d += 16) {
    const __m256 q0 = _mm256_load_ps(q_scaled + d);
    const __m256 q1 = _mm256_load_ps(q_scaled + d + 8);
    for (int t = 0; t < 8; ++t) {
      __m256 lo, hi;
      load16(key_rows[t], d, lo, hi);
      v[t] = _mm256_fmadd_ps(q0, lo, v[t]);
      v[t] = _mm256_fmadd_ps(q1, hi, v[t]);
    }
  }
  __m256 w[4];  // w[i], 128-bit half L: partial sums of keys 2i, 2i+1 (twice each)
  for (int i = 0; i < 4; ++i) {
    w[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m256 x[2];  // x[j], half L: partial sums of keys 4j..4j+3 over half L
  for (int j = 0; j < 2; ++j) {
    const __m256d a = _mm256_castps_pd(w[2 * j]), b = _mm256_castps_pd(w[2 * j + 1]);
    x[j] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                         _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(x[0], x[1], 0x20),
                       _mm256_permute2f128_ps(x[0], x[1], 0x31));
}

// scores[j * kSpanKeys ..] = the scores of query j of `queries` (rows of q_scaled, stride
// kMaxHeadDim) against the chunk's keys, one query at a time (16 registers hold no more).
template <typename KV>
inline void scores_of_queries(int queries, const float* q_scaled, CacheRows<KV> key_rows,
                              int head_dim, float* scores) {
  for (int j = 0; j < queries; ++j) {
    store_scores(scores + j * kSpanKeys,
                 scores_dot(q_scaled + j * kMaxHeadDim, key_rows, head_dim));
  }
}

// Turns row[0..padded) (scores of one query over a span, visible of them live, 0 < visible <=
// padded) into e^(score - new max), 0 past `visible`, and updates the query's running state.
// Returns the factor the query's accumulator must be multiplied by.
inline float softmax_span(float* row, int visible, int padded, float& running_max,
                          float& running_sum) {
  const int whole = visible / kKeys * kKeys;
  const __m256 negative_infinity = _mm256_set1_ps(-__builtin_huge_valf());
  __m256 top = negative_infinity;
  for (int c = 0; c < whole; c += kKeys) top = _mm256_max_ps(top, _mm256_load_ps(row + c));
  const __m256 tail_live = first_lanes(visible - whole);
  if (whole < visible) {
    top = _mm256_max_ps(
        top, _mm256_blendv_ps(negative_infinity, _mm256_load_ps(row + whole), tail_live));
  }
  const float span_max = horizontal_max(top);
  const float old_max = running_max;
  const float new_max = span_max > old_max ? span_max : old_max;
  const __m256 shift = _mm256_set1_ps(new_max);
  __m256 total = _mm256_setzero_ps();
  int c = 0;
  for (; c < whole; c += kKeys) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(row + c), shift));
    _mm256_store_ps(row + c, e);
    total = _mm256_add_ps(total, e);
  }
  if (whole < visible) {
    const __m256 e =
        _mm256_and_ps(tail_live, exp_nonpositive(_mm256_sub_ps(_mm256_load_ps(row + c), shift)));
    _mm256_store_ps(row + c, e);
    total = _mm256_add_ps(total, e);
    c += kKeys;
  }
  for (; c < padded; c += kKeys) _mm256_store_ps(row + c, _mm256_setzero_ps());
  const float correction =
      old_max == -__builtin_huge_valf() ? 0.f : exp_nonpositive(old_max - new_max);
  running_sum = running_sum * correction + horizontal_sum(total);
  running_max = new_max;
  return correction;
}

#include "kernels/cpu/attention_spans.inc"

}  // namespace alem::cpu::avx2
