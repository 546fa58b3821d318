// ggml tensor types as they appear in GGUF files, their block geometry, and exact dequantisation
// to f32 for the types alem imports. The bit layouts follow ggml-quants.c (llama.cpp); results
// match ggml's reference dequantisation bit for bit (checked against the `gguf` Python package).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.h"

namespace alem {

// Numeric ids are the on-disk values of `ggml_type`.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// The int8 values that IQ4_NL's and IQ4_XS's 4-bit indices stand for (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4Values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                          1,    13,   25,  38,  53,  69,  89,  113};

// The integer fields of one block, as ggml's dequantisers read them; dequantize_ggml and the
// kernels' readers (kernels/cpu) are both written over these.
// Q5_0 and Q5_1: the 32 five-bit values q in [0, 31] from the block's 32-bit word of fifth bits
// (bit j: value j's) and the 16 bytes of nibbles after it (Q5_0: block + 2, x = d * (q - 16);
// Q5_1: block + 4, x = d * q + m).
void q5_values(const uint8_t* fifth_bits_then_nibbles, int8_t* values);
// Q3_K (110 bytes: 32 bytes of high bits, 64 of low 2-bit values, 12 of 6-bit scales, f16 d at
// 108): the 16 scales sc - 32 (one per 16 values) and the 256 values q - (high bit ? 0 : 4), in
// [-4, 3]. Value e = 128h + 32j + l takes bits 2j..2j+1 of byte 32h + l and bit 4h + j of high
// byte l. q3_k_scale: scale i alone (its low 4 bits in byte 96 + i % 8, the high nibble from
// i = 8; its high 2 bits at bits 2 (i / 4) of byte 104 + i % 4).
void q3_k_fields(const uint8_t* block, int8_t* scales, int8_t* values);
int q3_k_scale(const uint8_t* block, int i);
// IQ4_NL and IQ4_XS: 32 values from 16 bytes of indices (values 0..15 in the low nibbles,
// 16..31 in the high) through kIq4Values.
void iq4_values(const uint8_t* qs, int8_t* values);
// IQ4_XS (136 bytes: f16 d, 16 bits of high scale bits, 4 bytes of low scale nibbles, 8 runs of
// 16 index bytes from byte 8): run ib's scale d * (ls - 32) in f32.
float iq4_xs_scale(const uint8_t* block, int ib);

struct GgmlBlockGeometry {
  int64_t elements_per_block = 0;  // 0 for an unknown type id
  int64_t bytes_per_block = 0;
};

// Geometry of a type id read from a file; elements_per_block == 0 when the id is unknown.
GgmlBlockGeometry ggml_block_geometry(uint32_t type_id);
// "Q4_1", "F32", ... or "type#<id>" for unknown ids.
std::string ggml_type_name(uint32_t type_id);
// True for the types dequantize_ggml() can expand, which ggml_dequantize_supported_names()
// lists for error messages: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K,
// Q5_K, Q6_K, IQ4_NL, IQ4_XS.
bool ggml_dequantize_supported(uint32_t type_id);
std::string ggml_dequantize_supported_names();
// Bytes taken by `elements` consecutive elements of the type. Throws alem::Error if the type is
// unknown or `elements` is not a whole number of blocks.
uint64_t ggml_bytes_for(uint32_t type_id, int64_t elements);

// Expands `elements` values of type `type_id` from `src` (exactly ggml_bytes_for(type, elements)
// bytes are read; `src_bytes` is checked against that) into `dst`. Throws alem::Error for
// unsupported types or a size mismatch.
void dequantize_ggml(uint32_t type_id, const uint8_t* src, size_t src_bytes, float* dst,
                     int64_t elements);

// The ggml types alem keeps as they are (DType::Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
// Q6_K, IQ4_NL, IQ4_XS): true and the DType for those, false for every other type (which the
// importer expands).
bool ggml_type_as_dtype(uint32_t type_id, DType* dtype);
// The ggml type id of a block DType (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, IQ4_NL,
// IQ4_XS); throws
// alem::Error for other dtypes.
uint32_t ggml_type_of(DType dtype);

// Quantises `elements` f32 values (a whole number of blocks) into `dst`
// (ggml_bytes_for(type, elements) bytes): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL and IQ4_XS exactly
// as ggml's reference quantize_row_*_ref does; Q4_K, Q5_K and Q6_K with quantize_k_block
// (gguf_quantize_k.cc), a simpler rule than ggml's iterative search with the same block layout.
// Throws alem::Error for other types.
void quantize_ggml(uint32_t type_id, const float* src, int64_t elements, uint8_t* dst);

// One 256-value K-quant super-block (Q4_K, Q5_K or Q6_K) from x[256] into `block`
// (dtype_block_bytes bytes): per sub-block (32 values; Q6_K 16) the scale and minimum that span
// its values, those scales themselves quantised to 6 bits (Q6_K: int8) against an f16
// super-scale, then every value rounded against its sub-block's quantised scale.
void quantize_k_block(DType dtype, const float* x, uint8_t* block);

}  // namespace alem
