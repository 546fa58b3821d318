// The 8-row interleaved layout of Q4_0, Q4_1 and Q8_0 weights (interleaved_blocks.h): the byte
// shuffles between it and ggml's row-major blocks, in one place for every reader.
#include "model/interleaved_blocks.h"

#include <cstring>
#include <vector>

#include "core/error.h"

namespace alem {
namespace {

// Bytes of the scale fields at the start of a block (Q4_0, Q8_0: d; Q4_1: d, m), and of the
// values after them, moved in chunks of 4 bytes (Q4: 16 bytes of nibbles; Q8_0: 32 of bytes).
int scale_bytes(DType dtype) {
  return dtype == DType::Q4_1 ? 4 : 2;
}
int chunk_count(DType dtype) {
  return (dtype_block_bytes(dtype) - scale_bytes(dtype)) / 4;
}

// Copies one block between the two forms. `block` is the row-major block; `column` the start of
// the interleaved block column of its group, r the row within the group.
void place_block(DType dtype, const uint8_t* block, uint8_t* column, int r) {
  const int sb = scale_bytes(dtype);
  std::memcpy(column + r * 2, block, 2);                                          // d
  if (sb == 4) std::memcpy(column + 2 * kInterleavedRows + r * 2, block + 2, 2);  // m
  uint8_t* chunks = column + sb * kInterleavedRows;
  for (int k = 0; k < chunk_count(dtype); ++k) {
    std::memcpy(chunks + k * 4 * kInterleavedRows + r * 4, block + sb + 4 * k, 4);
  }
}

void take_block(DType dtype, const uint8_t* column, int r, uint8_t* block) {
  const int sb = scale_bytes(dtype);
  std::memcpy(block, column + r * 2, 2);
  if (sb == 4) std::memcpy(block + 2, column + 2 * kInterleavedRows + r * 2, 2);
  const uint8_t* chunks = column + sb * kInterleavedRows;
  for (int k = 0; k < chunk_count(dtype); ++k) {
    std::memcpy(block + sb + 4 * k, chunks + k * 4 * kInterleavedRows + r * 4, 4);
  }
}

}  // namespace

bool can_interleave_blocks(DType dtype, int64_t rows) {
  return (dtype == DType::Q4_0 || dtype == DType::Q4_1 || dtype == DType::Q8_0) && rows > 0 &&
         rows % kInterleavedRows == 0;
}

void interleave_blocks(DType dtype, int64_t rows, int64_t cols, uint8_t* data) {
  ALEM_CHECK(can_interleave_blocks(dtype, rows) && cols % 32 == 0,
             "interleave_blocks: " + dtype_name(dtype) + " [" + std::to_string(rows) + " x " +
                 std::to_string(cols) + "] has no 8-row interleaved form");
  const int bb = dtype_block_bytes(dtype);
  const size_t row_bytes = dtype_row_bytes(dtype, cols);
  const size_t group_bytes = row_bytes * kInterleavedRows;
  const int64_t blocks = cols / 32;
  std::vector<uint8_t> group(group_bytes);
  for (int64_t g = 0; g < rows / kInterleavedRows; ++g) {
    uint8_t* base = data + g * group_bytes;
    std::memcpy(group.data(), base, group_bytes);
    for (int r = 0; r < kInterleavedRows; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        place_block(dtype, group.data() + r * row_bytes + b * bb, base + b * bb * kInterleavedRows,
                    r);
      }
    }
  }
}

void interleaved_row(DType dtype, const uint8_t* data, int64_t cols, int64_t r, uint8_t* out) {
  const int bb = dtype_block_bytes(dtype);
  const size_t row_bytes = dtype_row_bytes(dtype, cols);
  const uint8_t* base = data + (r / kInterleavedRows) * row_bytes * kInterleavedRows;
  for (int64_t b = 0; b < cols / 32; ++b) {
    take_block(dtype, base + b * bb * kInterleavedRows, static_cast<int>(r % kInterleavedRows),
               out + b * bb);
  }
}

}  // namespace alem
