// ggml block types alem has no kernels for, kept in a type of its own that holds every one of
// their values exactly, instead of expanded to bf16 on import: Q3_K as Q6_K (its 3-bit values and
// 6-bit scales per 16 values fit Q6_K's 6-bit values and int8 scales per 16). The carrier's dequantisation gives the same f32 values as
// ggml's of the original, bit for bit, and the engine runs it on that type's kernels.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "model/weights.h"

namespace alem {

// True and the carrier type for Q3_K (Q6_K); false for
// other types (Q2_K has an offset per 16 values that no alem type holds).
bool ggml_exact_carrier(uint32_t type_id, DType* carrier);

// rows x cols values of ggml type `type_id` (row-major, `bytes` = ggml_bytes_for(type, rows *
// cols)) as a matrix of its carrier type, value for value. Throws alem::Error for a type without
// a carrier or a size mismatch.
WeightMatrix transcode_ggml(uint32_t type_id, const uint8_t* src, size_t bytes, int64_t rows,
                            int64_t cols);

}  // namespace alem
