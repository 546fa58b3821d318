// Paged causal attention for AVX-512 CPUs, flash-attention style. For one (sequence, kv head,
// run of query rows) task, the query vectors of a tile (every GQA head of the kv head, for up to
// 16 / group rows) walk the cache 16 keys at a time:
//   1. the 16 keys are gathered through the block table and transposed in registers into
//      kt[head_dim][16], so scores for 16 keys are one vector per query (no horizontal sums);
//   2. scores -> online softmax (running max and denominator per query, vector exp);
//   3. the output accumulators get p . V for the 16 values, read in place from the cache.
// K and V of a chunk are read from memory once and reused by every query of the tile.
// head_dim must be a multiple of 64 (64, 128, 192, 256); other sizes use the portable kernel.
// The cache is f32 or bf16; bf16 rows are widened 16 at a time as they are loaded.
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512 {
namespace portable {
#include "kernels/cpu/attention_kernel.inc"
}  // namespace portable

namespace {

constexpr int kKeys = 16;         // keys per chunk (one vector of scores)
constexpr int kTileQueries = 16;  // query vectors sharing one pass over the cache

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

// 16 cache elements as f32: a plain load, or bf16 widened (a bf16 is the top half of an f32).
inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
inline __m512 load16(const uint16_t* p) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
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

// out[0..head_dim) = out * correction + sum_t p[t] * v[t] over `count` values.
template <typename KV>
inline void accumulate_values(float* out, float correction, const float* p, const KV* const* values,
                              int count, int head_dim) {
  const __m512 scale = _mm512_set1_ps(correction);
  for (int d0 = 0; d0 < head_dim; d0 += 64) {
    __m512 even[4], odd[4];
    for (int v = 0; v < 4; ++v) {
      even[v] = _mm512_mul_ps(_mm512_load_ps(out + d0 + v * 16), scale);
      odd[v] = _mm512_setzero_ps();
    }
    int t = 0;
    for (; t + 2 <= count; t += 2) {
      const __m512 p0 = _mm512_set1_ps(p[t]), p1 = _mm512_set1_ps(p[t + 1]);
      for (int v = 0; v < 4; ++v) {
        even[v] = _mm512_fmadd_ps(p0, load16(values[t] + d0 + v * 16), even[v]);
        odd[v] = _mm512_fmadd_ps(p1, load16(values[t + 1] + d0 + v * 16), odd[v]);
      }
    }
    if (t < count) {
      const __m512 p0 = _mm512_set1_ps(p[t]);
      for (int v = 0; v < 4; ++v) {
        even[v] = _mm512_fmadd_ps(p0, load16(values[t] + d0 + v * 16), even[v]);
      }
    }
    for (int v = 0; v < 4; ++v) _mm512_store_ps(out + d0 + v * 16, _mm512_add_ps(even[v], odd[v]));
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
    __m512 sum = _mm512_mul_ps(_mm512_load_ps(q_scaled), load16(key_rows[t]));
    for (int d = 16; d < head_dim; d += 16) {
      sum = _mm512_fmadd_ps(_mm512_load_ps(q_scaled + d), load16(key_rows[t] + d), sum);
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

template <typename KV>
void attention_typed(const AttentionShape& shape, const AttentionSequence& seq,
                     const AttentionWork& work, const float* q, KVCacheLayerView cache,
                     float* out) {
  const int head_dim = shape.head_dim;
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
  alignas(64) float probabilities[kKeys];
  float running_max[kTileQueries], running_sum[kTileQueries];
  int64_t query_position[kTileQueries];
  int query_index[kTileQueries];  // (row - row_begin) * group + head in group
  const KV* key_rows[kKeys];
  const KV* value_rows[kKeys];

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
          for (int d = 0; d < head_dim; d += 16) {
            _mm512_store_ps(&q_scaled[queries][d],
                            _mm512_mul_ps(_mm512_loadu_ps(q_vec + d), _mm512_set1_ps(shape.scale)));
            _mm512_store_ps(&acc[queries][d], _mm512_setzero_ps());
          }
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
      for (int64_t chunk = work.key_begin; chunk < context; chunk += kKeys) {
        const int keys = context - chunk < kKeys ? static_cast<int>(context - chunk) : kKeys;
        // Cache rows of this chunk's keys and values (one division per chunk, not per key).
        int64_t block = chunk / block_size;
        int offset = static_cast<int>(chunk - block * block_size);
        for (int t = 0; t < keys; ++t) {
          const int64_t slot = static_cast<int64_t>(seq.block_table[block]) * block_size + offset;
          key_rows[t] = static_cast<const KV*>(cache.k) + slot * token_stride + kv_head * head_dim;
          value_rows[t] =
              static_cast<const KV*>(cache.v) + slot * token_stride + kv_head * head_dim;
          if (++offset == block_size) {
            offset = 0;
            ++block;
          }
        }
        if (transpose_keys) {
          for (int d0 = 0; d0 < head_dim; d0 += 16) {
            __m512 r[16];
            for (int t = 0; t < kKeys; ++t) {
              r[t] = t < keys ? load16(key_rows[t] + d0) : _mm512_setzero_ps();
            }
            transpose16x16(r);
            for (int i = 0; i < 16; ++i) _mm512_store_ps(kt + (d0 + i) * kKeys, r[i]);
          }
        }
        for (int q0 = 0; q0 < queries; q0 += 4) {
          __m512 scores[4];
          if (transpose_keys) {
            scores_of_four(&q_scaled[q0][0], kt, head_dim, scores);
          } else {
            for (int j = 0; j < 4 && q0 + j < queries; ++j) {
              scores[j] = scores_dot(&q_scaled[q0 + j][0], key_rows, keys, head_dim);
            }
          }
          for (int j = 0; j < 4 && q0 + j < queries; ++j) {
            const int qi = q0 + j;
            int valid = static_cast<int>(query_position[qi] + 1 - chunk);
            if (valid <= 0) continue;
            if (valid > keys) valid = keys;
            const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
            const float chunk_max = _mm512_mask_reduce_max_ps(mask, scores[j]);
            const float old_max = running_max[qi];
            const float new_max = chunk_max > old_max ? chunk_max : old_max;
            const __m512 p = _mm512_maskz_mov_ps(
                mask, exp_nonpositive(_mm512_sub_ps(scores[j], _mm512_set1_ps(new_max))));
            const float correction =
                old_max == -__builtin_huge_valf() ? 0.f : exp_nonpositive(old_max - new_max);
            running_sum[qi] = running_sum[qi] * correction + _mm512_reduce_add_ps(p);
            running_max[qi] = new_max;
            _mm512_store_ps(probabilities, p);
            accumulate_values(acc[qi], correction, probabilities, value_rows, valid, head_dim);
          }
        }
      }
      for (int qi = 0; qi < queries; ++qi) {
        if (work.partial) {
          float* record =
              work.partial + static_cast<int64_t>(query_index[qi]) * (kPartialExtra + head_dim);
          record[0] = running_max[qi];
          record[1] = running_sum[qi];
          for (int d = 0; d < head_dim; d += 16) {
            _mm512_storeu_ps(record + kPartialExtra + d, _mm512_load_ps(&acc[qi][d]));
          }
          continue;
        }
        const int row = work.row_begin + query_index[qi] / group;
        float* o = out + (seq.q_begin + row) * row_stride +
                   (static_cast<int64_t>(kv_head) * group + query_index[qi] % group) * head_dim;
        const __m512 inv_sum = _mm512_set1_ps(1.f / running_sum[qi]);
        for (int d = 0; d < head_dim; d += 16) {
          _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_load_ps(&acc[qi][d]), inv_sum));
        }
      }
    }
  }
}

}  // namespace

void attention(const AttentionShape& shape, const AttentionSequence& seq, const AttentionWork& work,
               const float* q, KVCacheLayerView cache, float* out) {
  if (shape.head_dim % 64 != 0) {
    portable::attention(shape, seq, work, q, cache, out);
  } else if (cache.dtype == DType::BF16) {
    attention_typed<uint16_t>(shape, seq, work, q, cache, out);
  } else {
    attention_typed<float>(shape, seq, work, q, cache, out);
  }
}

}  // namespace alem::cpu::avx512
