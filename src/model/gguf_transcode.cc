// Exact carriers for ggml types without kernels of their own (gguf_transcode.h). The source
// blocks are read by the same field readers as their dequantisers (gguf_quant.h); the carriers
// are written in the layout dequantize_q6_k reads.
#include "model/gguf_transcode.h"

#include <cstring>
#include <string>

#include "core/error.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

constexpr int64_t kSuperBlock = 256;
constexpr size_t kQ3KBytes = 110, kQ6KBytes = 210, kQ5_0Bytes = 22, kQ8_0Bytes = 34;

// One Q3_K super-block as Q6_K: its values (q3_k_fields, in [-4, 3]) become the 6-bit v + 32,
// its 16 scales sc - 32 (in [-32, 31]) Q6_K's int8 scales, both per 16 values in order; d is
// the same f16. Q6_K value e sits in ql/qh as dequantize_q6_k reads it: half h = e / 128,
// l = e % 32, run j = (e % 128) / 32: its low nibble in ql[64h + l + 32 (j & 1)] (the low nibble
// for j < 2, the high for j >= 2), its high 2 bits at bit 2j of qh[32h + l].
void q3_k_as_q6_k(const uint8_t* q3, uint8_t* q6) {
  int8_t values[256];
  q3_k_fields(q3, reinterpret_cast<int8_t*>(q6 + 192), values);
  uint8_t* ql = q6;
  uint8_t* qh = q6 + 128;
  std::memset(q6, 0, 192);
  std::memcpy(q6 + 208, q3 + 108, 2);  // d
  for (int e = 0; e < kSuperBlock; ++e) {
    const int h = e / 128, j = (e % 128) / 32, l = e % 32;
    const int stored = values[e] + 32;  // 28 .. 35
    uint8_t& low_byte = ql[64 * h + l + 32 * (j & 1)];
    low_byte = static_cast<uint8_t>(low_byte | ((stored & 0x0F) << (j < 2 ? 0 : 4)));
    qh[32 * h + l] = static_cast<uint8_t>(qh[32 * h + l] | ((stored >> 4) << (2 * j)));
  }
}

}  // namespace

bool ggml_exact_carrier(uint32_t type_id, DType* carrier) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q3_K:
      *carrier = DType::Q6_K;
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
  for (int64_t b = 0; b < n / kSuperBlock; ++b) {  // Q3_K, the one type with a carrier
    q3_k_as_q6_k(src + b * kQ3KBytes, m.data.data() + b * kQ6KBytes);
  }
  return m;
}

}  // namespace alem
