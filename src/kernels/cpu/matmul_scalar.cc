// Portable matmul kernels for CPUs without AVX2 (and the baseline the SIMD kernels are measured
// against). Converts one chunk of a weight row to f32 on the stack and applies it to every row
// of x, so bf16/f16/int8 weights are still read directly and never expanded in memory.
#include <algorithm>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::scalar {
namespace {

constexpr int64_t kRowChunk = 1024;  // weight elements converted at a time (4 KiB of f32)

void convert_row_chunk(const WeightView& w, int64_t n, int64_t k0, int64_t count, float* out) {
  const int64_t base = n * w.cols + k0;
  switch (w.dtype) {
    case DType::F32: {
      const float* src = static_cast<const float*>(w.data) + base;
      for (int64_t k = 0; k < count; ++k) out[k] = src[k];
      break;
    }
    case DType::BF16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + base;
      for (int64_t k = 0; k < count; ++k) out[k] = bf16_to_f32(src[k]);
      break;
    }
    case DType::F16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + base;
      for (int64_t k = 0; k < count; ++k) out[k] = f16_to_f32(src[k]);
      break;
    }
    case DType::I8: {
      const int8_t* src = static_cast<const int8_t*>(w.data) + base;
      const float* scales = w.scales + n * (w.cols / kInt8GroupSize);
      for (int64_t k = 0; k < count; ++k) {
        out[k] = static_cast<float>(src[k]) * scales[(k0 + k) / kInt8GroupSize];
      }
      break;
    }
    default:  // ggml block types take matmul_blocks (cpu_backend.cc), never this path
      break;
  }
}

}  // namespace

void matmul_stream(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                   int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows, K = w.cols;
  alignas(64) float w_chunk[kRowChunk];
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t k0 = 0; k0 < K; k0 += kRowChunk) {
      const int64_t count = std::min(kRowChunk, K - k0);
      convert_row_chunk(w, n, k0, count, w_chunk);
      for (int64_t m = 0; m < M; ++m) {
        const float* x_row = x + m * K + k0;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < count; ++k) dot += x_row[k] * w_chunk[k];
        float& out = y[m * N + n];
        out = (k0 == 0 ? (bias ? bias[n] : 0.f) : out) + dot;
      }
    }
  }
}

void matmul_packed(const float* x, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  matmul_stream(x + m_begin * w.cols, m_end - m_begin, w, bias, y + m_begin * w.rows, n_begin,
                n_end);
}

}  // namespace alem::cpu::scalar
