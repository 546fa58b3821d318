// Quantisation of f32 values into ggml's K-quant super-blocks (Q4_K, Q5_K, Q6_K), so that
// `alem convert --dtype q4_k` can make them from f32/bf16 checkpoints and tests can build K-quant
// matrices. The block layouts, the 6-bit scale packing and the final rounding step are those of
// ggml's quantize_row_q{4,5,6}_K_ref; the per-sub-block scales are chosen by a plain rule (the
// range of the sub-block) instead of ggml's iterative error search, so the blocks are valid and
// close but not byte-identical to llama.cpp's.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

int nearest(float v) {
  return static_cast<int>(std::nearbyint(v));
}

// Packs 8 six-bit scales and mins into 12 bytes (the inverse of ggml's get_scale_min_k4).
void pack_scales_k4(const uint8_t* ls, const uint8_t* lm, uint8_t* scales) {
  std::memset(scales, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      scales[j] = ls[j];
      scales[j + 4] = lm[j];
    } else {
      scales[j + 4] = static_cast<uint8_t>((ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4));
      scales[j - 4] = static_cast<uint8_t>(scales[j - 4] | ((ls[j] >> 4) << 6));
      scales[j] = static_cast<uint8_t>(scales[j] | ((lm[j] >> 4) << 6));
    }
  }
}

void unpack_scale_min_k4(int j, const uint8_t* q, int* scale, int* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K (levels = 15) and Q5_K (levels = 31): x = d * sc * q - dmin * m per 32-value sub-block.
void quantize_q45_k(const float* x, uint8_t* block, int levels) {
  float scales[8], mins[8];
  float max_scale = 0.f, max_min = 0.f;
  for (int j = 0; j < 8; ++j) {
    float lo = x[32 * j], hi = x[32 * j];
    for (int l = 1; l < 32; ++l) {
      lo = std::min(lo, x[32 * j + l]);
      hi = std::max(hi, x[32 * j + l]);
    }
    lo = std::min(lo, 0.f);  // ggml's minimum is never positive: m >= 0 in x = d q - m
    scales[j] = (hi - lo) / static_cast<float>(levels);
    mins[j] = 0.f - lo;  // +0, never -0, for an all-positive sub-block
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0.f ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0.f ? 63.f / max_min : 0.f;
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = static_cast<uint8_t>(std::min(63, nearest(inv_scale * scales[j])));
    lm[j] = static_cast<uint8_t>(std::min(63, nearest(inv_min * mins[j])));
  }
  store_f16(block, max_scale / 63.f);
  store_f16(block + 2, max_min / 63.f);
  uint8_t* packed_scales = block + 4;
  pack_scales_k4(ls, lm, packed_scales);
  const float d = load_f16(block), dmin = load_f16(block + 2);
  uint8_t L[256];
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    unpack_scale_min_k4(j, packed_scales, &sc, &m);
    const float dj = d * static_cast<float>(sc);
    const float mj = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) {
      const int q = dj != 0.f ? nearest((x[32 * j + l] + mj) / dj) : 0;
      L[32 * j + l] = static_cast<uint8_t>(std::clamp(q, 0, levels));
    }
  }
  if (levels == 15) {
    uint8_t* q = block + 16;
    for (int j = 0; j < 256; j += 64) {
      for (int l = 0; l < 32; ++l) q[l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
      q += 32;
    }
    return;
  }
  uint8_t* qh = block + 16;
  uint8_t* ql = block + 48;
  std::memset(qh, 0, 32);
  uint8_t m1 = 1, m2 = 2;
  for (int n = 0; n < 256; n += 64) {
    for (int j = 0; j < 32; ++j) {
      int l1 = L[n + j], l2 = L[n + j + 32];
      if (l1 > 15) {
        l1 -= 16;
        qh[j] |= m1;
      }
      if (l2 > 15) {
        l2 -= 16;
        qh[j] |= m2;
      }
      ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
    }
    m1 = static_cast<uint8_t>(m1 << 2);
    m2 = static_cast<uint8_t>(m2 << 2);
    ql += 32;
  }
}

// The scales of a super-block's 16 sub-blocks of 16 for values in [-lowest, lowest - 1]: each
// sub-block's value of largest magnitude maps to -lowest, the end of the asymmetric range.
// Returns the scale of largest magnitude (0 for an all-zero super-block).
float per16_scales(const float* x, float lowest, float* scales) {
  float max_scale = 0.f, max_abs_scale = 0.f;
  for (int ib = 0; ib < 16; ++ib) {
    float max = 0.f, amax = 0.f;
    for (int l = 0; l < 16; ++l) {
      const float v = x[16 * ib + l];
      if (std::fabs(v) > amax) {
        amax = std::fabs(v);
        max = v;
      }
    }
    scales[ib] = max / -lowest;
    if (std::fabs(scales[ib]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[ib]);
      max_scale = scales[ib];
    }
  }
  return max_abs_scale < 1e-15f ? 0.f : max_scale;
}

// Q6_K: x = d * sc * (q - 32) per 16-value sub-block, sc int8, q 6 bits.
void quantize_q6_k(const float* x, uint8_t* block) {
  float scales[16];
  const float max_scale = per16_scales(x, 32.f, scales);
  std::memset(block, 0, 210);
  if (max_scale == 0.f) return;  // all zero: d = 0
  uint8_t* ql = block;
  uint8_t* qh = block + 128;
  int8_t* sc = reinterpret_cast<int8_t*>(block + 192);
  const float iscale = -128.f / max_scale;
  store_f16(block + 208, 1.f / iscale);
  for (int ib = 0; ib < 16; ++ib) {
    sc[ib] = static_cast<int8_t>(std::min(127, nearest(iscale * scales[ib])));
  }
  const float d_super = load_f16(block + 208);
  uint8_t L[256];
  for (int j = 0; j < 16; ++j) {
    const float d = d_super * static_cast<float>(sc[j]);
    for (int l = 0; l < 16; ++l) {
      const int q = d != 0.f ? nearest(x[16 * j + l] / d) : 0;
      L[16 * j + l] = static_cast<uint8_t>(std::clamp(q, -32, 31) + 32);
    }
  }
  for (int j = 0; j < 256; j += 128) {
    for (int l = 0; l < 32; ++l) {
      const int q1 = L[j + l] & 0x0F, q2 = L[j + l + 32] & 0x0F;
      const int q3 = L[j + l + 64] & 0x0F, q4 = L[j + l + 96] & 0x0F;
      ql[l] = static_cast<uint8_t>(q1 | (q3 << 4));
      ql[l + 32] = static_cast<uint8_t>(q2 | (q4 << 4));
      qh[l] = static_cast<uint8_t>((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                   ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
    }
    ql += 64;
    qh += 32;
  }
}

// Q3_K: x = d * (sc - 32) * (q - 4) per 16-value sub-block, sc 6 bits, q 3 bits (as Q6_K's rule:
// the value of largest magnitude maps to -4, the sub-block scales are steps of the largest over
// -32). Layout as ggml's block_q3_K: value e's low 2 bits at bits 2j of qs[32h + l] and its high
// bit at bit 4h + j of hmask[l] (e = 128h + 32j + l); scale i's low 4 bits in byte i (i < 8) or
// the high nibble of byte i - 8, its high 2 bits at bits 2 (i / 4) of byte 8 + i % 4.
void quantize_q3_k(const float* x, uint8_t* block) {
  float scales[16];
  const float max_scale = per16_scales(x, 4.f, scales);
  std::memset(block, 0, 110);
  if (max_scale == 0.f) return;  // all zero: d = 0
  const float iscale = -32.f / max_scale;
  store_f16(block + 108, 1.f / iscale);
  const float d_super = load_f16(block + 108);
  uint8_t* hmask = block;
  uint8_t* qs = block + 32;
  uint8_t* packed = block + 96;
  uint8_t L[256];
  for (int i = 0; i < 16; ++i) {
    const int sc = std::clamp(nearest(iscale * scales[i]), -32, 31);
    const int stored = sc + 32;
    packed[i % 8] = static_cast<uint8_t>(packed[i % 8] | ((stored & 0x0F) << (i < 8 ? 0 : 4)));
    packed[8 + i % 4] = static_cast<uint8_t>(packed[8 + i % 4] | ((stored >> 4) << (2 * (i / 4))));
    const float d = d_super * static_cast<float>(sc);
    for (int l = 0; l < 16; ++l) {
      const int q = d != 0.f ? nearest(x[16 * i + l] / d) : 0;
      L[16 * i + l] = static_cast<uint8_t>(std::clamp(q, -4, 3) + 4);
    }
  }
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    qs[32 * h + l] = static_cast<uint8_t>(qs[32 * h + l] | ((L[e] & 3) << (2 * j)));
    if (L[e] > 3) hmask[l] = static_cast<uint8_t>(hmask[l] | (1 << (4 * h + j)));
  }
}

}  // namespace

void quantize_k_block(DType dtype, const float* x, uint8_t* block) {
  switch (dtype) {
    case DType::Q4_K:
      quantize_q45_k(x, block, 15);
      return;
    case DType::Q5_K:
      quantize_q45_k(x, block, 31);
      return;
    case DType::Q6_K:
      quantize_q6_k(x, block);
      return;
    case DType::Q3_K:
      quantize_q3_k(x, block);
      return;
    default:
      ALEM_FAIL("quantize_k_block: " + dtype_name(dtype) + " is not a K-quant type");
  }
}

}  // namespace alem
