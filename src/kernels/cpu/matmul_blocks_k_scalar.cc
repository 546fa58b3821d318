// Portable K-quant block-weight matmul (Q3_K, Q4_K, Q5_K, Q6_K super-blocks of 256 values kept as
// ggml blocks): the arithmetic of matmul_blocks_k_kernel.inc in plain C++ (int16 activations per
// 32 values, exact int32 sums per 32-value sub-block, one f32 factor each), for CPUs without AVX2
// and as the kernels' readable statement.
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

// A super-block as 256 integer weights and, per 32-value sub-block, the f32 factor of its dot
// product and its negated minimum: Q4_K/Q5_K w = q (0..15 / 0..31), factor d*sc, -dmin*m;
// Q6_K w = sc*(q-32) (sc per 16 values), factor d, no minimum.
void unpack_super_block(DType dtype, const uint8_t* block, int16_t* w, float* factor,
                        float* neg_min) {
  if (dtype == DType::Q3_K) {  // w = (sc - 32) * (q - 4), sc per 16 values; factor d
    int8_t scales[16], values[256];
    q3_k_fields(block, scales, values);
    for (int e = 0; e < 256; ++e) w[e] = static_cast<int16_t>(scales[e / 16] * values[e]);
    for (int s = 0; s < 8; ++s) {
      factor[s] = load_f16(block + 108);
      neg_min[s] = 0.f;
    }
    return;
  }
  if (dtype == DType::Q6_K) {
    const uint8_t* ql = block;
    const uint8_t* qh = block + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(block + 192);
    const float d = load_f16(block + 208);
    for (int n = 0; n < 2; ++n) {
      for (int l = 0; l < 32; ++l) {
        const int q[4] = {(ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                          (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                          (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                          (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)};
        for (int k = 0; k < 4; ++k) {
          const int e = 128 * n + 32 * k + l;
          w[e] = static_cast<int16_t>(sc[e / 16] * (q[k] - 32));
        }
      }
      ql += 64;
      qh += 32;
    }
    for (int s = 0; s < 8; ++s) {
      factor[s] = d;
      neg_min[s] = 0.f;
    }
    return;
  }
  const float d = load_f16(block), dmin = load_f16(block + 2);
  const uint8_t* scales = block + 4;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    if (j < 4) {
      sc = scales[j] & 63;
      m = scales[j + 4] & 63;
    } else {
      sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
      m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
    factor[j] = d * static_cast<float>(sc);
    neg_min[j] = -(dmin * static_cast<float>(m));
  }
  const bool five = dtype == DType::Q5_K;
  const uint8_t* qh = block + 16;
  const uint8_t* q = block + (five ? 48 : 16);
  for (int j = 0; j < 4; ++j) {
    for (int l = 0; l < 32; ++l) {
      int lo = q[32 * j + l] & 0x0F, hi = q[32 * j + l] >> 4;
      if (five) {
        lo |= ((qh[l] >> (2 * j)) & 1) << 4;
        hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
      }
      w[64 * j + l] = static_cast<int16_t>(lo);
      w[64 * j + 32 + l] = static_cast<int16_t>(hi);
    }
  }
}

}  // namespace

void matmul_blocks_k(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                     const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows, super_blocks = K / 256, blocks = K / 32;
  const int64_t block_bytes = dtype_block_bytes(w.dtype);
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  int16_t unpacked[256];
  float factor[8], neg_min[8];
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = data + n * super_blocks * block_bytes;
    for (int64_t m = m_begin; m < m_end; ++m) {
      const int16_t* xq = a.q + m * K;
      float acc = 0.f;
      for (int64_t sb = 0; sb < super_blocks; ++sb) {
        unpack_super_block(w.dtype, row + sb * block_bytes, unpacked, factor, neg_min);
        for (int s = 0; s < 8; ++s) {
          const int64_t b = sb * 8 + s;
          int32_t sum = 0;
          for (int j = 0; j < 32; ++j) sum += int32_t{unpacked[32 * s + j]} * xq[b * 32 + j];
          acc += static_cast<float>(sum) * (factor[s] * a.d[m * blocks + b]);
          acc += neg_min[s] * a.s[m * blocks + b];
        }
      }
      y[m * N + n] = acc + (bias ? bias[n] : 0.f);
    }
  }
}

}  // namespace alem::cpu::scalar
