// ggml block weights laid out 8 rows at a time, the form the CPU backend keeps Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, IQ4_NL, IQ4_XS, the K-quants Q4_K, Q5_K, Q6_K and alem's own int8 in on CPUs with
// AVX512-VNNI (KernelBackend::adopt_weight; docs/kernels-quantized.md, "Interleaved block
// weights"). GGUF ships a matrix row after row; its decode kernel then reads one row's blocks and
// spends as many instructions gathering scales, rearranging activations and reducing lanes as
// multiplying. Interleaved, the same bytes serve 8 rows at once from one sequential stream. A block
// is a list of fields (interleaved_blocks.cc names them per type); for every group of 8 rows and
// block column b, each field in turn holds the 8 rows' copies of it, in units of 2 bytes (the f16
// scales) or 4 bytes (everything else): unit k of the field is unit k of row 0's, of row 1's, ...
// of row 7's. For example
//   Q4_0: the 8 rows' f16 scales d (16 bytes), then the nibbles in 4 chunks of 4 bytes per row
//         (chunk k: bytes 4k..4k+3 of row 0's block, of row 1's, ... row 7's; 128 bytes);
//   IQ4_NL: as Q4_0 (the nibbles are indices into its table of values);
//   IQ4_XS: the 8 d, the 8 16-bit words of high scale bits, the 4 bytes of low scale nibbles as
//         one word per row (32 bytes), then the 128 bytes of indices as 32 chunks;
//   Q4_1: the 8 scales d, the 8 minimums m (32 bytes), then the same 128 bytes of nibbles;
//   Q5_0 / Q5_1: as Q4_0 / Q4_1 with the 8 rows' 32-bit words of fifth bits (32 bytes) before
//         the nibbles, each word bit-transposed (value j's bit at bit 8 (j % 4) + j / 4; the
//         one field not copied as it is);
//   Q8_0: the 8 scales d, then the 32 values in 8 chunks of 4 bytes per row (256 bytes);
//   Q4_K: the 8 d, the 8 dmin, the 12 bytes of 6-bit scales as 3 words per row (96 bytes),
//         then the 128 bytes of nibbles as 32 chunks (1024 bytes);
//   Q5_K: as Q4_K with the 32 bytes of high bits (8 chunks) before the nibbles;
//   Q3_K: the 8 d, the 12 bytes of 6-bit scales as 3 words per row, the 32 bytes of high bits (8
//         chunks), the 64 bytes of 2-bit values (16 chunks);
//   Q6_K: the 8 d, the 16 int8 scales as 4 words per row, the low 4 bits (32 chunks), the
//         high 2 bits (16 chunks);
//   int8 (alem's own, I8): each scale group of 32 values taken as a block of its f32 scale and
//         the 32 values: the 8 rows' scales (32 bytes), then the values in 8 chunks of 4 bytes
//         per row (256 bytes), Q8_0's column with f32 scales; the matrix's separate scale array
//         moves into the columns, so the 8 rows' values and scales are again one stream;
//   int8 with amax scales (kInterleaved8AmaxScales, kInterleaved8F16AmaxScales): where every
//         scale of a matrix is a bf16 (or an f16) value divided by 127 (amax / 127, as int8 is
//         quantised, from weights that were bf16 or f16), the 8 rows' 16-bit amax values (16
//         bytes) stand for the scales: Q8_0's column exactly, 34 bytes per 32 values instead
//         of 36, and the kernels divide by 127 as quantisation did, so every scale comes back
//         bit for bit;
// so 8 x the block's own bytes, and a group of 8 rows takes exactly the bytes the 8 rows took.
// A 32-bit lane of a chunk register is one row's 4 bytes: vpdpbusd against 4 activation bytes
// broadcast to every lane gives the 8 rows' dot products in the 8 lanes, and the scales come
// as one vector. A row range that starts at a multiple of 8 is still a contiguous byte range,
// so tensor-parallel and expert slices of whole groups stay valid views.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace alem {

constexpr int kInterleavedRows = 8;

// How a matrix of block weights (or bf16 ones) lies in memory.
enum class BlockLayout : uint8_t {
  kRowMajor,                   // row after row, ggml's blocks as GGUF ships them
  kInterleaved8,               // 8 rows at a time (above)
  kBf16Coded,                  // bf16 only: 12 bits per weight, lossless (model/bf16_coded.h)
  kInterleaved8AmaxScales,     // int8 only: kInterleaved8 with bf16 amax values for scales
  kInterleaved8F16AmaxScales,  // int8 only: the same with f16 amax values (above)
};

// How an interleaved int8 matrix holds its scales.
enum class Int8Scales { kF32, kBf16Amax, kF16Amax };
constexpr Int8Scales int8_scales_of(BlockLayout layout) {
  return layout == BlockLayout::kInterleaved8AmaxScales      ? Int8Scales::kBf16Amax
         : layout == BlockLayout::kInterleaved8F16AmaxScales ? Int8Scales::kF16Amax
                                                             : Int8Scales::kF32;
}

// The 8-row interleaved layouts.
inline bool is_interleaved8(BlockLayout layout) {
  return layout == BlockLayout::kInterleaved8 || layout == BlockLayout::kInterleaved8AmaxScales ||
         layout == BlockLayout::kInterleaved8F16AmaxScales;
}

// True where `dtype` has an interleaved form and `rows` divides into groups of 8.
bool can_interleave_blocks(DType dtype, int64_t rows);
// Bytes of one row in an interleaved layout: dtype_row_bytes for the block types; for int8,
// the values and their scales (cols + cols / 8, or cols + cols / 16 with amax scales).
size_t interleaved_row_bytes(DType dtype, int64_t cols,
                             BlockLayout layout = BlockLayout::kInterleaved8);
// Rewrites rows x cols block weights from row-major to interleaved, in place (not int8).
void interleave_blocks(DType dtype, int64_t rows, int64_t cols, uint8_t* data);
// Row r of an interleaved matrix back in its row-major block form (interleaved_row_bytes(dtype,
// cols) bytes: ggml's own blocks; for int8, each scale group as its f32 scale and 32 values).
void interleaved_row(DType dtype, const uint8_t* data, int64_t cols, int64_t r, uint8_t* out);
// int8: rows x cols values (row-major) and their rows x (cols / 32) scales into `out`
// (rows x interleaved_row_bytes(I8, cols, layout) bytes; an amax layout only where
// int8_interleaved_layout chose it); and row r of that back as f32 values.
void interleave_int8(int64_t rows, int64_t cols, const int8_t* values, const float* scales,
                     uint8_t* out, BlockLayout layout = BlockLayout::kInterleaved8);
void interleaved_int8_row(const uint8_t* data, int64_t cols, int64_t r, float* out,
                          BlockLayout layout = BlockLayout::kInterleaved8);
// The interleaved layout for int8 with these n scales: kInterleaved8AmaxScales where each is
// exactly bf16_to_f32(a) / 127 for its 16-bit code a (int8_amax_code), as int8 quantisation
// makes them from bf16 weights; else kInterleaved8F16AmaxScales where each is f16_to_f32(a) /
// 127 (weights that were f16); else kInterleaved8 (f32 scales).
BlockLayout int8_interleaved_layout(const float* scales, size_t n);
// A scale's 16-bit amax code in an amax layout (the amax rounded to bf16 or f16), and the scale
// a code stands for, computed as quantisation computed it.
uint16_t int8_amax_code(float scale, Int8Scales format);
float int8_amax_scale(uint16_t code, Int8Scales format);

}  // namespace alem
