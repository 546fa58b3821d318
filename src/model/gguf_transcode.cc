// Exact carriers for ggml types without kernels of their own (gguf_transcode.h). The bit layouts
// are those of gguf_quant.cc's dequantisers (ggml's dequantize_row_q3_K, _q5_0, _iq4_nl,
// _iq4_xs), and of Q6_K and Q8_0 as dequantize_q6_k and dequantize_q8_0 read them.
#include "model/gguf_transcode.h"

#include <cstring>
#include <string>

#include "core/error.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

constexpr int64_t kSuperBlock = 256;
constexpr size_t kQ3KBytes = 110, kQ6KBytes = 210, kIq4NlBytes = 18, kIq4XsBytes = 136,
                 kQ5_0Bytes = 22, kQ8_0Bytes = 34;

// One Q3_K super-block as Q6_K: value v = q - (high bit ? 0 : 4) in [-4, 3] becomes the 6-bit
// v + 32; the 16 scales sc - 32 in [-32, 31] become Q6_K's int8 scales (both per 16 values, in
// order); d is the same f16. Q6_K value e sits in ql/qh as dequantize_q6_k reads it: half
// h = e / 128, l = e % 32, run j = (e % 128) / 32: its low nibble in ql[64h + l + 32 (j & 1)]
// (low nibble for j < 2, high for j >= 2), its high 2 bits at bit 2j of qh[32h + l].
void q3_k_as_q6_k(const uint8_t* q3, uint8_t* q6) {
  const uint8_t* hmask = q3;
  const uint8_t* qs = q3 + 32;
  const uint8_t* packed = q3 + 96;
  uint8_t* ql = q6;
  uint8_t* qh = q6 + 128;
  int8_t* scales = reinterpret_cast<int8_t*>(q6 + 192);
  std::memset(q6, 0, 192);
  for (int i = 0; i < 16; ++i) {
    const int low = (i < 8 ? packed[i] : packed[i - 8] >> 4) & 0x0F;
    const int high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
    scales[i] = static_cast<int8_t>((low | (high << 4)) - 32);
  }
  std::memcpy(q6 + 208, q3 + 108, 2);  // d
  for (int e = 0; e < kSuperBlock; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    const int q = (qs[32 * h + l] >> (2 * j)) & 3;
    const int value = q - (((hmask[l] >> (4 * h + j)) & 1) ? 0 : 4);
    const int stored = value + 32;  // 28 .. 35
    uint8_t& low_byte = ql[64 * h + l + 32 * (j & 1)];
    low_byte = static_cast<uint8_t>(low_byte | ((stored & 0x0F) << (j < 2 ? 0 : 4)));
    qh[32 * h + l] = static_cast<uint8_t>(qh[32 * h + l] | ((stored >> 4) << (2 * j)));
  }
}

// One Q5_0 block (f16 d, 32 high bits, 16 bytes of low nibbles; x = d * (q - 16)) as Q8_0: the
// same d and the values q - 16 in [-16, 15] as its int8.
void q5_0_as_q8_0(const uint8_t* q5, uint8_t* q8) {
  uint32_t qh;
  std::memcpy(&qh, q5 + 2, 4);
  const uint8_t* qs = q5 + 6;
  std::memcpy(q8, q5, 2);  // d
  int8_t* values = reinterpret_cast<int8_t*>(q8 + 2);
  for (int j = 0; j < 16; ++j) {
    const int high0 = ((qh >> j) << 4) & 0x10, high1 = (qh >> (j + 12)) & 0x10;
    values[j] = static_cast<int8_t>(((qs[j] & 0x0F) | high0) - 16);
    values[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | high1) - 16);
  }
}

float load_f16(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return f16_to_f32(bits);
}

// 32 indices (16 bytes: values 0..15 in the low nibbles, 16..31 in the high) as int8 values.
void iq4_values(const uint8_t* qs, int8_t* out) {
  for (int j = 0; j < 16; ++j) {
    out[j] = kIq4Values[qs[j] & 0x0F];
    out[j + 16] = kIq4Values[qs[j] >> 4];
  }
}

}  // namespace

bool ggml_exact_carrier(uint32_t type_id, DType* carrier) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q3_K:
      *carrier = DType::Q6_K;
      return true;
    case GgmlType::Q5_0:
      *carrier = DType::Q8_0;
      return true;
    case GgmlType::IQ4_NL:
    case GgmlType::IQ4_XS:
      *carrier = DType::I8;
      return true;
    default:
      return false;
  }
}

WeightMatrix transcode_ggml(uint32_t type_id, const uint8_t* src, size_t bytes, int64_t rows,
                            int64_t cols) {
  DType carrier = DType::F32;
  ALEM_CHECK(ggml_exact_carrier(type_id, &carrier),
             "ggml type " + ggml_type_name(type_id) + " has no exact carrier type");
  ALEM_CHECK(rows >= 0 && cols >= 0, "transcode " + ggml_type_name(type_id) + ": bad shape");
  const uint64_t need = ggml_bytes_for(type_id, rows * cols);
  ALEM_CHECK(bytes == need, "transcode " + ggml_type_name(type_id) + ": expected " +
                                std::to_string(need) + " bytes for [" + std::to_string(rows) +
                                ", " + std::to_string(cols) + "], got " + std::to_string(bytes));
  WeightMatrix m;
  m.dtype = carrier;
  m.rows = rows;
  m.cols = cols;
  m.data.resize(static_cast<size_t>(rows) * dtype_row_bytes(carrier, cols));
  const int64_t n = rows * cols;
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q3_K:
      for (int64_t b = 0; b < n / kSuperBlock; ++b) {
        q3_k_as_q6_k(src + b * kQ3KBytes, m.data.data() + b * kQ6KBytes);
      }
      break;
    case GgmlType::Q5_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        q5_0_as_q8_0(src + b * kQ5_0Bytes, m.data.data() + b * kQ8_0Bytes);
      }
      break;
    case GgmlType::IQ4_NL: {
      m.scales.resize(static_cast<size_t>(n / kInt8GroupSize));
      int8_t* q = m.data.as<int8_t>();
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* block = src + b * kIq4NlBytes;
        m.scales[b] = load_f16(block);
        iq4_values(block + 2, q + 32 * b);
      }
      break;
    }
    default: {  // IQ4_XS: 8 runs of 32 per super-block, each with its 6-bit scale
      m.scales.resize(static_cast<size_t>(n / kInt8GroupSize));
      int8_t* q = m.data.as<int8_t>();
      for (int64_t b = 0; b < n / kSuperBlock; ++b) {
        const uint8_t* block = src + b * kIq4XsBytes;
        const float d = load_f16(block);
        const uint16_t scales_high = static_cast<uint16_t>(block[2] | (block[3] << 8));
        for (int ib = 0; ib < 8; ++ib) {
          const int ls = ((block[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) |
                         (((scales_high >> (2 * ib)) & 3) << 4);
          m.scales[8 * b + ib] = d * static_cast<float>(ls - 32);
          iq4_values(block + 8 + 16 * ib, q + kSuperBlock * b + 32 * ib);
        }
      }
      break;
    }
  }
  return m;
}

}  // namespace alem
