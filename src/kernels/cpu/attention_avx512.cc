// Paged causal attention for AVX-512 CPUs, flash-attention style. For one (sequence, kv head,
// run of query rows) task, the query vectors of a tile (every GQA head of the kv head, for up to
// 16 / group rows) walk the cache a span of up to 256 keys at a time:
//   1. scores of every query against the span's keys, 16 keys per vector: with more than 4
//      queries the keys are gathered through the block table and transposed in registers
//      (kt[head_dim][16], no horizontal sums); with few (decode) each query takes dot products
//      straight from the cache rows, folded by a transpose-add tree;
//   2. per query, softmax over the span in vector form: the span's maximum, one correction of
//      the running state, exp of every score (keys past the query's position are masked to 0);
//   3. p . V with every value row read once for 4 queries at a time (64 columns of 4 queries'
//      accumulators in registers).
// No step of a span waits on a per-chunk scalar chain, and K and V are read once per tile.
// head_dim must be a multiple of 64 (64, 128, 192, 256); other sizes use the portable kernel.
// The cache is f32 or bf16; bf16 rows are split into even and odd elements as they are loaded
// (load16 below).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512 {
namespace portable {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace portable

namespace {

constexpr int kKeys = 16;           // keys per chunk (one vector of scores)
constexpr int kTileQueries = 16;    // query vectors sharing one pass over the cache
constexpr int kSpanKeys = 256;      // keys whose scores are held at once (16 KiB for 16 queries)
constexpr int kPrefetchChunks = 3;  // chunks of keys asked for ahead of the scores

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
                              const KV* const* values, int count, int head_dim) {
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

// Scores of one query (scaled, contiguous) against up to 16 keys in place in the cache, in dot
// form: 16 partial-sum vectors folded into one vector of 16 scores by a transpose-add tree.
// Cheaper than transposing the keys when few queries share a chunk (decode).
template <typename KV>
inline __m512 scores_dot(const float* q_scaled, const KV* const* key_rows, int keys, int head_dim) {
  __m512 v[16];
  for (int t = 0; t < 16; ++t) {
    if (t >= keys) {
      v[t] = _mm512_setzero_ps();
      continue;
    }
    __m512 sum = _mm512_mul_ps(_mm512_load_ps(q_scaled), load16(key_rows[t], 0));
    for (int d = 16; d < head_dim; d += 16) {
      sum = _mm512_fmadd_ps(_mm512_load_ps(q_scaled + d), load16(key_rows[t], d), sum);
    }
    v[t] = sum;
  }
  __m512 w[8];  // w[i], 128-bit lane L: partial sums of keys 2i, 2i+1 (twice each)
  for (int i = 0; i < 8; ++i) {
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 x[4];  // x[j], lane L: partial sums of keys 4j..4j+3 over lane L
  for (int j = 0; j < 4; ++j) {
    const __m512d a = _mm512_castps_pd(w[2 * j]), b = _mm512_castps_pd(w[2 * j + 1]);
    x[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 z01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
  const __m512 z23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z01, z23, 0x88), _mm512_shuffle_f32x4(z01, z23, 0xDD));
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
          for (int d = 0; d < head_dim; d += 16)
            _mm512_store_ps(&acc[queries][d], _mm512_setzero_ps());
          query_position[queries] = static_cast<int64_t>(seq.start_pos) + tile_row + r;
          query_index[queries] = (tile_row + r - work.row_begin) * group + g;
          running_max[queries] = -__builtin_huge_valf();
          running_sum[queries] = 0.f;
          ++queries;
        }
      }
      for (int i = queries; i < kTileQueries; ++i) {  // unused slots of the last group of four
        for (int d = 0; d < head_dim; d += 16)
          _mm512_store_ps(&q_scaled[i][d], _mm512_setzero_ps());
      }
      // Few queries: scores straight from the cache rows; many: transpose the keys once.
      const bool transpose_keys = queries > 4;
      int64_t context = static_cast<int64_t>(seq.start_pos) + tile_row + tile_rows;
      if (context > work.key_end) context = work.key_end;
      for (int64_t span = work.key_begin; span < context; span += kSpanKeys) {
        const int span_keys =
            context - span < kSpanKeys ? static_cast<int>(context - span) : kSpanKeys;
        // Cache rows of the span's keys and values (one division per span, not per key).
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
        // 1. Scores, 16 keys at a time. In decode the cache is cold (the weights streamed
        // through since the last step) and its rows are scattered over blocks, beyond what the
        // hardware prefetchers follow: the keys kPrefetchChunks chunks ahead and this chunk's
        // values are asked for in advance.
        for (int c = 0; c < span_keys; c += kKeys) {
          const int keys = span_keys - c < kKeys ? span_keys - c : kKeys;
          const KV* const* chunk_keys = key_rows + c;
          const int ahead = c == 0 ? 0 : c + kPrefetchChunks * kKeys;  // a span starts cold
          const int ahead_end = c == 0 ? (kPrefetchChunks + 1) * kKeys : ahead + kKeys;
          for (int t = ahead; t < ahead_end && t < span_keys; ++t) {
            prefetch_row<_MM_HINT_T0>(key_rows[t], head_dim);
            // The first kv head's task also asks for every head's part of the same cache rows
            // (one contiguous run per token), so the tasks of the other heads find them in L2.
            if (kv_head == 0 && shape.num_kv_heads > 1) {
              prefetch_row<_MM_HINT_T1>(key_rows[t], static_cast<int>(token_stride));
              prefetch_row<_MM_HINT_T1>(value_rows[t], static_cast<int>(token_stride));
            }
          }
          for (int t = c; t < c + keys; ++t) prefetch_row<_MM_HINT_T1>(value_rows[t], head_dim);
          if (transpose_keys) {
            for (int d0 = 0; d0 < head_dim; d0 += 16) {
              __m512 r[16];
              for (int t = 0; t < kKeys; ++t) {
                r[t] = t < keys ? load16(chunk_keys[t], d0) : _mm512_setzero_ps();
              }
              transpose16x16(r);
              for (int i = 0; i < 16; ++i) _mm512_store_ps(kt + (d0 + i) * kKeys, r[i]);
            }
            for (int q0 = 0; q0 < queries; q0 += 4) {
              __m512 four[4];
              scores_of_four(&q_scaled[q0][0], kt, head_dim, four);
              for (int j = 0; j < 4 && q0 + j < queries; ++j) {
                _mm512_store_ps(&scores[q0 + j][c], four[j]);
              }
            }
          } else {
            for (int qi = 0; qi < queries; ++qi) {
              _mm512_store_ps(&scores[qi][c],
                              scores_dot(&q_scaled[qi][0], chunk_keys, keys, head_dim));
            }
          }
        }
        // 2. Softmax state per query: keys past its position (and past the span) weigh 0.
        const int padded = (span_keys + kKeys - 1) / kKeys * kKeys;
        for (int qi = 0; qi < queries; ++qi) {
          int64_t visible = query_position[qi] + 1 - span;
          if (visible > span_keys) visible = span_keys;
          float* row = scores[qi];
          if (visible <= 0) {
            for (int c = 0; c < padded; c += kKeys) _mm512_store_ps(row + c, _mm512_setzero_ps());
            continue;
          }
          __m512 top = _mm512_set1_ps(-__builtin_huge_valf());
          for (int c = 0; c < visible; c += kKeys) {
            const __mmask16 live =
                visible - c >= kKeys ? __mmask16(0xFFFF) : __mmask16((1u << (visible - c)) - 1);
            top = _mm512_mask_max_ps(top, live, top, _mm512_load_ps(row + c));
          }
          const float span_max = _mm512_reduce_max_ps(top);
          const float old_max = running_max[qi];
          const float new_max = span_max > old_max ? span_max : old_max;
          const __m512 shift = _mm512_set1_ps(new_max);
          __m512 total = _mm512_setzero_ps();
          for (int c = 0; c < padded; c += kKeys) {
            const int64_t live_keys = visible - c;
            const __mmask16 live = live_keys >= kKeys ? __mmask16(0xFFFF)
                                   : live_keys <= 0   ? __mmask16(0)
                                                      : __mmask16((1u << live_keys) - 1);
            const __m512 e = _mm512_maskz_mov_ps(
                live, exp_nonpositive(_mm512_sub_ps(_mm512_load_ps(row + c), shift)));
            _mm512_store_ps(row + c, e);
            total = _mm512_add_ps(total, e);
          }
          const float correction =
              old_max == -__builtin_huge_valf() ? 0.f : exp_nonpositive(old_max - new_max);
          running_sum[qi] = running_sum[qi] * correction + _mm512_reduce_add_ps(total);
          running_max[qi] = new_max;
          if (correction != 1.f) {
            const __m512 scale = _mm512_set1_ps(correction);
            for (int d = 0; d < head_dim; d += 16) {
              _mm512_store_ps(&acc[qi][d], _mm512_mul_ps(_mm512_load_ps(&acc[qi][d]), scale));
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
  if (shape.head_dim % 64 != 0) {
    portable::attention(shape, seq, work, q, cache, out);
  } else if (cache.dtype == DType::BF16) {
    with_head_dim<uint16_t>(shape, seq, work, q, cache, out);
  } else {
    with_head_dim<float>(shape, seq, work, q, cache, out);
  }
}

}  // namespace alem::cpu::avx512
