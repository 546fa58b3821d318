// CUDA paged attention over the block-table KV cache: kv_cache_write scatters this step's keys
// and values into their cache slots, and paged_attention runs causal grouped-query attention,
// one thread block per (query row, head, key split). The block's warps split the keys of its
// range between them, each keeping an online softmax (running max, denominator and rescaled f32
// accumulator) while walking the block table on the device; the warps' states are merged at the
// end. With one split the block writes the output; with several (flash-decoding split-K, for
// long contexts with few rows) each block writes its partial state and a second kernel merges
// the splits of each (row, head).
// Cache layout: [num_blocks][block_size][num_kv_heads][head_dim] of f32 or bf16 (see
// kernels/backend.h); bf16 is kept as raw uint16 bits, rounded to nearest even on store exactly
// as the host's f32_to_bf16, so every backend writes the same cache bytes.
#include <algorithm>

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

// grid (num_rows, num_heads, splits), kAttnWarps warps. Block z covers keys
// [z * keys_per_split, min((z + 1) * keys_per_split, pos + 1)). splits == 1: writes out;
// otherwise writes its (max, denominator, acc[head_dim]) to the partial arrays at
// ((row index * num_heads + h) * splits + z). Dynamic shared memory:
// q[head_dim], then per warp: max, denominator, acc[head_dim].
template <typename KV>
__global__ void paged_attention_kernel(const RowInfo* __restrict__ rows, int num_heads,
                                       int num_kv_heads, int head_dim, int block_size, float scale,
                                       const float* __restrict__ q, const KV* __restrict__ k_cache,
                                       const KV* __restrict__ v_cache, float* __restrict__ out,
                                       int64_t keys_per_split, float* __restrict__ part_max,
                                       float* __restrict__ part_den, float* __restrict__ part_acc) {
  extern __shared__ float smem[];
  float* q_s = smem;
  float* warp_max = q_s + head_dim;
  float* warp_den = warp_max + kAttnWarps;
  float* warp_acc = warp_den + kAttnWarps;  // [kAttnWarps][head_dim]

  const RowInfo info = rows[blockIdx.x];
  const int h = blockIdx.y;
  const int splits = gridDim.z;
  const int64_t key_begin = static_cast<int64_t>(blockIdx.z) * keys_per_split;
  const int64_t key_end = min(key_begin + keys_per_split, static_cast<int64_t>(info.pos) + 1);
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

  for (int64_t t = key_begin + warp; t < key_end; t += kAttnWarps) {
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

  // Merge the warps: a warp that saw no key has max -inf and weight 0. When no warp saw a key
  // (an empty split) the block's max is -inf and it contributes nothing to the split merge.
  float block_max = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) block_max = fmaxf(block_max, warp_max[w]);
  float weight[kAttnWarps];
  float total_den = 0.f;
  for (int w = 0; w < kAttnWarps; ++w) {
    weight[w] = block_max == -INFINITY ? 0.f : expf(warp_max[w] - block_max);
    total_den += warp_den[w] * weight[w];
  }
  if (splits == 1) {
    float* out_head =
        out + static_cast<int64_t>(info.row) * row_width + static_cast<int64_t>(h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      float num = 0.f;
      for (int w = 0; w < kAttnWarps; ++w) num += warp_acc[w * head_dim + d] * weight[w];
      out_head[d] = num / total_den;
    }
    return;
  }
  const int64_t part = (static_cast<int64_t>(blockIdx.x) * num_heads + h) * splits +
                       static_cast<int64_t>(blockIdx.z);
  if (threadIdx.x == 0) {
    part_max[part] = block_max;
    part_den[part] = total_den;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kAttnWarps; ++w) num += warp_acc[w * head_dim + d] * weight[w];
    part_acc[part * head_dim + d] = num;
  }
}

// grid (num_rows, num_heads); merges the splits' partial states of each (row, head) into out.
// Split 0 always holds key 0, so the global max is finite whenever the scores are.
__global__ void merge_splits_kernel(const RowInfo* __restrict__ rows, int num_heads, int head_dim,
                                    int splits, const float* __restrict__ part_max,
                                    const float* __restrict__ part_den,
                                    const float* __restrict__ part_acc, float* __restrict__ out) {
  const RowInfo info = rows[blockIdx.x];
  const int h = blockIdx.y;
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * num_heads + h) * splits;
  float global_max = -INFINITY;
  for (int z = 0; z < splits; ++z) global_max = fmaxf(global_max, part_max[first + z]);
  float total_den = 0.f;
  for (int z = 0; z < splits; ++z) {
    const float m = part_max[first + z];
    if (m != -INFINITY) total_den += part_den[first + z] * expf(m - global_max);
  }
  const int64_t row_width = static_cast<int64_t>(num_heads) * head_dim;
  float* out_head =
      out + static_cast<int64_t>(info.row) * row_width + static_cast<int64_t>(h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float num = 0.f;
    for (int z = 0; z < splits; ++z) {
      const float m = part_max[first + z];
      if (m != -INFINITY) num += part_acc[(first + z) * head_dim + d] * expf(m - global_max);
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

int attention_splits(int64_t num_rows, int num_heads, int64_t max_context, int sm_count) {
  const int64_t blocks = num_rows * num_heads;
  const int64_t wanted_blocks = 2 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  if (blocks >= wanted_blocks || max_context < 2 * kKeysPerSplitMin) return 1;
  const int64_t by_length = max_context / kKeysPerSplitMin;
  const int64_t by_occupancy = (wanted_blocks + blocks - 1) / blocks;
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({by_length, by_occupancy, static_cast<int64_t>(kMaxAttentionSplits)})));
}

size_t attention_partial_bytes(int64_t num_rows, int num_heads, int head_dim, int splits) {
  if (splits <= 1) return 0;
  const size_t parts = static_cast<size_t>(num_rows) * num_heads * splits;
  return parts * sizeof(float) * (2 + static_cast<size_t>(head_dim));
}

void launch_paged_attention(const RowInfo* rows, int64_t num_rows, int num_heads, int num_kv_heads,
                            int head_dim, int block_size, float scale, const float* q,
                            const void* k_cache, const void* v_cache, bool cache_bf16, float* out,
                            int64_t max_context, int splits, float* partials, cudaStream_t stream) {
  if (num_rows <= 0 || num_heads <= 0) return;
  ALEM_CHECK(head_dim > 0 && head_dim <= kMaxHeadDim, "cuda paged_attention: head_dim " +
                                                          std::to_string(head_dim) + " not in 1.." +
                                                          std::to_string(kMaxHeadDim));
  ALEM_CHECK(num_rows < (int64_t{1} << 31) && num_heads <= 65535,
             "cuda paged_attention: grid too large");
  ALEM_CHECK(splits >= 1 && splits <= kMaxAttentionSplits && (splits == 1 || partials),
             "cuda paged_attention: bad split count " + std::to_string(splits));
  const size_t shared = sizeof(float) * (static_cast<size_t>(head_dim) + 2 * kAttnWarps +
                                         static_cast<size_t>(kAttnWarps) * head_dim);
  const int64_t keys_per_split =
      splits == 1 ? std::max<int64_t>(max_context, 1) : (max_context + splits - 1) / splits;
  const size_t parts = static_cast<size_t>(num_rows) * num_heads * splits;
  float* part_max = splits == 1 ? nullptr : partials;
  float* part_den = splits == 1 ? nullptr : partials + parts;
  float* part_acc = splits == 1 ? nullptr : partials + 2 * parts;
  const dim3 grid(static_cast<unsigned>(num_rows), static_cast<unsigned>(num_heads),
                  static_cast<unsigned>(splits));
  if (cache_bf16) {
    paged_attention_kernel<uint16_t><<<grid, kAttnWarps * 32, shared, stream>>>(
        rows, num_heads, num_kv_heads, head_dim, block_size, scale, q,
        static_cast<const uint16_t*>(k_cache), static_cast<const uint16_t*>(v_cache), out,
        keys_per_split, part_max, part_den, part_acc);
  } else {
    paged_attention_kernel<float><<<grid, kAttnWarps * 32, shared, stream>>>(
        rows, num_heads, num_kv_heads, head_dim, block_size, scale, q,
        static_cast<const float*>(k_cache), static_cast<const float*>(v_cache), out, keys_per_split,
        part_max, part_den, part_acc);
  }
  ALEM_CUDA_CHECK_LAUNCH("paged_attention");
  if (splits == 1) return;
  const dim3 merge_grid(static_cast<unsigned>(num_rows), static_cast<unsigned>(num_heads));
  merge_splits_kernel<<<merge_grid, 128, 0, stream>>>(rows, num_heads, head_dim, splits, part_max,
                                                      part_den, part_acc, out);
  ALEM_CUDA_CHECK_LAUNCH("paged_attention merge_splits");
}

}  // namespace alem::cuda
