// In-memory weight tensors as the kernels read them. A WeightMatrix is [rows x cols] row-major
// in the HF Linear convention (rows = output features, cols = input features), stored as f32,
// bf16 or int8. int8 rows carry one f32 scale per kInt8GroupSize consecutive columns:
//   w[r][c] = q[r][c] * scale[r][c / kInt8GroupSize]
// Kernels read bf16 and int8 directly; they are never expanded to f32 in memory. The block types
// (Q4_0, Q4_1, Q8_0: ggml's formats, dtype.h) hold each row as cols / 32 raw blocks of
// dtype_block_bytes bytes, scales inside the blocks; `scales` stays empty for them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/dtype.h"
#include "model/interleaved_blocks.h"

namespace alem {

struct WeightMatrix {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  AlignedBuffer data;         // rows * dtype_row_bytes(dtype, cols) bytes
  std::vector<float> scales;  // I8 only: rows * (cols / kInt8GroupSize); empty once interleaved
  // Block types and int8: how `data` lies (interleaved_blocks.h). The CPU backend interleaves
  // them when it adopts them (int8's scales then move into `data`, and `scales` is empty);
  // everything that reads rows (dequantize_row, at) follows the field.
  BlockLayout layout = BlockLayout::kRowMajor;
  // Set once a device backend has taken the matrix (KernelBackend::adopt_weight): its copy in
  // the backend's memory, opaque here, which that backend's kernels read; `data` and `scales`
  // are then released, so the host never holds the shard. Null for host-resident matrices.
  std::shared_ptr<void> backend_copy;
  size_t backend_copy_bytes = 0;  // data + scales bytes held by backend_copy

  int64_t groups_per_row() const { return cols / kInt8GroupSize; }
  size_t bytes() const {
    return backend_copy ? backend_copy_bytes : data.size() + scales.size() * sizeof(float);
  }
  size_t row_bytes() const { return dtype_row_bytes(dtype, cols); }
  // Element (r, c) as f32 (slow; for tests and reference code).
  float at(int64_t r, int64_t c) const;
};

// Row r of w as f32 values (cols of them), exactly as the reference dequantisation gives them.
void dequantize_row(const WeightMatrix& w, int64_t r, float* out);

// Builds a WeightMatrix of the given dtype from f32 values (rounding to bf16/f16, or
// quantising to int8 with one absmax scale per group, or to a ggml block type as ggml's reference
// quantiser does). cols must divide by 32 for I8 and the block types.
WeightMatrix make_weight_matrix(const float* values, int64_t rows, int64_t cols, DType dtype);

}  // namespace alem

namespace alem {
// Stacks matrices of one dtype and column count on top of each other (fused QKV, gate+up).
WeightMatrix concat_rows(const std::vector<WeightMatrix>& parts);

// Matrices the engine multiplies as one (q/k/v, gate/up): stacked into one matrix where they
// share a dtype, kept as parts where a GGUF mixture stores them in different types (a Q4_K_M
// file's Q6_K v beside Q4_K q and k), so no part is expanded. The output is the same either
// way: part i's rows are the columns of y after those of parts 0 .. i-1.
struct StackedRows {
  WeightMatrix fused;               // every part, when they share a dtype
  std::vector<WeightMatrix> parts;  // otherwise, in order
  bool is_fused() const { return parts.empty(); }
  int64_t rows() const;
  uint64_t bytes() const;
};
// Stacks `parts` (matching column counts) as above.
StackedRows stack_rows(std::vector<WeightMatrix> parts);
}  // namespace alem
