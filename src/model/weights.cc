// Builds and reads WeightMatrix values (quantisation for int8, rounding for bf16/f16).
#include "model/weights.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "model/bf16_coded.h"
#include "model/gguf_quant.h"

namespace alem {

float WeightMatrix::at(int64_t r, int64_t c) const {
  ALEM_CHECK(!data.empty(), "WeightMatrix::at: the matrix lives in a device backend's memory");
  if (dtype_is_block(dtype)) {
    const int64_t block = c / dtype_block_elements(dtype);
    std::vector<uint8_t> row;
    const uint8_t* row_start = data.data() + static_cast<size_t>(r) * row_bytes();
    if (layout == BlockLayout::kInterleaved8) {
      row.resize(row_bytes());
      interleaved_row(dtype, data.data(), cols, r, row.data());
      row_start = row.data();
    }
    const uint8_t* src = row_start + static_cast<size_t>(block * dtype_block_bytes(dtype));
    float values[256];  // the largest block (K-quants)
    dequantize_ggml(ggml_type_of(dtype), src, static_cast<size_t>(dtype_block_bytes(dtype)), values,
                    dtype_block_elements(dtype));
    return values[c % dtype_block_elements(dtype)];
  }
  const int64_t i = r * cols + c;
  switch (dtype) {
    case DType::F32:
      return data.as<float>()[i];
    case DType::BF16:
      if (layout == BlockLayout::kBf16Coded) {
        std::vector<uint16_t> row(static_cast<size_t>(cols));
        decode_bf16_row(bf16_coded_view(data, rows, cols), r, row.data());
        return bf16_to_f32(row[static_cast<size_t>(c)]);
      }
      return bf16_to_f32(data.as<uint16_t>()[i]);
    case DType::F16:
      return f16_to_f32(data.as<uint16_t>()[i]);
    case DType::I8:
      if (is_interleaved8(layout)) {
        std::vector<float> row(static_cast<size_t>(cols));
        interleaved_int8_row(data.data(), cols, r, row.data(), layout);
        return row[c];
      }
      return static_cast<float>(data.as<int8_t>()[i]) *
             scales[r * groups_per_row() + c / kInt8GroupSize];
    default:
      return 0.f;
  }
}

void dequantize_row(const WeightMatrix& w, int64_t r, float* out) {
  ALEM_CHECK(r >= 0 && r < w.rows, "dequantize_row: row " + std::to_string(r) + " outside [0, " +
                                       std::to_string(w.rows) + ")");
  if (dtype_is_block(w.dtype)) {
    const uint8_t* row = w.data.data() + static_cast<size_t>(r) * w.row_bytes();
    thread_local std::vector<uint8_t> rebuilt;
    if (w.layout == BlockLayout::kInterleaved8) {
      rebuilt.resize(w.row_bytes());
      interleaved_row(w.dtype, w.data.data(), w.cols, r, rebuilt.data());
      row = rebuilt.data();
    }
    dequantize_ggml(ggml_type_of(w.dtype), row, w.row_bytes(), out, w.cols);
    return;
  }
  if (w.dtype == DType::I8 && is_interleaved8(w.layout)) {
    interleaved_int8_row(w.data.data(), w.cols, r, out, w.layout);
    return;
  }
  if (w.dtype == DType::BF16 && w.layout == BlockLayout::kBf16Coded) {
    thread_local std::vector<uint16_t> bits;
    bits.resize(static_cast<size_t>(w.cols));
    decode_bf16_row(bf16_coded_view(w.data, w.rows, w.cols), r, bits.data());
    for (int64_t c = 0; c < w.cols; ++c) out[c] = bf16_to_f32(bits[static_cast<size_t>(c)]);
    return;
  }
  for (int64_t c = 0; c < w.cols; ++c) out[c] = w.at(r, c);
}

WeightMatrix make_weight_matrix(const float* values, int64_t rows, int64_t cols, DType dtype) {
  WeightMatrix w;
  w.dtype = dtype;
  w.rows = rows;
  w.cols = cols;
  const int64_t n = rows * cols;
  if (dtype_is_block(dtype)) {
    ALEM_CHECK(cols % dtype_block_elements(dtype) == 0,
               dtype_name(dtype) + " weights need a column count divisible by " +
                   std::to_string(dtype_block_elements(dtype)) + ", got " + std::to_string(cols));
    w.data.resize(static_cast<size_t>(rows) * dtype_row_bytes(dtype, cols));
    quantize_ggml(ggml_type_of(dtype), values, n, w.data.data());
    return w;
  }
  w.data.resize(static_cast<size_t>(n) * dtype_size(dtype));
  switch (dtype) {
    case DType::F32:
      std::copy(values, values + n, w.data.as<float>());
      break;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) w.data.as<uint16_t>()[i] = f32_to_bf16(values[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) w.data.as<uint16_t>()[i] = f32_to_f16(values[i]);
      break;
    case DType::I8: {
      ALEM_CHECK(cols % kInt8GroupSize == 0, "int8 weights need a column count divisible by " +
                                                 std::to_string(kInt8GroupSize) + ", got " +
                                                 std::to_string(cols));
      const int64_t groups = cols / kInt8GroupSize;
      w.scales.resize(static_cast<size_t>(rows * groups));
      int8_t* q = w.data.as<int8_t>();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const float* src = values + r * cols + g * kInt8GroupSize;
          float amax = 0.f;
          for (int k = 0; k < kInt8GroupSize; ++k) amax = std::max(amax, std::fabs(src[k]));
          const float scale = amax / 127.f;
          const float inv = scale > 0.f ? 1.f / scale : 0.f;
          w.scales[r * groups + g] = scale;
          for (int k = 0; k < kInt8GroupSize; ++k) {
            q[r * cols + g * kInt8GroupSize + k] =
                static_cast<int8_t>(std::lrintf(std::clamp(src[k] * inv, -127.f, 127.f)));
          }
        }
      }
      break;
    }
    default:
      break;
  }
  return w;
}

}  // namespace alem

namespace alem {

WeightMatrix concat_rows(const std::vector<WeightMatrix>& parts) {
  ALEM_CHECK(!parts.empty(), "concat_rows of nothing");
  WeightMatrix out;
  out.dtype = parts[0].dtype;
  out.cols = parts[0].cols;
  for (const WeightMatrix& p : parts) {
    ALEM_CHECK(p.dtype == out.dtype && p.cols == out.cols,
               "concat_rows needs matching dtypes and column counts");
    ALEM_CHECK(p.layout == BlockLayout::kRowMajor && !p.backend_copy,
               "concat_rows joins matrices before a backend adopts them");
    out.rows += p.rows;
  }
  out.data.resize(static_cast<size_t>(out.rows) * dtype_row_bytes(out.dtype, out.cols));
  size_t offset = 0;
  for (const WeightMatrix& p : parts) {
    std::copy(p.data.data(), p.data.data() + p.data.size(), out.data.data() + offset);
    offset += p.data.size();
    out.scales.insert(out.scales.end(), p.scales.begin(), p.scales.end());
  }
  return out;
}

StackedRows stack_rows(std::vector<WeightMatrix> parts) {
  ALEM_CHECK(!parts.empty(), "stack_rows of nothing");
  StackedRows out;
  bool one_dtype = true;
  for (const WeightMatrix& p : parts) {
    ALEM_CHECK(p.cols == parts[0].cols, "stack_rows needs matching column counts");
    one_dtype &= p.dtype == parts[0].dtype;
  }
  if (one_dtype) {
    out.fused = concat_rows(parts);
  } else {
    out.parts = std::move(parts);
  }
  return out;
}

int64_t StackedRows::rows() const {
  int64_t total = fused.rows;
  for (const WeightMatrix& p : parts) total += p.rows;
  return total;
}

uint64_t StackedRows::bytes() const {
  uint64_t total = fused.bytes();
  for (const WeightMatrix& p : parts) total += p.bytes();
  return total;
}

}  // namespace alem
