// CUDA matmul pieces that cuBLAS does not cover: a dequantising GEMM that reads int8 (with group
// scales), bf16, f16 or f32 weights in place with f32 activations and f32 accumulation (used for
// every int8 matmul and for small-M bf16/f16 matmuls), the f32 -> bf16/f16 activation conversion
// that precedes a cuBLAS bf16/f16 GEMM, and the bias add after a cuBLAS GEMM.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;  // one output column per warp
constexpr int kRowsPerWarp = 4;    // activation rows sharing each weight load

template <int kDtype>
__device__ __forceinline__ float load_weight(const void* w, const float* scales, int64_t n,
                                             int64_t k, int64_t K, int group) {
  const int64_t i = n * K + k;
  if constexpr (kDtype == 0) {
    return static_cast<const float*>(w)[i];
  } else if constexpr (kDtype == 1) {
    return __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(w)[i]) << 16);
  } else if constexpr (kDtype == 2) {
    return __half2float(__ushort_as_half(static_cast<const uint16_t*>(w)[i]));
  } else {
    const int64_t groups = K / group;
    return static_cast<float>(static_cast<const int8_t*>(w)[i]) * scales[n * groups + k / group];
  }
}

// grid (ceil(N / kWarpsPerBlock), ceil(M / kRowsPerWarp)); each warp computes
// y[m0 .. m0+kRowsPerWarp)[n], its lanes striding over K, then a shuffle reduction.
template <int kDtype>
__global__ void dequant_gemm_kernel(const float* __restrict__ x, int64_t M,
                                    const void* __restrict__ w, const float* __restrict__ scales,
                                    int64_t N, int64_t K, int group, const float* __restrict__ bias,
                                    float* __restrict__ y) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRowsPerWarp;
  if (n >= N) return;
  float acc[kRowsPerWarp] = {};
  for (int64_t k = lane; k < K; k += 32) {
    const float wv = load_weight<kDtype>(w, scales, n, k, K, group);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (m0 + r < M) acc[r] = fmaf(x[(m0 + r) * K + k], wv, acc[r]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    for (int offset = 16; offset > 0; offset /= 2) {
      acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
    }
  }
  if (lane == 0) {
    const float b = bias ? bias[n] : 0.f;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (m0 + r < M) y[(m0 + r) * N + n] = acc[r] + b;
    }
  }
}

__global__ void convert_kernel(const float* __restrict__ x, int64_t n, int dtype,
                               uint16_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = dtype == 1 ? __bfloat16_as_ushort(__float2bfloat16_rn(x[i]))
                        : __half_as_ushort(__float2half_rn(x[i]));
  }
}

__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ bias, int64_t M,
                                int64_t N) {
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += bias[i % N];
  }
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

}  // namespace

void launch_dequant_gemm(const float* x, int64_t M, const void* w, const float* scales, int dtype,
                         int64_t N, int64_t K, int group, const float* bias, float* y,
                         cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  const int64_t grid_x = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t grid_y = (M + kRowsPerWarp - 1) / kRowsPerWarp;
  ALEM_CHECK(grid_x < (int64_t{1} << 31) && grid_y <= 65535,
             "cuda matmul: shape too large for the dequantising kernel (M=" + std::to_string(M) +
                 ", N=" + std::to_string(N) + ")");
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  const dim3 block(kWarpsPerBlock * 32);
  switch (dtype) {
    case 0:
      dequant_gemm_kernel<0><<<grid, block, 0, stream>>>(x, M, w, scales, N, K, group, bias, y);
      break;
    case 1:
      dequant_gemm_kernel<1><<<grid, block, 0, stream>>>(x, M, w, scales, N, K, group, bias, y);
      break;
    case 2:
      dequant_gemm_kernel<2><<<grid, block, 0, stream>>>(x, M, w, scales, N, K, group, bias, y);
      break;
    case 3:
      dequant_gemm_kernel<3><<<grid, block, 0, stream>>>(x, M, w, scales, N, K, group, bias, y);
      break;
    default:
      ALEM_FAIL("cuda matmul: unknown weight dtype code " + std::to_string(dtype));
  }
  ALEM_CUDA_CHECK_LAUNCH("dequant_gemm");
}

void launch_convert_f32(const float* x, int64_t n, int dtype, uint16_t* out, cudaStream_t stream) {
  if (n <= 0) return;
  convert_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, dtype, out);
  ALEM_CUDA_CHECK_LAUNCH("convert_f32");
}

void launch_add_bias(float* y, const float* bias, int64_t M, int64_t N, cudaStream_t stream) {
  if (M <= 0 || N <= 0) return;
  add_bias_kernel<<<grid_for(M * N, 256), 256, 0, stream>>>(y, bias, M, N);
  ALEM_CUDA_CHECK_LAUNCH("add_bias");
}

}  // namespace alem::cuda
