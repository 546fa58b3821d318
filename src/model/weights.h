// In-memory weight tensors as the kernels read them. A WeightMatrix is [rows x cols] row-major
// in the HF Linear convention (rows = output features, cols = input features), stored as f32,
// bf16 or int8. int8 rows carry one f32 scale per kInt8GroupSize consecutive columns:
//   w[r][c] = q[r][c] * scale[r][c / kInt8GroupSize]
// Kernels read bf16 and int8 directly; they are never expanded to f32 in memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/dtype.h"

namespace alem {

struct WeightMatrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  AlignedBuffer data;         // rows*cols elements of dtype
  std::vector<float> scales;  // I8 only: rows * (cols / kInt8GroupSize)

  int64_t groups_per_row() const { return cols / kInt8GroupSize; }
  size_t bytes() const { return data.size() + scales.size() * sizeof(float); }
  // Element (r, c) as f32 (slow; for tests and reference code).
  float at(int64_t r, int64_t c) const;
};

// Builds a WeightMatrix of the given dtype from f32 values (rounding to bf16/f16, or
// quantising to int8 with one absmax scale per group). cols must divide by kInt8GroupSize for I8.
WeightMatrix make_weight_matrix(const float* values, int64_t rows, int64_t cols, DType dtype);

}  // namespace alem

namespace alem {
// Stacks matrices of one dtype and column count on top of each other (fused QKV, gate+up).
WeightMatrix concat_rows(const std::vector<WeightMatrix>& parts);
}  // namespace alem
