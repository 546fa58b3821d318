// Paged causal attention for AVX-512 CPUs, flash-attention style: the span method of
// attention_spans.inc (shared with attention_avx2.cc) on 16-lane vectors. What this file
// supplies: scores 16 keys per vector, by 16 x 16 transposes in registers (kt[head_dim][16], no
// horizontal sums; prefill) or dot products folded by a transpose-add tree (decode); softmax with
// mask registers and scalef; p . V with 64 columns of 4 queries' accumulators in registers. No
// step of a span waits on a per-chunk scalar chain, and K and V are read once per tile.
// head_dim must be a multiple of 64 (64, 128, 192, 256); other sizes use the portable kernel.
// The cache is f32 or bf16; bf16 rows are split into even and odd elements as they are loaded
// (load16 below).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/attention_rows.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512 {
namespace portable {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace portable

namespace {

constexpr int kKeys = 16;  // keys per chunk (one vector of scores)
// Query vectors sharing one pass over the cache: a prefill tile's transposed keys serve them
// all. 32 against 16, 256 queries at a 2048-key context, one thread, medians of 3: SmolLM2's
// shape 14.2 -> 13.2 ms (bf16 cache), Llama-3-8B's 102 -> 91 ms, TinyLlama's 49 -> 45 ms.
constexpr int kTileQueries = kMaxTaskQueries;
constexpr int kSpanKeys = 256;     // keys whose scores are held at once (32 KiB for 32 queries)
constexpr int kPrefetchKeys = 48;  // keys asked for ahead of the scores (3 chunks)
constexpr int kHeadDimMultiple = 64;
using Scores = __m512;  // the scores of one chunk of keys

inline void store_scores(float* p, __m512 v) {
  _mm512_store_ps(p, v);
}
// p[0 .. n) = 0, and *= s; n a multiple of 16, p 64-byte aligned.
inline void zero_floats(float* p, int n) {
  for (int i = 0; i < n; i += 16) _mm512_store_ps(p + i, _mm512_setzero_ps());
}
inline void scale_floats(float* p, float s, int n) {
  const __m512 factor = _mm512_set1_ps(s);
  for (int i = 0; i < n; i += 16)
    _mm512_store_ps(p + i, _mm512_mul_ps(_mm512_load_ps(p + i), factor));
}

// e^x per lane for x <= 0 (Cephes expf polynomial, about 1 ulp); x below -87 gives ~0.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(e, n);
}

inline float exp_nonpositive(float x) {
  return _mm512_cvtss_f32(exp_nonpositive(_mm512_set1_ps(x)));
}

// The 16 cache elements of slot d / 16 of a row as f32. An f32 row is read as it lies. A bf16
// row is read 32 elements (one 64-byte load) at a time and split without a shuffle: the even
// elements are the low halves of its 32-bit lanes shifted up, the odd ones the high halves
// masked (a bf16 is the top half of an f32). So for bf16 caches slot 2m holds elements 32m,
// 32m + 2, ... and slot 2m + 1 elements 32m + 1, 32m + 3, ...: the queries are put in that
// order once per tile (permute_query) and the outputs put back (unpermute_output).
inline __m512 load16(const float* row, int d) {
  return _mm512_loadu_ps(row + d);
}
inline __m512 load16(const uint16_t* row, int d) {
  const __m512i x = _mm512_loadu_si512(row + (d & ~31));
  return _mm512_castsi512_ps((d & 16) ? _mm512_and_si512(x, _mm512_set1_epi32(int(0xFFFF0000u)))
                                      : _mm512_slli_epi32(x, 16));
}

template <typename KV>
constexpr bool kPermutedSlots = false;
template <>
constexpr bool kPermutedSlots<uint16_t> = true;

// dst[0..head_dim) = src scaled, in the cache's slot order.
template <typename KV>
inline void permute_query(const float* src, float scale, int head_dim, float* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int d = 0; d < head_dim; d += 32) {
    const __m512 a = _mm512_mul_ps(_mm512_loadu_ps(src + d), s);
    const __m512 b = _mm512_mul_ps(_mm512_loadu_ps(src + d + 16), s);
    if constexpr (kPermutedSlots<KV>) {
      const __m512i even =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i odd =
          _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
      _mm512_store_ps(dst + d, _mm512_permutex2var_ps(a, even, b));
      _mm512_store_ps(dst + d + 16, _mm512_permutex2var_ps(a, odd, b));
    } else {
      _mm512_store_ps(dst + d, a);
      _mm512_store_ps(dst + d + 16, b);
    }
  }
}

// dst[0..head_dim) = src (in slot order) x scale, back in the head's own order.
template <typename KV>
inline void unpermute_output(const float* src, float scale, int head_dim, float* dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int d = 0; d < head_dim; d += 32) {
    const __m512 a = _mm512_mul_ps(_mm512_load_ps(src + d), s);
    const __m512 b = _mm512_mul_ps(_mm512_load_ps(src + d + 16), s);
    if constexpr (kPermutedSlots<KV>) {
      const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      const __m512i high =
          _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
      _mm512_storeu_ps(dst + d, _mm512_permutex2var_ps(a, low, b));
      _mm512_storeu_ps(dst + d + 16, _mm512_permutex2var_ps(a, high, b));
    } else {
      _mm512_storeu_ps(dst + d, a);
      _mm512_storeu_ps(dst + d + 16, b);
    }
  }
}

// Scores of 4 queries (rows of q_scaled, stride kMaxHeadDim) against the 16 keys in kt.
inline void scores_of_four(const float* q_scaled, const float* kt, int head_dim, __m512 out[4]) {
  __m512 even[4], odd[4];
  for (int j = 0; j < 4; ++j) even[j] = odd[j] = _mm512_setzero_ps();
  for (int d = 0; d < head_dim; d += 2) {
    const __m512 k0 = _mm512_load_ps(kt + d * kKeys);
    const __m512 k1 = _mm512_load_ps(kt + (d + 1) * kKeys);
    for (int j = 0; j < 4; ++j) {
      even[j] = _mm512_fmadd_ps(_mm512_set1_ps(q_scaled[j * kMaxHeadDim + d]), k0, even[j]);
      odd[j] = _mm512_fmadd_ps(_mm512_set1_ps(q_scaled[j * kMaxHeadDim + d + 1]), k1, odd[j]);
    }
  }
  for (int j = 0; j < 4; ++j) out[j] = _mm512_add_ps(even[j], odd[j]);
}

// acc[q][0..head_dim) += sum_t p[q][t] * v[t] over `count` values, for QN queries (rows of
// `acc` and `p`, strides kMaxHeadDim and kSpanKeys): each value row is loaded once for all QN.
template <int QN, typename KV>
inline void accumulate_values(float (*acc)[kMaxHeadDim], const float (*p)[kSpanKeys],
                              CacheRows<KV> values, int count, int head_dim) {
  for (int d0 = 0; d0 < head_dim; d0 += 64) {
    __m512 sum[QN][4];
    for (int q = 0; q < QN; ++q) {
      for (int v = 0; v < 4; ++v) sum[q][v] = _mm512_load_ps(&acc[q][d0 + v * 16]);
    }
    for (int t = 0; t < count; ++t) {
      __m512 row[4];
      for (int v = 0; v < 4; ++v) row[v] = load16(values[t], d0 + v * 16);
      for (int q = 0; q < QN; ++q) {
        const __m512 weight = _mm512_set1_ps(p[q][t]);
        for (int v = 0; v < 4; ++v) sum[q][v] = _mm512_fmadd_ps(weight, row[v], sum[q][v]);
      }
    }
    for (int q = 0; q < QN; ++q) {
      for (int v = 0; v < 4; ++v) _mm512_store_ps(&acc[q][d0 + v * 16], sum[q][v]);
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

// Scores of one query (scaled, contiguous) against 16 keys in place in the cache, in dot
// form: 16 partial-sum vectors folded into one vector of 16 scores by a transpose-add tree.
// Cheaper than transposing the keys when few queries share a chunk (decode).
template <typename KV>
inline __m512 scores_dot(const float* q_scaled, CacheRows<KV> key_rows, int head_dim) {
  __m512 v[16];
  for (int t = 0; t < 16; ++t) {
    __m512 sum = _mm512_mul_ps(_mm512_load_ps(q_scaled), load16(key_rows[t], 0));
    for (int d = 16; d < head_dim; d += 16) {
      sum = _mm512_fmadd_ps(_mm512_load_ps(q_scaled + d), load16(key_rows[t], d), sum);
    }
    v[t] = sum;
  }
  return fold_sixteen(v, [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); });
}

// The same scores for QN queries (rows of q_scaled, stride kMaxHeadDim) at once: each key's
// slots are loaded (a bf16 row split) once for all QN, and the 16 keys go eight at a time
// (8 x QN sums in registers), each eight folded as it is done (fold_eight), so every score
// has scores_dot's bits. SmolLM2's decode row has 3 queries per kv head.
template <int QN, typename KV>
inline void scores_dot_queries(const float* q_scaled, CacheRows<KV> key_rows, int head_dim,
                               __m512* out) {
  const auto add = [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); };
  __m512 half[2][QN];
  for (int h = 0; h < 2; ++h) {
    __m512 v[QN][8];
    for (int t = 0; t < 8; ++t) {
      const KV* key = key_rows[8 * h + t];
      const __m512 k0 = load16(key, 0);
      for (int q = 0; q < QN; ++q) {
        v[q][t] = _mm512_mul_ps(_mm512_load_ps(q_scaled + q * kMaxHeadDim), k0);
      }
      for (int d = 16; d < head_dim; d += 16) {
        const __m512 k = load16(key, d);
        for (int q = 0; q < QN; ++q) {
          v[q][t] = _mm512_fmadd_ps(_mm512_load_ps(q_scaled + q * kMaxHeadDim + d), k, v[q][t]);
        }
      }
    }
    for (int q = 0; q < QN; ++q) half[h][q] = fold_eight(v[q], add);
  }
  for (int q = 0; q < QN; ++q) out[q] = fold_halves(half[0][q], half[1][q], add);
}

// scores[j * kSpanKeys ..] = the scores of query j of `queries` (rows of q_scaled) against the
// chunk's 16 keys, up to three queries per pass over the keys (more held 8 x QN sums past the
// registers).
template <typename KV>
inline void scores_of_queries(int queries, const float* q_scaled, CacheRows<KV> key_rows,
                              int head_dim, float* scores) {
  for (int j = 0; j < queries;) {
    const int left = queries - j;
    const int take = left == 4 ? 2 : left < 3 ? left : 3;  // 4 as 2 + 2
    __m512 out[3];
    const float* q = q_scaled + j * kMaxHeadDim;
    if (take == 3) {
      scores_dot_queries<3>(q, key_rows, head_dim, out);
    } else if (take == 2) {
      scores_dot_queries<2>(q, key_rows, head_dim, out);
    } else {
      out[0] = scores_dot(q, key_rows, head_dim);
    }
    for (int i = 0; i < take; ++i) _mm512_store_ps(scores + (j + i) * kSpanKeys, out[i]);
    j += take;
  }
}

// kt[d][0..16) = slot-order element d of the 16 keys, for d in [0, head_dim).
template <typename KV>
inline void transpose_keys(CacheRows<KV> key_rows, int head_dim, float* kt) {
  for (int d0 = 0; d0 < head_dim; d0 += 16) {
    __m512 r[16];
    for (int t = 0; t < kKeys; ++t) r[t] = load16(key_rows[t], d0);
    transpose16x16(r);
    for (int i = 0; i < 16; ++i) _mm512_store_ps(kt + (d0 + i) * kKeys, r[i]);
  }
}

// Turns row[0..padded) (scores of one query over a span, visible of them live, 0 < visible <=
// padded) into e^(score - new max), 0 past `visible`, and updates the query's running state.
// Returns the factor the query's accumulator must be multiplied by.
inline float softmax_span(float* row, int visible, int padded, float& running_max,
                          float& running_sum) {
  __m512 top = _mm512_set1_ps(-__builtin_huge_valf());
  for (int c = 0; c < visible; c += kKeys) {
    const __mmask16 live =
        visible - c >= kKeys ? __mmask16(0xFFFF) : __mmask16((1u << (visible - c)) - 1);
    top = _mm512_mask_max_ps(top, live, top, _mm512_load_ps(row + c));
  }
  const float span_max = _mm512_reduce_max_ps(top);
  const float old_max = running_max;
  const float new_max = span_max > old_max ? span_max : old_max;
  const __m512 shift = _mm512_set1_ps(new_max);
  __m512 total = _mm512_setzero_ps();
  for (int c = 0; c < padded; c += kKeys) {
    const int live_keys = visible - c;
    const __mmask16 live = live_keys >= kKeys ? __mmask16(0xFFFF)
                           : live_keys <= 0   ? __mmask16(0)
                                              : __mmask16((1u << live_keys) - 1);
    const __m512 e =
        _mm512_maskz_mov_ps(live, exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(row + c), shift)));
    _mm512_store_ps(row + c, e);
    total = _mm512_add_ps(total, e);
  }
  const float correction =
      old_max == -__builtin_huge_valf() ? 0.f : exp_nonpositive(old_max - new_max);
  running_sum = running_sum * correction + _mm512_reduce_add_ps(total);
  running_max = new_max;
  return correction;
}

#include "kernels/cpu/attention_spans.inc"

}  // namespace alem::cpu::avx512
