// CUDA rotary embedding, HF "rotate_half" convention, in place on x[T][num_heads * head_dim].
// The cos/sin table lives in device memory (CudaBackend uploads a RopeTable once). A position
// outside the table sets the backend's device error flag (the op then throws) and leaves the
// row untouched, matching the reference backend's rejection.
#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

// grid T; threads stride over (head, i) pairs, i < half.
__global__ void rope_kernel(float* __restrict__ x, int num_heads, int head_dim,
                            const int32_t* __restrict__ positions, const float* __restrict__ cos,
                            const float* __restrict__ sin, int max_positions, int* error_flag) {
  const int64_t t = blockIdx.x;
  const int32_t p = positions[t];
  if (p < 0 || p >= max_positions) {
    if (threadIdx.x == 0) atomicExch(error_flag, kErrRopePosition);
    return;
  }
  const int half = head_dim / 2;
  const float* cos_row = cos + static_cast<int64_t>(p) * half;
  const float* sin_row = sin + static_cast<int64_t>(p) * half;
  for (int j = threadIdx.x; j < num_heads * half; j += blockDim.x) {
    const int h = j / half, i = j % half;
    float* head = x + (t * num_heads + h) * head_dim;
    const float a = head[i], b = head[i + half];
    const float c = cos_row[i], s = sin_row[i];
    head[i] = a * c - b * s;
    head[i + half] = b * c + a * s;
  }
}

}  // namespace

void launch_rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                 const float* cos, const float* sin, int max_positions, int* error_flag,
                 cudaStream_t stream) {
  if (T <= 0 || num_heads <= 0) return;
  ALEM_CHECK(T < (int64_t{1} << 31), "cuda rope: too many rows");
  rope_kernel<<<static_cast<unsigned>(T), 256, 0, stream>>>(x, num_heads, head_dim, positions, cos,
                                                            sin, max_positions, error_flag);
  ALEM_CUDA_CHECK_LAUNCH("rope");
}

}  // namespace alem::cuda
