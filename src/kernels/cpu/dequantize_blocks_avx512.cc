// Rows of ggml block weights expanded to f32 with AVX-512, for the AMX prefill path
// (matmul_gemm_bf16_amx.cc expands every 48 weight rows once per matmul before the tile products).
// The generic dequantize_ggml works one value at a time and cost more than the tile products
// themselves on a Q4_0 prefill. Q4_0, Q4_1 and Q8_0 are expanded here, 32 values per block in two
// registers, with the same f32 operations in the same order as dequantize_ggml (q * d, and for
// Q4_1 then + m, no fused multiply-add), so the result is bit-for-bit the same; other types go
// to dequantize_ggml.
#include <immintrin.h>

#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx512 {
namespace {

inline __m512 f16_broadcast(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm512_set1_ps(_cvtsh_ss(h));
}

// The 32 nibbles of 16 bytes as int32: low nibbles (values 0-15 of the block), high (16-31).
inline void nibbles(const uint8_t* qs, __m512i* low, __m512i* high) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  *low = _mm512_cvtepu8_epi32(_mm_and_si128(q, mask));
  *high = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
}

void q4_0_row(const uint8_t* row, int64_t blocks, float* y) {
  const __m512i eight = _mm512_set1_epi32(8);
  for (int64_t b = 0; b < blocks; ++b, row += 18, y += 32) {
    const __m512 d = f16_broadcast(row);
    __m512i low, high;
    nibbles(row + 2, &low, &high);
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(low, eight)), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(high, eight)), d));
  }
}

void q4_1_row(const uint8_t* row, int64_t blocks, float* y) {
  for (int64_t b = 0; b < blocks; ++b, row += 20, y += 32) {
    const __m512 d = f16_broadcast(row), m = f16_broadcast(row + 2);
    __m512i low, high;
    nibbles(row + 4, &low, &high);
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(low), d), m));
    _mm512_storeu_ps(y + 16, _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(high), d), m));
  }
}

void q8_0_row(const uint8_t* row, int64_t blocks, float* y) {
  for (int64_t b = 0; b < blocks; ++b, row += 34, y += 32) {
    const __m512 d = f16_broadcast(row);
    const auto* qs = reinterpret_cast<const __m128i*>(row + 2);
    const __m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(qs));
    const __m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(qs + 1));
    _mm512_storeu_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(q0), d));
    _mm512_storeu_ps(y + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(q1), d));
  }
}

}  // namespace

void dequantize_block_rows(const WeightView& w, int64_t n0, int rows, float* out) {
  const uint32_t type = ggml_type_of(w.dtype);
  const size_t row_bytes = dtype_row_bytes(w.dtype, w.cols);
  const auto* base = static_cast<const uint8_t*>(w.data) + n0 * row_bytes;
  void (*row_fn)(const uint8_t*, int64_t, float*) = nullptr;
  switch (w.dtype) {
    case DType::Q4_0:
      row_fn = q4_0_row;
      break;
    case DType::Q4_1:
      row_fn = q4_1_row;
      break;
    case DType::Q8_0:
      row_fn = q8_0_row;
      break;
    default:
      break;
  }
  // One row in ggml's form, from interleaved weights (per-thread scratch, cpu_kernels.h).
  uint8_t* rebuilt =
      w.layout == BlockLayout::kInterleaved8
          ? static_cast<uint8_t*>(thread_scratch(ScratchSlot::kRebuiltRow, row_bytes))
          : nullptr;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* row = base + r * row_bytes;
    if (w.layout == BlockLayout::kInterleaved8) {
      interleaved_row(w.dtype, static_cast<const uint8_t*>(w.data), w.cols, n0 + r, rebuilt);
      row = rebuilt;
    }
    float* y = out + r * w.cols;
    if (row_fn != nullptr) {
      row_fn(row, w.cols / 32, y);
    } else {
      dequantize_ggml(type, row, row_bytes, y, w.cols);
    }
  }
}

}  // namespace alem::cpu::avx512
