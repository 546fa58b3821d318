// Scalar implementations of every kernel op: the ground truth the optimised backends are
// compared with. Written for clarity, not speed (double accumulators, one element at a time).
#include "kernels/cpu/reference_backend.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace alem {

void ReferenceBackend::matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                              float* y) const {
  const int64_t N = w.rows, K = w.cols;
  std::vector<float> w_row(static_cast<size_t>(K));
  for (int64_t n = 0; n < N; ++n) {
    dequantize_row(w, n, w_row.data());
    for (int64_t m = 0; m < M; ++m) {
      double acc = bias ? bias[n] : 0.0;
      const float* x_row = x + m * K;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x_row[k]) * w_row[k];
      y[m * N + n] = static_cast<float>(acc);
    }
  }
}

void ReferenceBackend::rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
                               float* y) const {
  for (int64_t m = 0; m < M; ++m) {
    const float* x_row = x + m * D;
    double sum_squares = 0.0;
    for (int64_t d = 0; d < D; ++d) sum_squares += static_cast<double>(x_row[d]) * x_row[d];
    const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / D + eps));
    float* y_row = y + m * D;
    for (int64_t d = 0; d < D; ++d) y_row[d] = x_row[d] * inv_rms * gamma[d];
  }
}

void ReferenceBackend::rope(float* x, int64_t T, int num_heads, int head_dim,
                            const int32_t* positions, const RopeTable& table) const {
  const int half = head_dim / 2;
  ALEM_CHECK(table.half_dim == half, "rope table half_dim " + std::to_string(table.half_dim) +
                                         " does not match head_dim " + std::to_string(head_dim));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t p = positions[t];
    ALEM_CHECK(p >= 0 && p < table.max_positions,
               "rope position " + std::to_string(p) + " outside the table");
    const float* cos_row = table.cos.data() + static_cast<size_t>(p) * half;
    const float* sin_row = table.sin.data() + static_cast<size_t>(p) * half;
    for (int h = 0; h < num_heads; ++h) {
      float* head = x + (t * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float a = head[i], b = head[i + half];
        head[i] = a * cos_row[i] - b * sin_row[i];
        head[i + half] = b * cos_row[i] + a * sin_row[i];
      }
    }
  }
}

void ReferenceBackend::silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const {
  for (int64_t m = 0; m < M; ++m) {
    const float* gate = gate_up + m * 2 * I;
    const float* up = gate + I;
    for (int64_t i = 0; i < I; ++i) {
      const double g = gate[i];
      out[m * I + i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
    }
  }
}

void ReferenceBackend::add_inplace(float* y, const float* x, int64_t n) const {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

namespace {

// Offset (in floats) of (position, kv_head) inside one layer's paged cache.
int64_t cache_offset(const AttentionShape& s, const int32_t* block_table, int64_t pos, int kvh) {
  const int64_t block = block_table[pos / s.block_size];
  const int64_t slot = pos % s.block_size;
  return ((block * s.block_size + slot) * s.num_kv_heads + kvh) * s.head_dim;
}

// One element of a KV cache of either dtype (bf16 rounds to nearest even on store).
float load_kv(const void* cache, int64_t i, DType dtype) {
  return dtype == DType::BF16 ? bf16_to_f32(static_cast<const uint16_t*>(cache)[i])
                              : static_cast<const float*>(cache)[i];
}

void store_kv(void* cache, int64_t i, float x, DType dtype) {
  if (dtype == DType::BF16) {
    static_cast<uint16_t*>(cache)[i] = f32_to_bf16(x);
  } else {
    static_cast<float*>(cache)[i] = x;
  }
}

}  // namespace

void ReferenceBackend::kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                                      int num_seqs, const float* k, const float* v,
                                      KVCacheLayerView cache) const {
  check_kv_cache_dtype(cache.dtype);
  const int64_t row_width = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  for (int s = 0; s < num_seqs; ++s) {
    const AttentionSequence& seq = seqs[s];
    for (int i = 0; i < seq.q_count; ++i) {
      const int64_t row = seq.q_begin + i;
      const int64_t pos = seq.start_pos + i;
      for (int h = 0; h < shape.num_kv_heads; ++h) {
        const int64_t dst = cache_offset(shape, seq.block_table, pos, h);
        for (int d = 0; d < shape.head_dim; ++d) {
          store_kv(cache.k, dst + d, k[row * row_width + h * shape.head_dim + d], cache.dtype);
          store_kv(cache.v, dst + d, v[row * row_width + h * shape.head_dim + d], cache.dtype);
        }
      }
    }
  }
}

void ReferenceBackend::paged_attention(const AttentionShape& shape, const AttentionSequence* seqs,
                                       int num_seqs, const float* q, KVCacheLayerView cache,
                                       float* out) const {
  ALEM_CHECK(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0,
             "num_heads must be a multiple of num_kv_heads");
  check_kv_cache_dtype(cache.dtype);
  const int group = shape.num_heads / shape.num_kv_heads;
  const int64_t row_width = static_cast<int64_t>(shape.num_heads) * shape.head_dim;
  std::vector<double> scores;
  std::vector<double> acc(static_cast<size_t>(shape.head_dim));
  for (int s = 0; s < num_seqs; ++s) {
    const AttentionSequence& seq = seqs[s];
    for (int i = 0; i < seq.q_count; ++i) {
      const int64_t row = seq.q_begin + i;
      const int64_t context = static_cast<int64_t>(seq.start_pos) + i + 1;  // causal
      scores.assign(static_cast<size_t>(context), 0.0);
      for (int h = 0; h < shape.num_heads; ++h) {
        const int kvh = h / group;
        const float* q_head = q + row * row_width + h * shape.head_dim;
        double max_score = -INFINITY;
        for (int64_t t = 0; t < context; ++t) {
          const int64_t k_at = cache_offset(shape, seq.block_table, t, kvh);
          double dot = 0.0;
          for (int d = 0; d < shape.head_dim; ++d) {
            dot += static_cast<double>(q_head[d]) * load_kv(cache.k, k_at + d, cache.dtype);
          }
          scores[t] = dot * shape.scale;
          max_score = std::max(max_score, scores[t]);
        }
        double denominator = 0.0;
        for (int64_t t = 0; t < context; ++t) {
          scores[t] = std::exp(scores[t] - max_score);
          denominator += scores[t];
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t t = 0; t < context; ++t) {
          const int64_t v_at = cache_offset(shape, seq.block_table, t, kvh);
          for (int d = 0; d < shape.head_dim; ++d) {
            acc[d] += scores[t] * load_kv(cache.v, v_at + d, cache.dtype);
          }
        }
        float* out_head = out + row * row_width + h * shape.head_dim;
        for (int d = 0; d < shape.head_dim; ++d) {
          out_head[d] = static_cast<float>(acc[d] / denominator);
        }
      }
    }
  }
}

void ReferenceBackend::embedding(const WeightMatrix& table, int64_t row_begin,
                                 const int32_t* tokens, int64_t T, float* out) const {
  const int64_t D = table.cols;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t local = static_cast<int64_t>(tokens[t]) - row_begin;
    float* out_row = out + t * D;
    if (local < 0 || local >= table.rows) {
      std::memset(out_row, 0, static_cast<size_t>(D) * sizeof(float));
      continue;
    }
    for (int64_t d = 0; d < D; ++d) out_row[d] = table.at(local, d);
  }
}

}  // namespace alem
