// Paged causal attention for CPUs with AVX2 and FMA but no AVX-512: attention_avx512.cc's
// flash-attention method on 8-lane vectors, written by hand because the portable kernel
// (attention_kernel.inc) compiled with AVX2 flags took about 11% of SmolLM2-135M's decode step
// with ALEM_CPU_ISA=avx2. For one (sequence, kv head, run of query rows) task, the query vectors
// of a tile (every GQA head of the kv head, for up to 16 / group rows) walk the cache a span of
// up to 256 keys at a time:
//   1. scores of every query against the span's keys, 8 keys per vector: with more than 4
//      queries the keys are gathered through the block table and transposed in registers
//      (kt[head_dim][8], no horizontal sums); with few (decode) each query takes dot products
//      straight from the cache rows, folded by a transpose-add tree;
//   2. per query, softmax over the span in vector form: the span's maximum, one correction of
//      the running state, exp of every score (keys past the query's position are masked to 0);
//   3. p . V with every value row read once for 4 queries at a time (16 columns of 4 queries'
//      accumulators in registers).
// head_dim must be a multiple of 16 (64, 80, 128, 256, ...); other sizes use the portable kernel.
// The cache is f32 or bf16; bf16 rows are split into even and odd elements as they are loaded
// (load16 below), the queries permuted to match once per tile and the outputs put back.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx2 {
namespace portable {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace portable

namespace {

constexpr int kKeys = 8;           // keys per chunk (one vector of scores)
constexpr int kTileQueries = 16;   // query vectors sharing one pass over the cache
constexpr int kSpanKeys = 256;     // keys whose scores are held at once (16 KiB for 16 queries)
constexpr int kPrefetchKeys = 48;  // keys asked for ahead of the scores (6 chunks)

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

inline float reduce_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// All bits set in lanes [0, n), clear in the others (0 <= n <= 8).
inline __m256 first_lanes(int n) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// Transposes the 8x8 block held in r[0..7] (row i becomes column i).
inline void transpose8x8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m256 u[8];  // u[4h + j], 128-bit half L: column j + 4L of rows 4h..4h+3
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
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

// Asks for the cache lines of `elements` cache elements from `row` (kHint: _MM_HINT_T0 or T1).
template <decltype(_MM_HINT_T0) kHint, typename KV>
inline void prefetch_row(const KV* row, int elements) {
  const char* bytes = reinterpret_cast<const char*>(row);
  const int size = elements * static_cast<int>(sizeof(KV));
  for (int b = 0; b < size; b += 64) _mm_prefetch(bytes + b, kHint);
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
inline void transpose_keys(const KV* const* key_rows, int head_dim, float* kt) {
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
                              const KV* const* values, int count, int head_dim) {
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
                              const KV* const* values, int count, int head_dim) {
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
inline __m256 scores_dot(const float* q_scaled, const KV* const* key_rows, int head_dim) {
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
  const float span_max = reduce_max(top);
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
  running_sum = running_sum * correction + reduce_add(total);
  running_max = new_max;
  return correction;
}

// kHeadDim: the head size fixed at compile time (the common 64 and 128, so every loop over it
// unrolls), or 0 to take shape.head_dim.
template <typename KV, int kHeadDim>
void attention_typed(const AttentionShape& shape, const AttentionSequence& seq,
                     const AttentionWork& work, const float* q, KVCacheLayerView cache,
                     float* out) {
  const int head_dim = kHeadDim ? kHeadDim : shape.head_dim;
  const int kv_head = work.kv_head;
  const int block_size = shape.block_size;
  const int group = shape.num_heads / shape.num_kv_heads;
  const int64_t row_stride = static_cast<int64_t>(shape.num_heads) * head_dim;
  const int64_t token_stride = static_cast<int64_t>(shape.num_kv_heads) * head_dim;
  const int rows_per_tile = group >= kTileQueries ? 1 : kTileQueries / group;
  const int heads_per_pass = group < kTileQueries ? group : kTileQueries;

  alignas(64) float q_scaled[kTileQueries][kMaxHeadDim];
  alignas(64) float acc[kTileQueries][kMaxHeadDim];
  alignas(64) float kt[kMaxHeadDim * kKeys];
  alignas(64) float scores[kTileQueries][kSpanKeys];  // then the probabilities
  float running_max[kTileQueries], running_sum[kTileQueries];
  int64_t query_position[kTileQueries];
  int query_index[kTileQueries];  // (row - row_begin) * group + head in group
  const KV* key_rows[kSpanKeys];
  const KV* value_rows[kSpanKeys];

  for (int tile_row = work.row_begin; tile_row < work.row_end; tile_row += rows_per_tile) {
    const int tile_rows =
        work.row_end - tile_row < rows_per_tile ? work.row_end - tile_row : rows_per_tile;
    for (int head0 = 0; head0 < group; head0 += heads_per_pass) {
      int queries = 0;
      for (int r = 0; r < tile_rows; ++r) {
        for (int g = head0; g < group && g < head0 + heads_per_pass; ++g) {
          const int64_t row = seq.q_begin + tile_row + r;
          const float* q_vec =
              q + row * row_stride + (static_cast<int64_t>(kv_head) * group + g) * head_dim;
          permute_query<KV>(q_vec, shape.scale, head_dim, &q_scaled[queries][0]);
          for (int d = 0; d < head_dim; d += 8)
            _mm256_store_ps(&acc[queries][d], _mm256_setzero_ps());
          query_position[queries] = static_cast<int64_t>(seq.start_pos) + tile_row + r;
          query_index[queries] = (tile_row + r - work.row_begin) * group + g;
          running_max[queries] = -__builtin_huge_valf();
          running_sum[queries] = 0.f;
          ++queries;
        }
      }
      for (int i = queries; i < kTileQueries; ++i) {  // unused slots of the last group of four
        for (int d = 0; d < head_dim; d += 8) _mm256_store_ps(&q_scaled[i][d], _mm256_setzero_ps());
      }
      // Few queries: scores straight from the cache rows; many: transpose the keys once.
      const bool transpose = queries > 4;
      int64_t context = static_cast<int64_t>(seq.start_pos) + tile_row + tile_rows;
      if (context > work.key_end) context = work.key_end;
      for (int64_t span = work.key_begin; span < context; span += kSpanKeys) {
        const int span_keys =
            context - span < kSpanKeys ? static_cast<int>(context - span) : kSpanKeys;
        const int padded = (span_keys + kKeys - 1) / kKeys * kKeys;
        // Cache rows of the span's keys and values (one division per span, not per key). The
        // last chunk is padded with copies of the last row: its extra scores are masked later.
        int64_t block = span / block_size;
        int offset = static_cast<int>(span - block * block_size);
        for (int t = 0; t < span_keys; ++t) {
          const int64_t slot = static_cast<int64_t>(seq.block_table[block]) * block_size + offset;
          key_rows[t] = static_cast<const KV*>(cache.k) + slot * token_stride + kv_head * head_dim;
          value_rows[t] =
              static_cast<const KV*>(cache.v) + slot * token_stride + kv_head * head_dim;
          if (++offset == block_size) {
            offset = 0;
            ++block;
          }
        }
        for (int t = span_keys; t < padded; ++t) {
          key_rows[t] = key_rows[span_keys - 1];
          value_rows[t] = value_rows[span_keys - 1];
        }
        // 1. Scores, 8 keys at a time. In decode the cache is cold (the weights streamed
        // through since the last step) and its rows are scattered over blocks, beyond what the
        // hardware prefetchers follow: the keys kPrefetchKeys ahead and this chunk's values are
        // asked for in advance.
        for (int c = 0; c < padded; c += kKeys) {
          const KV* const* chunk_keys = key_rows + c;
          const int ahead = c == 0 ? 0 : c + kPrefetchKeys;  // a span starts cold
          const int ahead_end = c == 0 ? kPrefetchKeys + kKeys : ahead + kKeys;
          for (int t = ahead; t < ahead_end && t < span_keys; ++t) {
            prefetch_row<_MM_HINT_T0>(key_rows[t], head_dim);
            // The first kv head's task also asks for every head's part of the same cache rows
            // (one contiguous run per token), so the tasks of the other heads find them in L2.
            if (kv_head == 0 && shape.num_kv_heads > 1) {
              prefetch_row<_MM_HINT_T1>(key_rows[t], static_cast<int>(token_stride));
              prefetch_row<_MM_HINT_T1>(value_rows[t], static_cast<int>(token_stride));
            }
          }
          for (int t = c; t < c + kKeys && t < span_keys; ++t) {
            prefetch_row<_MM_HINT_T1>(value_rows[t], head_dim);
          }
          if (transpose) {
            transpose_keys(chunk_keys, head_dim, kt);
            for (int q0 = 0; q0 < queries; q0 += 4) {
              __m256 four[4];
              scores_of_four(&q_scaled[q0][0], kt, head_dim, four);
              for (int j = 0; j < 4 && q0 + j < queries; ++j) {
                _mm256_store_ps(&scores[q0 + j][c], four[j]);
              }
            }
          } else {
            for (int qi = 0; qi < queries; ++qi) {
              _mm256_store_ps(&scores[qi][c], scores_dot(&q_scaled[qi][0], chunk_keys, head_dim));
            }
          }
        }
        // 2. Softmax state per query: keys past its position (and past the span) weigh 0.
        for (int qi = 0; qi < queries; ++qi) {
          int64_t visible = query_position[qi] + 1 - span;
          if (visible > span_keys) visible = span_keys;
          float* row = scores[qi];
          if (visible <= 0) {
            for (int c = 0; c < padded; c += kKeys) _mm256_store_ps(row + c, _mm256_setzero_ps());
            continue;
          }
          const float correction = softmax_span(row, static_cast<int>(visible), padded,
                                                running_max[qi], running_sum[qi]);
          if (correction != 1.f) {
            const __m256 scale = _mm256_set1_ps(correction);
            for (int d = 0; d < head_dim; d += 8) {
              _mm256_store_ps(&acc[qi][d], _mm256_mul_ps(_mm256_load_ps(&acc[qi][d]), scale));
            }
          }
        }
        // 3. p . V, each value row read once per 4 queries.
        accumulate_values(queries, acc, scores, value_rows, span_keys, head_dim);
      }
      for (int qi = 0; qi < queries; ++qi) {
        if (work.partial) {
          float* record =
              work.partial + static_cast<int64_t>(query_index[qi]) * (kPartialExtra + head_dim);
          record[0] = running_max[qi];
          record[1] = running_sum[qi];
          unpermute_output<KV>(&acc[qi][0], 1.f, head_dim, record + kPartialExtra);
          continue;
        }
        const int row = work.row_begin + query_index[qi] / group;
        float* o = out + (seq.q_begin + row) * row_stride +
                   (static_cast<int64_t>(kv_head) * group + query_index[qi] % group) * head_dim;
        unpermute_output<KV>(&acc[qi][0], 1.f / running_sum[qi], head_dim, o);
      }
    }
  }
}

template <typename KV>
void with_head_dim(const AttentionShape& shape, const AttentionSequence& seq,
                   const AttentionWork& work, const float* q, KVCacheLayerView cache, float* out) {
  switch (shape.head_dim) {
    case 64:
      attention_typed<KV, 64>(shape, seq, work, q, cache, out);
      break;
    case 128:
      attention_typed<KV, 128>(shape, seq, work, q, cache, out);
      break;
    default:
      attention_typed<KV, 0>(shape, seq, work, q, cache, out);
      break;
  }
}

}  // namespace

void attention(const AttentionShape& shape, const AttentionSequence& seq, const AttentionWork& work,
               const float* q, KVCacheLayerView cache, float* out) {
  if (shape.head_dim % 16 != 0) {
    portable::attention(shape, seq, work, q, cache, out);
  } else if (cache.dtype == DType::BF16) {
    with_head_dim<uint16_t>(shape, seq, work, q, cache, out);
  } else {
    with_head_dim<float>(shape, seq, work, q, cache, out);
  }
}

}  // namespace alem::cpu::avx2
