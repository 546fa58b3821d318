// CUDA vocab-parallel embedding lookup: out[t] = table[tokens[t] - row_begin] dequantised to f32
// (f32, bf16, f16, or int8 with group scales), or a zero row when the token belongs to another
// rank's slice of the vocabulary (the ranks' outputs are then summed).
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

// grid T; threads stride over the D columns.
__global__ void embedding_kernel(const void* __restrict__ table, const float* __restrict__ scales,
                                 int dtype, int64_t rows, int64_t cols, int group,
                                 int64_t row_begin, const int32_t* __restrict__ tokens,
                                 float* __restrict__ out) {
  const int64_t t = blockIdx.x;
  const int64_t local = static_cast<int64_t>(tokens[t]) - row_begin;
  float* out_row = out + t * cols;
  if (local < 0 || local >= rows) {
    for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) out_row[d] = 0.f;
    return;
  }
  const int64_t base = local * cols;
  for (int64_t d = threadIdx.x; d < cols; d += blockDim.x) {
    float v;
    switch (dtype) {
      case 0:
        v = static_cast<const float*>(table)[base + d];
        break;
      case 1:
        v = __uint_as_float(static_cast<uint32_t>(static_cast<const uint16_t*>(table)[base + d])
                            << 16);
        break;
      case 2:
        v = __half2float(__ushort_as_half(static_cast<const uint16_t*>(table)[base + d]));
        break;
      default:
        v = static_cast<float>(static_cast<const int8_t*>(table)[base + d]) *
            scales[local * (cols / group) + d / group];
        break;
    }
    out_row[d] = v;
  }
}

}  // namespace

void launch_embedding(const void* table, const float* scales, int dtype, int64_t rows, int64_t cols,
                      int group, int64_t row_begin, const int32_t* tokens, int64_t T, float* out,
                      cudaStream_t stream) {
  if (T <= 0 || cols <= 0) return;
  ALEM_CHECK(T < (int64_t{1} << 31), "cuda embedding: too many tokens");
  embedding_kernel<<<static_cast<unsigned>(T), 256, 0, stream>>>(table, scales, dtype, rows, cols,
                                                                 group, row_begin, tokens, out);
  ALEM_CUDA_CHECK_LAUNCH("embedding");
}

}  // namespace alem::cuda
