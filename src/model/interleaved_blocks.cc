// The 8-row interleaved layout of ggml block weights (interleaved_blocks.h): the byte shuffles
// between it and ggml's row-major blocks, in one place for every reader.
#include "model/interleaved_blocks.h"

#include <cstring>
#include <vector>

#include "core/error.h"

namespace alem {
namespace {

// One field of a block: where it sits in ggml's block, how many bytes, and the unit the
// interleaved form moves it in (2: an f16 scale, 4: a chunk of one 32-bit lane).
struct Field {
  int offset;
  int bytes;
  int unit;
};
struct BlockFields {
  int count = 0;
  Field fields[5];
};

// The fields of each type in the order the interleaved column holds them (the kernels read
// them in this order: scales first, then the values).
BlockFields fields_of(DType dtype) {
  switch (dtype) {
    case DType::Q4_0:
      return {2, {{0, 2, 2}, {2, 16, 4}}};
    case DType::Q4_1:
      return {3, {{0, 2, 2}, {2, 2, 2}, {4, 16, 4}}};
    case DType::Q8_0:
      return {2, {{0, 2, 2}, {2, 32, 4}}};
    case DType::Q4_K:  // d, dmin, scales[12], qs[128]
      return {4, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 128, 4}}};
    case DType::Q5_K:  // d, dmin, scales[12], qh[32], qs[128]
      return {5, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 32, 4}, {48, 128, 4}}};
    case DType::Q6_K:  // ql[128], qh[64], scales[16], d: d and the scales first
      return {4, {{208, 2, 2}, {192, 16, 4}, {0, 128, 4}, {128, 64, 4}}};
    default:
      return {};
  }
}

// Copies one block between the two forms: to the interleaved one, `from` is the row-major block
// and `to` the start of its group's interleaved block column (r: the row within the group);
// back, the other way round.
template <bool kToInterleaved>
void move_block(const BlockFields& f, const uint8_t* from, uint8_t* to, int r) {
  int64_t field_start = 0;  // in the column
  for (int i = 0; i < f.count; ++i) {
    const Field& field = f.fields[i];
    for (int k = 0; k < field.bytes / field.unit; ++k) {
      const int64_t in_block = field.offset + k * field.unit;
      const int64_t in_column = field_start + (k * kInterleavedRows + r) * field.unit;
      if constexpr (kToInterleaved) {
        std::memcpy(to + in_column, from + in_block, field.unit);
      } else {
        std::memcpy(to + in_block, from + in_column, field.unit);
      }
    }
    field_start += field.bytes * kInterleavedRows;
  }
}

}  // namespace

bool can_interleave_blocks(DType dtype, int64_t rows) {
  return fields_of(dtype).count > 0 && rows > 0 && rows % kInterleavedRows == 0;
}

void interleave_blocks(DType dtype, int64_t rows, int64_t cols, uint8_t* data) {
  const int elements = dtype_is_block(dtype) ? dtype_block_elements(dtype) : 1;
  ALEM_CHECK(can_interleave_blocks(dtype, rows) && cols % elements == 0,
             "interleave_blocks: " + dtype_name(dtype) + " [" + std::to_string(rows) + " x " +
                 std::to_string(cols) + "] has no 8-row interleaved form");
  const BlockFields f = fields_of(dtype);
  const int bb = dtype_block_bytes(dtype);
  const size_t row_bytes = dtype_row_bytes(dtype, cols);
  const size_t group_bytes = row_bytes * kInterleavedRows;
  const int64_t blocks = cols / elements;
  std::vector<uint8_t> group(group_bytes);
  for (int64_t g = 0; g < rows / kInterleavedRows; ++g) {
    uint8_t* base = data + g * group_bytes;
    std::memcpy(group.data(), base, group_bytes);
    for (int r = 0; r < kInterleavedRows; ++r) {
      for (int64_t b = 0; b < blocks; ++b) {
        move_block<true>(f, group.data() + r * row_bytes + b * bb, base + b * bb * kInterleavedRows,
                         r);
      }
    }
  }
}

void interleaved_row(DType dtype, const uint8_t* data, int64_t cols, int64_t r, uint8_t* out) {
  const BlockFields f = fields_of(dtype);
  const int bb = dtype_block_bytes(dtype);
  const size_t row_bytes = dtype_row_bytes(dtype, cols);
  const uint8_t* base = data + (r / kInterleavedRows) * row_bytes * kInterleavedRows;
  for (int64_t b = 0; b < cols / dtype_block_elements(dtype); ++b) {
    move_block<false>(f, base + b * bb * kInterleavedRows, out + b * bb,
                      static_cast<int>(r % kInterleavedRows));
  }
}

}  // namespace alem
