// CUDA paged attention over the block-table KV cache: kv_cache_write scatters this step's keys
// and values into their cache slots, and paged_attention runs causal grouped-query attention,
// one thread block per (query row, head). The block's warps split the keys of the context
// between them, each keeping an online softmax (running max, denominator and rescaled f32
// accumulator) while walking the block table; the warps' partial states are merged at the end.
// Cache layout: [num_blocks][block_size][num_kv_heads][head_dim] of f32 or bf16 (see
// kernels/backend.h); bf16 is kept as raw uint16 bits, rounded to nearest even on store exactly
// as the host's f32_to_bf16, so every backend writes the same cache bytes.
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

constexpr int kAttnWarps = 4;
constexpr int kAccPerLane = kMaxHeadDim / 32;

__device__ __forceinline__ int64_t cache_offset(const int32_t* table, int64_t pos, int block_size,
                                                int num_kv_heads, int kvh, int head_dim) {
  const int64_t block = table[pos / block_size];
  const int64_t slot = pos % block_size;
  return ((block * block_size + slot) * num_kv_heads + kvh) * head_dim;
}

__device__ __forceinline__ float kv_load(const float* p, int64_t i) {
  return p[i];
}
__device__ __forceinline__ float kv_load(const uint16_t* p, int64_t i) {
  return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
}
__device__ __forceinline__ void kv_store(float* p, int64_t i, float x) {
  p[i] = x;
}
__device__ __forceinline__ void kv_store(uint16_t* p, int64_t i, float x) {
  const uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN
    p[i] = static_cast<uint16_t>((bits >> 16) | 0x40);
    return;
  }
  p[i] = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// grid num_rows; threads stride over num_kv_heads * head_dim.
template <typename KV>
__global__ void kv_cache_write_kernel(const RowInfo* __restrict__ rows, int num_kv_heads,
                                      int head_dim, int block_size, const float* __restrict__ k,
                                      const float* __restrict__ v, KV* __restrict__ k_cache,
                                      KV* __restrict__ v_cache) {
  const RowInfo info = rows[blockIdx.x];
  const int width = num_kv_heads * head_dim;
  for (int j = threadIdx.x; j < width; j += blockDim.x) {
    const int h = j / head_dim, d = j % head_dim;
    const int64_t dst =
        cache_offset(info.block_table, info.pos, block_size, num_kv_heads, h, head_dim) + d;
    const int64_t src = static_cast<int64_t>(info.row) * width + j;
    kv_store(k_cache, dst, k[src]);
    kv_store(v_cache, dst, v[src]);
  }
}

// grid (num_rows, num_heads), kAttnWarps warps. Dynamic shared memory:
// q[head_dim], then per warp: max, denominator, acc[head_dim].
template <typename KV>
__global__ void paged_attention_kernel(const RowInfo* __restrict__ rows, int num_heads,
                                       int num_kv_heads, int head_dim, int block_size, float scale,
                                       const float* __restrict__ q, const KV* __restrict__ k_cache,
                                       const KV* __restrict__ v_cache, float* __restrict__ out) {
  extern __shared__ float smem[];
  float* q_s = smem;
  float* warp_max = q_s + head_dim;
  float* warp_den = warp_max + kAttnWarps;
  float* warp_acc = warp_den + kAttnWarps;  // [kAttnWarps][head_dim]

  const RowInfo info = rows[blockIdx.x];
  const int h = blockIdx.y;
  const int kvh = h / (num_heads / num_kv_heads);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row_width = static_cast<int64_t>(num_heads) * head_dim;
  const float* q_head =
      q + static_cast<int64_t>(info.row) * row_width + static_cast<int64_t>(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) q_s[d] = q_head[d];
  __syncthreads();

  float running_max = -INFINITY, den = 0.f;
  float acc[kAccPerLane];
#pragma unroll
  for (int j = 0; j < kAccPerLane; ++j) acc[j] = 0.f;

  for (int64_t t = warp; t <= info.pos; t += kAttnWarps) {
    const int64_t off = cache_offset(info.block_table, t, block_size, num_kv_heads, kvh, head_dim);
    const KV* k_vec = k_cache + off;
    float dot = 0.f;
    for (int d = lane; d < head_dim; d += 32) dot = fmaf(q_s[d], kv_load(k_vec, d), dot);
    const float score = warp_sum(dot) * scale;
    const float new_max = fmaxf(running_max, score);
    const float correction = expf(running_max - new_max);  // 0 for the first key
    const float p = expf(score - new_max);
    den = den * correction + p;
    const KV* v_vec = v_cache + off;
#pragma unroll
    for (int j = 0; j < kAccPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < head_dim) acc[j] = fmaf(p, kv_load(v_vec, d), acc[j] * correction);
    }
    running_max = new_max;
  }

  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_den[warp] = den;
  }
#pragma unroll
  for (int j = 0; j < kAccPerLane; ++j) {
    const int d = lane + 32 * j;
    if (d < head_dim) warp_acc[warp * head_dim + d] = acc[j];
  }
  __syncthreads();

  // Merge: warps that saw no key have max -inf and weight exp(-inf) = 0; warp 0 always saw key 0.
  float global_max = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) global_max = fmaxf(global_max, warp_max[w]);
  float total_den = 0.f;
  for (int w = 0; w < kAttnWarps; ++w) total_den += warp_den[w] * expf(warp_max[w] - global_max);
  float* out_head =
      out + static_cast<int64_t>(info.row) * row_width + static_cast<int64_t>(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kAttnWarps; ++w) {
      num += warp_acc[w * head_dim + d] * expf(warp_max[w] - global_max);
    }
    out_head[d] = num / total_den;
  }
}

}  // namespace

void launch_kv_cache_write(const RowInfo* rows, int64_t num_rows, int num_kv_heads, int head_dim,
                           int block_size, const float* k, const float* v, void* k_cache,
                           void* v_cache, bool cache_bf16, cudaStream_t stream) {
  if (num_rows <= 0) return;
  ALEM_CHECK(num_rows < (int64_t{1} << 31), "cuda kv_cache_write: too many rows");
  const unsigned grid = static_cast<unsigned>(num_rows);
  if (cache_bf16) {
    kv_cache_write_kernel<uint16_t><<<grid, 256, 0, stream>>>(
        rows, num_kv_heads, head_dim, block_size, k, v, static_cast<uint16_t*>(k_cache),
        static_cast<uint16_t*>(v_cache));
  } else {
    kv_cache_write_kernel<float><<<grid, 256, 0, stream>>>(rows, num_kv_heads, head_dim, block_size,
                                                           k, v, static_cast<float*>(k_cache),
                                                           static_cast<float*>(v_cache));
  }
  ALEM_CUDA_CHECK_LAUNCH("kv_cache_write");
}

void launch_paged_attention(const RowInfo* rows, int64_t num_rows, int num_heads, int num_kv_heads,
                            int head_dim, int block_size, float scale, const float* q,
                            const void* k_cache, const void* v_cache, bool cache_bf16, float* out,
                            cudaStream_t stream) {
  if (num_rows <= 0 || num_heads <= 0) return;
  ALEM_CHECK(head_dim > 0 && head_dim <= kMaxHeadDim, "cuda paged_attention: head_dim " +
                                                          std::to_string(head_dim) + " not in 1.." +
                                                          std::to_string(kMaxHeadDim));
  ALEM_CHECK(num_rows < (int64_t{1} << 31) && num_heads <= 65535,
             "cuda paged_attention: grid too large");
  const size_t shared = sizeof(float) * (static_cast<size_t>(head_dim) + 2 * kAttnWarps +
                                         static_cast<size_t>(kAttnWarps) * head_dim);
  const dim3 grid(static_cast<unsigned>(num_rows), static_cast<unsigned>(num_heads));
  if (cache_bf16) {
    paged_attention_kernel<uint16_t><<<grid, kAttnWarps * 32, shared, stream>>>(
        rows, num_heads, num_kv_heads, head_dim, block_size, scale, q,
        static_cast<const uint16_t*>(k_cache), static_cast<const uint16_t*>(v_cache), out);
  } else {
    paged_attention_kernel<float><<<grid, kAttnWarps * 32, shared, stream>>>(
        rows, num_heads, num_kv_heads, head_dim, block_size, scale, q,
        static_cast<const float*>(k_cache), static_cast<const float*>(v_cache), out);
  }
  ALEM_CUDA_CHECK_LAUNCH("paged_attention");
}

}  // namespace alem::cuda
