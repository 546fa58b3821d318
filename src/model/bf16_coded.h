// bf16 weights with coded exponents: the lossless form the CPU backend keeps bf16 matrices in on
// AVX2 and AVX-512 CPUs (KernelBackend::adopt_weight; docs/kernels.md, "bf16 weights with coded
// exponents"). A decode step reads every weight once and is bound by memory, so the step costs
// what the weights weigh; this form weighs 12 bits per weight instead of 16, and a matmul reads
// back exactly the bf16 values it was made from.
//
// A bf16 value is s eeeeeeee mmmmmmm. Its low byte (the exponent's lowest bit and the 7 mantissa
// bits) is kept as it is. Its high byte (the sign and the exponent's top 7 bits, hi7) becomes a
// 4-bit code: the sign, then hi7 - base in 3 bits, where base is the row's largest hi7 less 7.
// The 7 offsets 1..7 cover 14 binary orders of magnitude below the row's largest value, where
// all but about 3 in 10,000 weights of real and random models lie (SmolLM2-135M: 3.3e-4). Offset
// 0 decodes to a signed zero: it stands for zero, and for the rarer values below the window,
// which the row lists as exceptions (column and bf16 bits) that the kernels add after.
// A 16-entry table per row maps each code to its high byte, one vpshufb for 64 weights.
//
// Layout of the buffer for rows x cols (cols % 64 == 0, cols <= 65536):
//   rows x (cols / 64) chunks of 96 bytes: the 64 weights' low bytes, then 32 bytes of codes;
//   rows x 16 bytes: each row's table (code -> high byte);
//   rows + 1 uint32: where each row's exceptions begin (the last: how many there are);
//   the exceptions, one uint32 each: column << 16 | bf16 bits, by row, then column.
// Inside a chunk the low bytes lie in the order that AVX-512's byte unpacking restores:
// position p = 16 L + b (L = 0..3, a 128-bit lane; b = 0..15) holds weight 8 L + b for b < 8
// and weight 32 + 8 L + b - 8 for b >= 8, so vpunpcklbw / vpunpckhbw of the low bytes with
// their high bytes give weights 0..31 and 32..63 in order (on AVX2's two lanes: 0..15 and 32..47
// from the first 32 low bytes, 16..31 and 48..63 from the others). Code byte j holds position j's code
// in its low nibble and position 32 + j's in its high nibble. A row's bytes are contiguous, so
// a range of rows is one sequential stream.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/aligned_buffer.h"

namespace alem {

constexpr int64_t kBf16CodedChunk = 64;       // weights per chunk
constexpr int64_t kBf16CodedChunkBytes = 96;  // 64 low bytes + 32 bytes of codes
constexpr int64_t kBf16CodedTableBytes = 16;  // per row
constexpr int kBf16CodedWindow = 7;           // hi7 offsets 1..7 above the row's base

// A coded matrix as pointers into its buffer.
struct Bf16CodedView {
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* chunks = nullptr;            // rows x cols / 64 x 96 bytes
  const uint8_t* tables = nullptr;            // rows x 16 bytes
  const uint32_t* exception_begin = nullptr;  // rows + 1 offsets
  const uint32_t* exceptions = nullptr;       // column << 16 | bf16 bits
  size_t row_bytes() const { return static_cast<size_t>(cols / kBf16CodedChunk) * 96; }
  const uint8_t* row(int64_t r) const { return chunks + static_cast<size_t>(r) * row_bytes(); }
};

// Whether a rows x cols matrix has a coded form (cols a multiple of 64, at most 65536).
bool can_code_bf16(int64_t rows, int64_t cols);

// Codes rows x cols bf16 values (row-major). Returns an empty buffer where more than
// `max_exception_share` of the weights fall outside their row's window (a row holding an
// infinity, or weights spread over more orders of magnitude than real models' are), so the
// caller keeps the plain form.
AlignedBuffer code_bf16(int64_t rows, int64_t cols, const uint16_t* values,
                        double max_exception_share = 0.01);

// The view of a buffer code_bf16 made for rows x cols; checks that its size and offsets agree.
Bf16CodedView bf16_coded_view(const AlignedBuffer& data, int64_t rows, int64_t cols);
// The same from a bare pointer (kernels: the caller checked the buffer).
Bf16CodedView bf16_coded_view(const void* data, int64_t rows, int64_t cols);
// Bytes the coded form of a rows x cols matrix takes with `exceptions` exceptions.
size_t bf16_coded_bytes(int64_t rows, int64_t cols, size_t exceptions);

// Row r's bf16 bits, exactly as they were coded (cols values).
void decode_bf16_row(const Bf16CodedView& w, int64_t r, uint16_t* out);

}  // namespace alem
