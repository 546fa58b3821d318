// Portable block-weight matmul (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, IQ4_XS weights kept as ggml
// blocks): the same arithmetic as the SIMD kernels (int16 activations per 32 values, exact int32
// block sums, one f32 scale per block pair), in plain C++ for CPUs without AVX2 and as their
// readable statement.
#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "model/gguf_quant.h"

namespace alem::cpu::scalar {
namespace {

float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Unpacks block b of a row (32 values) to signed values w[32] (Q4_1: unsigned nibbles) and its
// scale and minimum; IQ4_XS's block b is run b % 8 of super-block b / 8.
void unpack_block(DType dtype, const uint8_t* row, int64_t b, int8_t* w, float* d, float* min) {
  *min = 0.f;
  if (dtype == DType::IQ4_XS) {
    const uint8_t* super_block = row + (b / 8) * dtype_block_bytes(dtype);
    *d = iq4_xs_scale(super_block, static_cast<int>(b % 8));
    iq4_values(super_block + 8 + 16 * (b % 8), w);
    return;
  }
  const uint8_t* block = row + b * dtype_block_bytes(dtype);
  *d = load_f16(block);
  if (dtype == DType::Q8_0) {
    std::memcpy(w, block + 2, 32);
    return;
  }
  if (dtype == DType::IQ4_NL) {
    iq4_values(block + 2, w);
    return;
  }
  if (dtype == DType::Q5_0) {
    q5_values(block + 2, w);
    for (int j = 0; j < 32; ++j) w[j] = static_cast<int8_t>(w[j] - 16);
    return;
  }
  if (dtype == DType::Q5_1) {  // unsigned 5-bit values, as Q4_1's nibbles
    *min = load_f16(block + 2);
    q5_values(block + 4, w);
    return;
  }
  const int offset = dtype == DType::Q4_0 ? 8 : 0;
  const uint8_t* qs = block + (dtype == DType::Q4_0 ? 2 : 4);
  if (dtype == DType::Q4_1) *min = load_f16(block + 2);
  for (int j = 0; j < 16; ++j) {
    w[j] = static_cast<int8_t>((qs[j] & 0x0F) - offset);
    w[j + 16] = static_cast<int8_t>((qs[j] >> 4) - offset);
  }
}

}  // namespace

void quantize_q16(const float* x, int64_t M, int64_t K, int16_t* q, float* d, float* s) {
  const int64_t blocks = K / 32;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + m * K + b * 32;
      float amax = 0.f;
      for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
      const float scale = amax / 32767.f;
      const float inverse = scale != 0.f ? 1.f / scale : 0.f;
      int sum = 0;
      int16_t* qb = q + m * K + b * 32;
      for (int j = 0; j < 32; ++j) {
        qb[j] = static_cast<int16_t>(std::nearbyint(xb[j] * inverse));
        sum += qb[j];
      }
      d[m * blocks + b] = scale;
      s[m * blocks + b] = scale * static_cast<float>(sum);
    }
  }
}

void matmul_blocks(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  if (dtype_is_k_quant(w.dtype)) {
    matmul_blocks_k(a, m_begin, m_end, w, bias, y, n_begin, n_end);
    return;
  }
  const int64_t K = w.cols, N = w.rows, blocks = K / 32;
  const size_t row_bytes = dtype_row_bytes(w.dtype, K);
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  int8_t unpacked[32];
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = data + n * row_bytes;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int16_t* xq = a.q + m * K;
      float acc = 0.f, min_terms = 0.f;
      for (int64_t b = 0; b < blocks; ++b) {
        float dw, min;
        unpack_block(w.dtype, row, b, unpacked, &dw, &min);
        int32_t sum = 0;
        for (int j = 0; j < 32; ++j) sum += int32_t{unpacked[j]} * xq[b * 32 + j];
        acc += static_cast<float>(sum) * (dw * a.d[m * blocks + b]);
        min_terms += min * a.s[m * blocks + b];
      }
      y[m * N + n] = acc + min_terms + (bias ? bias[n] : 0.f);
    }
  }
}

}  // namespace alem::cpu::scalar
