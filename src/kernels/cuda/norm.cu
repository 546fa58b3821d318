// CUDA rmsnorm: y = x / sqrt(mean(x^2) + eps) * gamma, one thread block per row, sum of squares
// accumulated in f32 per thread and reduced across the block. y may alias x: every element is
// read and later written by the same thread. add_rmsnorm fuses the residual add before it
// (x += residual, then y = rmsnorm(x)): one pass over x instead of two kernels.
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_kernel(const float* x, const float* __restrict__ gamma, int64_t D,
                               float eps, float* y) {
  __shared__ float shared[32];
  const float* x_row = x + blockIdx.x * D;
  float* y_row = y + blockIdx.x * D;
  float sum = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) sum = fmaf(x_row[d], x_row[d], sum);
  sum = block_sum(sum, shared);
  const float inv_rms = rsqrtf(sum / static_cast<float>(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) y_row[d] = x_row[d] * inv_rms * gamma[d];
}

// x[row] += residual[row] (written back), then y[row] = rmsnorm(x[row]) * gamma. Each thread
// keeps the sums it wrote, so x is read once.
__global__ void add_rmsnorm_kernel(float* x, const float* __restrict__ residual,
                                   const float* __restrict__ gamma, int64_t D, float eps,
                                   float* y) {
  __shared__ float shared[32];
  float* x_row = x + blockIdx.x * D;
  const float* r_row = residual + blockIdx.x * D;
  float* y_row = y + blockIdx.x * D;
  float sum = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = x_row[d] + r_row[d];
    x_row[d] = v;
    sum = fmaf(v, v, sum);
  }
  sum = block_sum(sum, shared);
  const float inv_rms = rsqrtf(sum / static_cast<float>(D) + eps);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) y_row[d] = x_row[d] * inv_rms * gamma[d];
}

}  // namespace

void launch_add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M, int64_t D,
                        float eps, float* y, cudaStream_t stream) {
  if (M <= 0 || D <= 0) return;
  ALEM_CHECK(M < (int64_t{1} << 31), "cuda add_rmsnorm: too many rows");
  add_rmsnorm_kernel<<<static_cast<unsigned>(M), kThreads, 0, stream>>>(x, residual, gamma, D, eps,
                                                                        y);
  ALEM_CUDA_CHECK_LAUNCH("add_rmsnorm");
}

void launch_rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps, float* y,
                    cudaStream_t stream) {
  if (M <= 0 || D <= 0) return;
  ALEM_CHECK(M < (int64_t{1} << 31), "cuda rmsnorm: too many rows");
  rmsnorm_kernel<<<static_cast<unsigned>(M), kThreads, 0, stream>>>(x, gamma, D, eps, y);
  ALEM_CUDA_CHECK_LAUNCH("rmsnorm");
}

}  // namespace alem::cuda
