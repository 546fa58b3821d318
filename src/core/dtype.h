// Element types of stored and in-memory weights, and exact conversions between them.
// bf16 and f16 are kept as raw uint16_t bit patterns; conversion to f32 is exact, conversion
// from f32 rounds to nearest even (the same rounding PyTorch and llama.cpp use).
// Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are ggml's block formats, kept byte for byte as GGUF files ship
// them: a row of `cols` elements is cols / 32 blocks, each block 32 elements in 18 / 20 / 22 / 24
// / 34 bytes (an f16 scale d, Q4_1 and Q5_1 also an f16 minimum m, Q5_0 and Q5_1 a 32-bit word of
// fifth bits, then the packed values; see gguf_quant.h).
// Q3_K, Q4_K, Q5_K and Q6_K are ggml's K-quant super-blocks, also kept byte for byte (Q3_K: 110
// bytes, 32 of high bits, 64 of 2-bit values, 16 six-bit scales in 12 bytes, f16 d): 256 elements
// in 144 / 176 / 210 bytes (Q4_K/Q5_K: f16 d and dmin, 8 six-bit scale/min pairs for sub-blocks of
// 32, then 4-bit values (Q5_K plus one high bit each); Q6_K: 4+2-bit values, 16 int8 scales for
// sub-blocks of 16, f16 d; the layouts of ggml's block_q4_K / block_q5_K / block_q6_K).
// IQ4_NL is ggml's non-linear 4-bit block, also kept byte for byte: 32 elements in 18 bytes, Q4_0's
// layout (f16 d, then 16 bytes of 4-bit indices), each index standing for d times one of 16 int8
// values (kIq4Values in model/gguf_quant.h) instead of d times (q - 8). IQ4_XS puts the same
// indices in 256-element super-blocks of 136 bytes (f16 d, a 6-bit scale per 32 values as 2 high
// bits in a 16-bit word and 4 low bits in 4 bytes, then 8 runs of 16 index bytes): x = d * (scale
// - 32) * table[q].
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace alem {

enum class DType : uint8_t {
  F32 = 0,
  BF16 = 1,
  F16 = 2,
  I8 = 3,
  Q4_0 = 4,
  Q4_1 = 5,
  Q8_0 = 6,
  Q4_K = 7,
  Q5_K = 8,
  Q6_K = 9,
  IQ4_NL = 10,
  IQ4_XS = 11,
  Q5_0 = 12,
  Q5_1 = 13,
  Q3_K = 14
};

// Bytes per element (for I8 the scales are stored separately). Throws alem::Error for the block
// types, whose elements have no whole byte size: use dtype_row_bytes for those.
size_t dtype_size(DType t);
std::string dtype_name(DType t);
// Parses "f32", "bf16", "f16", "int8"/"i8", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k",
// "q5_k", "q6_k", "q3_k", "iq4_nl", "iq4_xs"; throws alem::Error on anything else.
DType parse_dtype(const std::string& name);

// Block geometry: 1 element in dtype_size bytes for the plain types; 32 elements in 18 (Q4_0,
// IQ4_NL), 20 (Q4_1), 22 (Q5_0), 24 (Q5_1) or 34 (Q8_0) bytes, 256 in 144 (Q4_K), 176 (Q5_K), 210
// (Q6_K) or 136 (IQ4_XS) for the block types. dtype_is_k_quant: the three K-quants;
// dtype_is_super_block: every 256-element type (the K-quants and IQ4_XS).
bool dtype_is_block(DType t);
bool dtype_is_k_quant(DType t);
bool dtype_is_super_block(DType t);
int64_t dtype_block_elements(DType t);
int64_t dtype_block_bytes(DType t);
// Bytes of one row of `cols` elements (I8: the values only). Throws alem::Error when cols is not
// a whole number of blocks.
size_t dtype_row_bytes(DType t, int64_t cols);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Group size of int8 weights: one f32 scale per this many consecutive elements of a row.
constexpr int kInt8GroupSize = 32;

}  // namespace alem
