// Matmuls against StackedRows (model/weights.h): matrices the engine multiplies as one (q/k/v,
// gate/up), stacked into one matrix where they share a dtype, kept as parts where a GGUF
// mixture stores them in different types (a Q4_K_M file's Q6_K v beside Q4_K q and k). Written
// once over the KernelBackend interface, so every backend runs both forms.
#pragma once

#include <cstdint>

#include "kernels/tensor.h"
#include "model/weights.h"

namespace alem {

// y[M][w.rows()] = x[M][K] * (the stacked rows)^T (+ bias[w.rows()] when bias != nullptr): one
// matmul when fused; otherwise one per part into `scratch` (grown as needed, in the backend's
// memory) and copied into that part's columns of y.
void matmul_stacked(const KernelBackend& backend, const float* x, int64_t M, const StackedRows& w,
                    const float* bias, float* y, Tensor& scratch);

// Hands every matrix of `w` to the backend (KernelBackend::adopt_weight).
void adopt_stacked(const KernelBackend& backend, StackedRows& w);

}  // namespace alem
