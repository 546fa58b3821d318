// Dequantisation kernels for the ggml block formats alem imports. Each function mirrors the
// reference `dequantize_row_*` in ggml-quants.c so an imported tensor is exactly what llama.cpp
// would compute; arithmetic is done in f32 in the same order (scale converted from f16 first).
#include "model/gguf_quant.h"

#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace alem {
namespace {

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
float load_f16(const uint8_t* p) {
  return f16_to_f32(load_u16(p));
}

}  // namespace

void q5_values(const uint8_t* fifth_bits_then_nibbles, int8_t* values) {
  uint32_t qh;
  std::memcpy(&qh, fifth_bits_then_nibbles, 4);
  const uint8_t* qs = fifth_bits_then_nibbles + 4;
  for (int j = 0; j < 16; ++j) {
    const int high0 = ((qh >> j) << 4) & 0x10, high1 = (qh >> (j + 12)) & 0x10;
    values[j] = static_cast<int8_t>((qs[j] & 0x0F) | high0);
    values[j + 16] = static_cast<int8_t>((qs[j] >> 4) | high1);
  }
}

int q3_k_scale(const uint8_t* block, int i) {
  const uint8_t* packed = block + 96;
  const int low = (i < 8 ? packed[i] : packed[i - 8] >> 4) & 0x0F;
  const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (low | (high << 4)) - 32;
}

void q3_k_fields(const uint8_t* block, int8_t* scales, int8_t* values) {
  const uint8_t* hmask = block;
  const uint8_t* qs = block + 32;
  for (int i = 0; i < 16; ++i) scales[i] = static_cast<int8_t>(q3_k_scale(block, i));
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    const int q = (qs[32 * h + l] >> (2 * j)) & 3;
    values[e] = static_cast<int8_t>(q - (((hmask[l] >> (4 * h + j)) & 1) ? 0 : 4));
  }
}

void iq4_values(const uint8_t* qs, int8_t* values) {
  for (int j = 0; j < 16; ++j) {
    values[j] = kIq4Values[qs[j] & 0x0F];
    values[j + 16] = kIq4Values[qs[j] >> 4];
  }
}

float iq4_xs_scale(const uint8_t* block, int ib) {
  const uint16_t scales_high = load_u16(block + 2);
  const int ls =
      ((block[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((scales_high >> (2 * ib)) & 3) << 4);
  return load_f16(block) * static_cast<float>(ls - 32);
}

namespace {

// Q4_0: f16 d, 16 bytes of nibbles; x = d * (q - 8). Low nibbles are elements 0..15.
void dequantize_q4_0(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const uint8_t* qs = block + 2;
  for (int j = 0; j < 16; ++j) {
    const int x0 = (qs[j] & 0x0F) - 8;
    const int x1 = (qs[j] >> 4) - 8;
    y[j] = static_cast<float>(x0) * d;
    y[j + 16] = static_cast<float>(x1) * d;
  }
}

// Q4_1: f16 d, f16 m, 16 bytes of nibbles; x = d * q + m.
void dequantize_q4_1(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  const uint8_t* qs = block + 4;
  for (int j = 0; j < 16; ++j) {
    const float p0 = static_cast<float>(qs[j] & 0x0F) * d;
    const float p1 = static_cast<float>(qs[j] >> 4) * d;
    y[j] = p0 + m;
    y[j + 16] = p1 + m;
  }
}

// Q5_0: f16 d, 32 high bits (u32), 16 bytes of low nibbles; x = d * (q - 16).
void dequantize_q5_0(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  int8_t values[32];
  q5_values(block + 2, values);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(values[j] - 16) * d;
}

// Q5_1: f16 d, f16 m, 32 high bits, 16 bytes of low nibbles; x = d * q + m.
void dequantize_q5_1(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float m = load_f16(block + 2);
  int8_t values[32];
  q5_values(block + 4, values);
  for (int j = 0; j < 32; ++j) {
    const float p = static_cast<float>(values[j]) * d;  // rounded before the minimum is added
    y[j] = p + m;
  }
}

// Q8_0: f16 d, 32 int8; x = d * q.
void dequantize_q8_0(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const int8_t* qs = reinterpret_cast<const int8_t*>(block + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q4_K scales: 8 six-bit (scale, min) pairs packed into 12 bytes.
void q4_k_scale_min(int j, const uint8_t* q, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = q[j] & 63;
    *min = q[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q4_K super-block of 256: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles.
void dequantize_q4_k(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* q = block + 16;
  int is = 0;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    q4_k_scale_min(is + 0, scales, &sc, &m);
    const float d1 = d * sc;
    const float m1 = dmin * m;
    q4_k_scale_min(is + 1, scales, &sc, &m);
    const float d2 = d * sc;
    const float m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const float p = d1 * static_cast<float>(q[l] & 0x0F);
      *y++ = p - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const float p = d2 * static_cast<float>(q[l] >> 4);
      *y++ = p - m2;
    }
    q += 32;
    is += 2;
  }
}

// Q5_K super-block of 256: f16 d, f16 dmin, 12 bytes of scales, 32 bytes of high bits (bit j/32
// ... of byte l holds element l of sub-block j), 128 bytes of low nibbles.
void dequantize_q5_k(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  const float dmin = load_f16(block + 2);
  const uint8_t* scales = block + 4;
  const uint8_t* qh = block + 16;
  const uint8_t* ql = block + 48;
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < 256; j += 64) {
    uint8_t sc, m;
    q4_k_scale_min(is + 0, scales, &sc, &m);
    const float d1 = d * sc;
    const float m1 = dmin * m;
    q4_k_scale_min(is + 1, scales, &sc, &m);
    const float d2 = d * sc;
    const float m2 = dmin * m;
    for (int l = 0; l < 32; ++l) {
      const float p = d1 * static_cast<float>((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0));
      *y++ = p - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const float p = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0));
      *y++ = p - m2;
    }
    ql += 32;
    is += 2;
    u1 = static_cast<uint8_t>(u1 << 2);
    u2 = static_cast<uint8_t>(u2 << 2);
  }
}

// Q6_K super-block of 256: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales,
// f16 d.
void dequantize_q6_k(const uint8_t* block, float* y) {
  const uint8_t* ql = block;
  const uint8_t* qh = block + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(block + 192);
  const float d = load_f16(block + 208);
  for (int n = 0; n < 256; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int8_t>((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int8_t>((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// Q2_K super-block of 256: 16 bytes of 4-bit (scale, min) pairs, 64 bytes of 2-bit values,
// f16 d, f16 dmin; x = d * sc * q - dmin * m per 16 values. Value l of a 32-value run takes bits
// 2s..2s+1 of byte l of its 32-byte half.
void dequantize_q2_k(const uint8_t* block, float* y) {
  const uint8_t* scales = block;
  const uint8_t* q = block + 16;
  const float d = load_f16(block + 80);
  const float dmin = load_f16(block + 82);
  int is = 0;
  for (int half = 0; half < 2; ++half, q += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; ++part) {
        const uint8_t sc = scales[is++];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = 16 * part; l < 16 * part + 16; ++l) {
          const float p = dl * static_cast<float>((q[l] >> shift) & 3);
          *y++ = p - ml;
        }
      }
    }
  }
}

// Q3_K super-block of 256 (q3_k_fields); x = d * scale * value per 16 values.
void dequantize_q3_k(const uint8_t* block, float* y) {
  const float d = load_f16(block + 108);
  int8_t scales[16], values[256];
  q3_k_fields(block, scales, values);
  for (int i = 0; i < 256; i += 16) {
    const float dl = d * static_cast<float>(scales[i / 16]);
    for (int l = i; l < i + 16; ++l) y[l] = dl * static_cast<float>(values[l]);
  }
}

// IQ4_NL block of 32: f16 d, 16 bytes of indices (iq4_values); x = d * table[index].
void dequantize_iq4_nl(const uint8_t* block, float* y) {
  const float d = load_f16(block);
  int8_t values[32];
  iq4_values(block + 2, values);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(values[j]);
}

// IQ4_XS super-block of 256: 8 runs of 32 indices as IQ4_NL's, each with its own scale
// (iq4_xs_scale); x = scale * table[index].
void dequantize_iq4_xs(const uint8_t* block, float* y) {
  int8_t values[32];
  for (int ib = 0; ib < 8; ++ib, y += 32) {
    const float dl = iq4_xs_scale(block, ib);
    iq4_values(block + 8 + 16 * ib, values);
    for (int j = 0; j < 32; ++j) y[j] = dl * static_cast<float>(values[j]);
  }
}

using BlockDequantizer = void (*)(const uint8_t*, float*);

BlockDequantizer block_dequantizer(uint32_t type_id) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q4_0:
      return dequantize_q4_0;
    case GgmlType::Q4_1:
      return dequantize_q4_1;
    case GgmlType::Q5_0:
      return dequantize_q5_0;
    case GgmlType::Q5_1:
      return dequantize_q5_1;
    case GgmlType::Q8_0:
      return dequantize_q8_0;
    case GgmlType::Q4_K:
      return dequantize_q4_k;
    case GgmlType::Q5_K:
      return dequantize_q5_k;
    case GgmlType::Q6_K:
      return dequantize_q6_k;
    case GgmlType::Q2_K:
      return dequantize_q2_k;
    case GgmlType::Q3_K:
      return dequantize_q3_k;
    case GgmlType::IQ4_NL:
      return dequantize_iq4_nl;
    case GgmlType::IQ4_XS:
      return dequantize_iq4_xs;
    default:
      return nullptr;
  }
}

}  // namespace

GgmlBlockGeometry ggml_block_geometry(uint32_t type_id) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::F32:
      return {1, 4};
    case GgmlType::F16:
      return {1, 2};
    case GgmlType::Q4_0:
      return {32, 18};
    case GgmlType::Q4_1:
      return {32, 20};
    case GgmlType::Q5_0:
      return {32, 22};
    case GgmlType::Q5_1:
      return {32, 24};
    case GgmlType::Q8_0:
      return {32, 34};
    case GgmlType::Q8_1:
      return {32, 40};
    case GgmlType::Q2_K:
      return {256, 84};
    case GgmlType::Q3_K:
      return {256, 110};
    case GgmlType::Q4_K:
      return {256, 144};
    case GgmlType::Q5_K:
      return {256, 176};
    case GgmlType::Q6_K:
      return {256, 210};
    case GgmlType::Q8_K:
      return {256, 292};
    case GgmlType::IQ2_XXS:
      return {256, 66};
    case GgmlType::IQ2_XS:
      return {256, 74};
    case GgmlType::IQ3_XXS:
      return {256, 98};
    case GgmlType::IQ1_S:
      return {256, 50};
    case GgmlType::IQ4_NL:
      return {32, 18};
    case GgmlType::IQ3_S:
      return {256, 110};
    case GgmlType::IQ2_S:
      return {256, 82};
    case GgmlType::IQ4_XS:
      return {256, 136};
    case GgmlType::I8:
      return {1, 1};
    case GgmlType::I16:
      return {1, 2};
    case GgmlType::I32:
      return {1, 4};
    case GgmlType::I64:
      return {1, 8};
    case GgmlType::F64:
      return {1, 8};
    case GgmlType::IQ1_M:
      return {256, 56};
    case GgmlType::BF16:
      return {1, 2};
    case GgmlType::TQ1_0:
      return {256, 54};
    case GgmlType::TQ2_0:
      return {256, 66};
    case GgmlType::MXFP4:
      return {32, 17};
  }
  return {0, 0};
}

std::string ggml_type_name(uint32_t type_id) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::F32:
      return "F32";
    case GgmlType::F16:
      return "F16";
    case GgmlType::Q4_0:
      return "Q4_0";
    case GgmlType::Q4_1:
      return "Q4_1";
    case GgmlType::Q5_0:
      return "Q5_0";
    case GgmlType::Q5_1:
      return "Q5_1";
    case GgmlType::Q8_0:
      return "Q8_0";
    case GgmlType::Q8_1:
      return "Q8_1";
    case GgmlType::Q2_K:
      return "Q2_K";
    case GgmlType::Q3_K:
      return "Q3_K";
    case GgmlType::Q4_K:
      return "Q4_K";
    case GgmlType::Q5_K:
      return "Q5_K";
    case GgmlType::Q6_K:
      return "Q6_K";
    case GgmlType::Q8_K:
      return "Q8_K";
    case GgmlType::IQ2_XXS:
      return "IQ2_XXS";
    case GgmlType::IQ2_XS:
      return "IQ2_XS";
    case GgmlType::IQ3_XXS:
      return "IQ3_XXS";
    case GgmlType::IQ1_S:
      return "IQ1_S";
    case GgmlType::IQ4_NL:
      return "IQ4_NL";
    case GgmlType::IQ3_S:
      return "IQ3_S";
    case GgmlType::IQ2_S:
      return "IQ2_S";
    case GgmlType::IQ4_XS:
      return "IQ4_XS";
    case GgmlType::I8:
      return "I8";
    case GgmlType::I16:
      return "I16";
    case GgmlType::I32:
      return "I32";
    case GgmlType::I64:
      return "I64";
    case GgmlType::F64:
      return "F64";
    case GgmlType::IQ1_M:
      return "IQ1_M";
    case GgmlType::BF16:
      return "BF16";
    case GgmlType::TQ1_0:
      return "TQ1_0";
    case GgmlType::TQ2_0:
      return "TQ2_0";
    case GgmlType::MXFP4:
      return "MXFP4";
  }
  return "type#" + std::to_string(type_id);
}

std::string ggml_dequantize_supported_names() {
  return "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, "
         "IQ4_XS";
}

bool ggml_dequantize_supported(uint32_t type_id) {
  const auto t = static_cast<GgmlType>(type_id);
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 ||
         block_dequantizer(type_id) != nullptr;
}

uint64_t ggml_bytes_for(uint32_t type_id, int64_t elements) {
  const GgmlBlockGeometry g = ggml_block_geometry(type_id);
  ALEM_CHECK(g.elements_per_block > 0, "unknown ggml tensor type id " + std::to_string(type_id));
  ALEM_CHECK(elements >= 0 && elements % g.elements_per_block == 0,
             "a " + ggml_type_name(type_id) + " tensor row needs a multiple of " +
                 std::to_string(g.elements_per_block) + " elements, got " +
                 std::to_string(elements));
  return static_cast<uint64_t>(elements / g.elements_per_block) *
         static_cast<uint64_t>(g.bytes_per_block);
}

void dequantize_ggml(uint32_t type_id, const uint8_t* src, size_t src_bytes, float* dst,
                     int64_t elements) {
  ALEM_CHECK(ggml_dequantize_supported(type_id),
             "cannot dequantize ggml type " + ggml_type_name(type_id) +
                 " (supported: " + ggml_dequantize_supported_names() + ")");
  const uint64_t need = ggml_bytes_for(type_id, elements);
  ALEM_CHECK(src_bytes == need, "dequantize " + ggml_type_name(type_id) + ": expected " +
                                    std::to_string(need) + " bytes for " +
                                    std::to_string(elements) + " elements, got " +
                                    std::to_string(src_bytes));
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::F32:
      std::memcpy(dst, src, need);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < elements; ++i) dst[i] = load_f16(src + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < elements; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
      return;
    default:
      break;
  }
  const GgmlBlockGeometry g = ggml_block_geometry(type_id);
  const BlockDequantizer fn = block_dequantizer(type_id);
  const int64_t blocks = elements / g.elements_per_block;
  for (int64_t b = 0; b < blocks; ++b) {
    fn(src + b * g.bytes_per_block, dst + b * g.elements_per_block);
  }
}

}  // namespace alem
