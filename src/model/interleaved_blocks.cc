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
  // Q5_0/Q5_1's 32-bit word of fifth bits (bit j: value j), held bit-transposed in the
  // interleaved form: value j's bit at bit 8 (j % 4) + j / 4, so chunk c's four bits (values
  // 4c .. 4c + 3) are bit c of the word's four bytes, one shift and mask from the bytes they join.
  bool fifth_bits = false;
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
    case DType::IQ4_NL:  // Q4_0's layout: d, then 16 bytes of indices
      return {2, {{0, 2, 2}, {2, 16, 4}}};
    case DType::Q4_1:
      return {3, {{0, 2, 2}, {2, 2, 2}, {4, 16, 4}}};
    case DType::Q5_0:  // d, qh, qs[16]
      return {3, {{0, 2, 2}, {2, 4, 4, true}, {6, 16, 4}}};
    case DType::Q5_1:  // d, m, qh, qs[16]
      return {4, {{0, 2, 2}, {2, 2, 2}, {4, 4, 4, true}, {8, 16, 4}}};
    case DType::Q8_0:
      return {2, {{0, 2, 2}, {2, 32, 4}}};
    case DType::IQ4_XS:  // d, scales_h (16 bits), scales_l[4], qs[128]
      return {4, {{0, 2, 2}, {2, 2, 2}, {4, 4, 4}, {8, 128, 4}}};
    case DType::Q4_K:  // d, dmin, scales[12], qs[128]
      return {4, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 128, 4}}};
    case DType::Q5_K:  // d, dmin, scales[12], qh[32], qs[128]
      return {5, {{0, 2, 2}, {2, 2, 2}, {4, 12, 4}, {16, 32, 4}, {48, 128, 4}}};
    case DType::Q3_K:  // hmask[32], qs[64], scales[12], d: d and the scales first
      return {4, {{108, 2, 2}, {96, 12, 4}, {0, 32, 4}, {32, 64, 4}}};
    case DType::Q6_K:  // ql[128], qh[64], scales[16], d: d and the scales first
      return {4, {{208, 2, 2}, {192, 16, 4}, {0, 128, 4}, {128, 64, 4}}};
    case DType::I8:  // alem's int8 as a block: its f32 scale, then its 32 values (interleave_int8)
      return {2, {{0, 4, 4}, {4, 32, 4}}};
    default:
      return {};
  }
}

// int8 with amax scales: Q8_0's block (a 16-bit amax code, then the 32 values).
BlockFields fields_of(DType dtype, BlockLayout layout) {
  return dtype == DType::I8 && int8_scales_of(layout) != Int8Scales::kF32 ? fields_of(DType::Q8_0)
                                                                          : fields_of(dtype);
}

// A word of fifth bits to its interleaved form (Field::fifth_bits) and back.
uint32_t transpose_fifth_bits(uint32_t bits, bool to_interleaved) {
  uint32_t out = 0;
  for (int j = 0; j < 32; ++j) {
    const int moved = 8 * (j % 4) + j / 4;
    if (to_interleaved) {
      out |= ((bits >> j) & 1u) << moved;
    } else {
      out |= ((bits >> moved) & 1u) << j;
    }
  }
  return out;
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
      uint8_t* dst = kToInterleaved ? to + in_column : to + in_block;
      const uint8_t* src = kToInterleaved ? from + in_block : from + in_column;
      if (field.fifth_bits) {
        uint32_t bits;
        std::memcpy(&bits, src, 4);
        bits = transpose_fifth_bits(bits, kToInterleaved);
        std::memcpy(dst, &bits, 4);
      } else {
        std::memcpy(dst, src, field.unit);
      }
    }
    field_start += field.bytes * kInterleavedRows;
  }
}

// One block of the layout in its row-major form: ggml's own for the block types; for alem's
// int8, a scale group of 32 values with its f32 scale in front (36 bytes), a form no file holds.
struct BlockShape {
  int64_t elements;
  int64_t bytes;
};
constexpr int64_t kInt8BlockBytes = sizeof(float) + kInt8GroupSize;
constexpr int64_t kInt8AmaxBlockBytes = sizeof(uint16_t) + kInt8GroupSize;
BlockShape block_shape(DType dtype, BlockLayout layout = BlockLayout::kInterleaved8) {
  if (dtype == DType::I8) {
    return {kInt8GroupSize,
            int8_scales_of(layout) != Int8Scales::kF32 ? kInt8AmaxBlockBytes : kInt8BlockBytes};
  }
  return {dtype_block_elements(dtype), dtype_block_bytes(dtype)};
}
size_t block_row_bytes(DType dtype, int64_t cols, BlockLayout layout = BlockLayout::kInterleaved8) {
  const auto [elements, bytes] = block_shape(dtype, layout);
  return static_cast<size_t>(cols / elements * bytes);
}

}  // namespace

size_t interleaved_row_bytes(DType dtype, int64_t cols, BlockLayout layout) {
  return block_row_bytes(dtype, cols, layout);
}

uint16_t int8_amax_code(float scale, Int8Scales format) {
  return format == Int8Scales::kF16Amax ? f32_to_f16(scale * 127.f) : f32_to_bf16(scale * 127.f);
}

float int8_amax_scale(uint16_t code, Int8Scales format) {
  return (format == Int8Scales::kF16Amax ? f16_to_f32(code) : bf16_to_f32(code)) / 127.f;
}

BlockLayout int8_interleaved_layout(const float* scales, size_t n) {
  for (const BlockLayout layout :
       {BlockLayout::kInterleaved8AmaxScales, BlockLayout::kInterleaved8F16AmaxScales}) {
    const Int8Scales format = int8_scales_of(layout);
    size_t i = 0;
    for (; i < n; ++i) {
      const float back = int8_amax_scale(int8_amax_code(scales[i], format), format);
      if (std::memcmp(&back, &scales[i], sizeof(float)) != 0) break;
    }
    if (i == n) return layout;
  }
  return BlockLayout::kInterleaved8;
}

bool can_interleave_blocks(DType dtype, int64_t rows) {
  return fields_of(dtype).count > 0 && rows > 0 && rows % kInterleavedRows == 0;
}

void interleave_blocks(DType dtype, int64_t rows, int64_t cols, uint8_t* data) {
  ALEM_CHECK(dtype != DType::I8, "interleave_blocks: int8 takes interleave_int8");
  const auto [elements, bb] = block_shape(dtype);
  ALEM_CHECK(can_interleave_blocks(dtype, rows) && cols % elements == 0,
             "interleave_blocks: " + dtype_name(dtype) + " [" + std::to_string(rows) + " x " +
                 std::to_string(cols) + "] has no 8-row interleaved form");
  const BlockFields f = fields_of(dtype);
  const size_t row_bytes = block_row_bytes(dtype, cols);
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
  const auto [elements, bb] = block_shape(dtype);
  const size_t row_bytes = block_row_bytes(dtype, cols);
  const uint8_t* base = data + (r / kInterleavedRows) * row_bytes * kInterleavedRows;
  for (int64_t b = 0; b < cols / elements; ++b) {
    move_block<false>(f, base + b * bb * kInterleavedRows, out + b * bb,
                      static_cast<int>(r % kInterleavedRows));
  }
}

void interleave_int8(int64_t rows, int64_t cols, const int8_t* values, const float* scales,
                     uint8_t* out, BlockLayout layout) {
  ALEM_CHECK(can_interleave_blocks(DType::I8, rows) && cols % kInt8GroupSize == 0 &&
                 is_interleaved8(layout),
             "interleave_int8: [" + std::to_string(rows) + " x " + std::to_string(cols) +
                 "] has no 8-row interleaved form");
  const Int8Scales format = int8_scales_of(layout);
  const bool amax = format != Int8Scales::kF32;
  const BlockFields f = fields_of(DType::I8, layout);
  const int64_t blocks = cols / kInt8GroupSize;
  const int64_t block_bytes = block_shape(DType::I8, layout).bytes;
  const int scale_bytes = amax ? sizeof(uint16_t) : sizeof(float);
  const size_t group_bytes = block_row_bytes(DType::I8, cols, layout) * kInterleavedRows;
  uint8_t block[kInt8BlockBytes];
  for (int64_t g = 0; g < rows / kInterleavedRows; ++g) {
    for (int r = 0; r < kInterleavedRows; ++r) {
      const int64_t row = g * kInterleavedRows + r;
      for (int64_t b = 0; b < blocks; ++b) {
        const float scale = scales[row * blocks + b];
        if (amax) {
          const uint16_t code = int8_amax_code(scale, format);
          ALEM_CHECK(int8_amax_scale(code, format) == scale,
                     "interleave_int8: a scale is no amax over 127 in this layout's format "
                     "(int8_interleaved_layout)");
          std::memcpy(block, &code, sizeof(code));
        } else {
          std::memcpy(block, &scale, sizeof(float));
        }
        std::memcpy(block + scale_bytes, values + row * cols + b * kInt8GroupSize, kInt8GroupSize);
        move_block<true>(f, block, out + g * group_bytes + b * block_bytes * kInterleavedRows, r);
      }
    }
  }
}

void interleaved_int8_row(const uint8_t* data, int64_t cols, int64_t r, float* out,
                          BlockLayout layout) {
  const Int8Scales format = int8_scales_of(layout);
  const bool amax = format != Int8Scales::kF32;
  const BlockFields f = fields_of(DType::I8, layout);
  const int64_t block_bytes = block_shape(DType::I8, layout).bytes;
  const size_t row_bytes = block_row_bytes(DType::I8, cols, layout);
  const uint8_t* base = data + (r / kInterleavedRows) * row_bytes * kInterleavedRows;
  uint8_t block[kInt8BlockBytes];
  for (int64_t b = 0; b < cols / kInt8GroupSize; ++b) {
    move_block<false>(f, base + b * block_bytes * kInterleavedRows, block,
                      static_cast<int>(r % kInterleavedRows));
    float scale;
    if (amax) {
      uint16_t code;
      std::memcpy(&code, block, sizeof(code));
      scale = int8_amax_scale(code, format);
    } else {
      std::memcpy(&scale, block, sizeof(float));
    }
    const auto* q =
        reinterpret_cast<const int8_t*>(block + (amax ? sizeof(uint16_t) : sizeof(float)));
    for (int i = 0; i < kInt8GroupSize; ++i) {
      out[b * kInt8GroupSize + i] = static_cast<float>(q[i]) * scale;
    }
  }
}

}  // namespace alem
