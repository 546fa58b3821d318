// StackedRows matmuls over the KernelBackend interface (stacked_matmul.h).
#include "kernels/stacked_matmul.h"

namespace alem {

void matmul_stacked(const KernelBackend& backend, const float* x, int64_t M, const StackedRows& w,
                    const float* bias, float* y, Tensor& scratch) {
  if (w.is_fused()) {
    backend.matmul(x, M, w.fused, bias, y);
    return;
  }
  const int64_t width = w.rows();
  const size_t f = sizeof(float);
  int64_t offset = 0;
  for (const WeightMatrix& part : w.parts) {
    scratch.reserve(backend, TensorType::kF32, M * part.rows);
    float* out = scratch.data<float>();
    backend.matmul(x, M, part, bias ? bias + offset : nullptr, out);
    backend.copy_2d(y + offset, width * f, out, part.rows * f, part.rows * f, M);
    offset += part.rows;
  }
}

void adopt_stacked(const KernelBackend& backend, StackedRows& w) {
  if (w.is_fused()) backend.adopt_weight(w.fused);
  for (WeightMatrix& part : w.parts) backend.adopt_weight(part);
}

}  // namespace alem
