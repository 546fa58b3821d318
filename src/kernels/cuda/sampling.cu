// CUDA greedy / top-k candidate selection over logits [rows][vocab], so only k values per row
// (not the whole vocabulary) leave the GPU. One thread block per row runs k selection rounds:
// round r finds the best (value, index) pair strictly worse than round r-1's, ordering by value
// descending then index ascending, so ties are deterministic and no mask is needed. NaN logits
// are never candidates; a row with fewer than k other logits pads with index -1 and value NaN.
// O(k * vocab) reads per row: fine for greedy and the small k of sampling, not for k ~ vocab.
// row_stats gives each row's max, sum of exp(x - max) (f64) and whether it holds NaN or +inf, for
// the sampler's statistics (engine/sampler.h) without copying the row.
#include "kernels/cuda/cuda_common.h"

namespace alem::cuda {
namespace {

constexpr int kThreads = 256;

// True when (av, ai) ranks strictly before (bv, bi). Index -1 means "none" and ranks last.
__device__ __forceinline__ bool better(float av, int ai, float bv, int bi) {
  if (ai < 0) return false;
  if (bi < 0) return true;
  return av > bv || (av == bv && ai < bi);
}

__device__ __forceinline__ void warp_best(float& v, int& i) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    const int oi = __shfl_xor_sync(0xffffffffu, i, offset);
    if (better(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

__global__ void top_k_kernel(const float* __restrict__ logits, int64_t vocab, int k,
                             float* __restrict__ values, int32_t* __restrict__ indices) {
  __shared__ float shared_v[32];
  __shared__ int shared_i[32];
  __shared__ float prev_v;
  __shared__ int prev_i;
  const float* row = logits + blockIdx.x * vocab;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  if (threadIdx.x == 0) prev_i = -1;
  __syncthreads();
  for (int r = 0; r < k; ++r) {
    const float pv = prev_v;
    const int pi = prev_i;
    float best_v = 0.f;
    int best_i = -1;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float v = row[j];
      if (isnan(v)) continue;
      const int idx = static_cast<int>(j);
      if (r > 0 && !better(pv, pi, v, idx)) continue;  // already taken (or no longer eligible)
      if (better(v, idx, best_v, best_i)) {
        best_v = v;
        best_i = idx;
      }
    }
    warp_best(best_v, best_i);
    if (lane == 0) {
      shared_v[warp] = best_v;
      shared_i[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
      best_v = lane < warps ? shared_v[lane] : 0.f;
      best_i = lane < warps ? shared_i[lane] : -1;
      warp_best(best_v, best_i);
      if (lane == 0) {
        values[static_cast<int64_t>(blockIdx.x) * k + r] = best_i < 0 ? NAN : best_v;
        indices[static_cast<int64_t>(blockIdx.x) * k + r] = best_i;
        prev_v = best_v;
        prev_i = best_i;
      }
    }
    __syncthreads();
    if (prev_i < 0) {  // nothing left: pad the remaining rounds
      for (int rr = r + 1 + threadIdx.x; rr < k; rr += blockDim.x) {
        values[static_cast<int64_t>(blockIdx.x) * k + rr] = NAN;
        indices[static_cast<int64_t>(blockIdx.x) * k + rr] = -1;
      }
      return;
    }
  }
}

// One block per row: max (ignoring NaN), then sum exp(x - max) in f64, and a NaN/+inf flag.
__global__ void row_stats_kernel(const float* __restrict__ logits, int64_t vocab,
                                 float* __restrict__ max_out, double* __restrict__ sum_out,
                                 int32_t* __restrict__ invalid_out) {
  __shared__ float shared_max[32];
  __shared__ double shared_sum[32];
  __shared__ int shared_bad[32];
  const float* row = logits + blockIdx.x * vocab;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  float m = -INFINITY;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float v = row[j];
    bad |= !(v < INFINITY);  // NaN or +inf
    if (!isnan(v)) m = fmaxf(m, v);
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    bad |= __shfl_xor_sync(0xffffffffu, bad, offset);
  }
  if (lane == 0) {
    shared_max[warp] = m;
    shared_bad[warp] = bad;
  }
  __syncthreads();
  m = -INFINITY;
  bad = 0;
  for (int w = 0; w < warps; ++w) {
    m = fmaxf(m, shared_max[w]);
    bad |= shared_bad[w];
  }
  double s = 0.0;
  if (m != -INFINITY) {
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float v = row[j];
      if (!isnan(v)) s += exp(static_cast<double>(v) - static_cast<double>(m));
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
  if (lane == 0) shared_sum[warp] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += shared_sum[w];
    max_out[blockIdx.x] = m;
    sum_out[blockIdx.x] = total;
    invalid_out[blockIdx.x] = bad;
  }
}

}  // namespace

void launch_row_stats(const float* logits, int64_t rows, int64_t vocab, float* max_logit,
                      double* sum_exp, int32_t* invalid, cudaStream_t stream) {
  if (rows <= 0) return;
  ALEM_CHECK(vocab > 0 && vocab < (int64_t{1} << 31), "cuda row_stats: vocabulary out of range");
  ALEM_CHECK(rows < (int64_t{1} << 31), "cuda row_stats: too many rows");
  row_stats_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, max_logit,
                                                                         sum_exp, invalid);
  ALEM_CUDA_CHECK_LAUNCH("row_stats");
}

void launch_top_k(const float* logits, int64_t rows, int64_t vocab, int k, float* values,
                  int32_t* indices, cudaStream_t stream) {
  if (rows <= 0 || k <= 0) return;
  ALEM_CHECK(vocab > 0 && vocab < (int64_t{1} << 31), "cuda top_k: vocabulary size out of range");
  ALEM_CHECK(rows < (int64_t{1} << 31), "cuda top_k: too many rows");
  top_k_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, k, values,
                                                                     indices);
  ALEM_CUDA_CHECK_LAUNCH("top_k");
}

}  // namespace alem::cuda
