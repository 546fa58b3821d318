// CUDA element-wise ops of the MLP and residual path: silu_mul (SwiGLU: silu(gate) * up over a
// fused [M][2I] gate_up tensor) and add_inplace (residual add). Grid-stride loops over elements.
#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

__global__ void silu_mul_kernel(const float* __restrict__ gate_up, int64_t M, int64_t I,
                                float* __restrict__ out) {
  const int64_t total = M * I;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < total;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = j / I, i = j % I;
    const float g = gate_up[m * 2 * I + i];
    const float u = gate_up[m * 2 * I + I + i];
    // g / (1 + e^-g); expf(-g) overflows to inf for g < -88, giving -0, the correct limit.
    out[j] = g / (1.f + expf(-g)) * u;
  }
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += x[i];
  }
}

}  // namespace

void launch_silu_mul(const float* gate_up, int64_t M, int64_t I, float* out, cudaStream_t stream) {
  if (M <= 0 || I <= 0) return;
  silu_mul_kernel<<<grid_for(M * I), kThreads, 0, stream>>>(gate_up, M, I, out);
  ALEM_CUDA_CHECK_LAUNCH("silu_mul");
}

void launch_add_inplace(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, n);
  ALEM_CUDA_CHECK_LAUNCH("add_inplace");
}

}  // namespace alem::cuda
