// Shared pieces of the CUDA backend's sources: the error-check macro that turns a CUDA or cuBLAS
// status into alem::Error with the CUDA error string, and the host-side launchers each .cu file
// defines. Launchers take device pointers and a stream, enqueue work and check the launch; they
// never synchronise (CudaBackend does that once per op).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"

#define ALEM_CUDA_CHECK(expr)                                                                      \
  do {                                                                                             \
    const cudaError_t alem_cuda_status = (expr);                                                   \
    if (alem_cuda_status != cudaSuccess) {                                                         \
      ALEM_FAIL(std::string("CUDA error in ") + #expr + ": " +                                     \
                cudaGetErrorName(alem_cuda_status) + ": " + cudaGetErrorString(alem_cuda_status)); \
    }                                                                                              \
  } while (0)

// After a kernel launch: reports (and clears) a bad launch configuration immediately.
#define ALEM_CUDA_CHECK_LAUNCH(what)                                                               \
  do {                                                                                             \
    const cudaError_t alem_cuda_status = cudaGetLastError();                                       \
    if (alem_cuda_status != cudaSuccess) {                                                         \
      ALEM_FAIL(std::string("CUDA error launching ") + (what) + ": " +                             \
                cudaGetErrorName(alem_cuda_status) + ": " + cudaGetErrorString(alem_cuda_status)); \
    }                                                                                              \
  } while (0)

namespace alem::cuda {

// Error codes kernels write into the backend's device error flag.
enum KernelError : int { kErrNone = 0, kErrRopePosition = 1 };

// Per query row of an attention step: where its block table is (device), which row of q/out
// (or k/v) it is, and its absolute position (it attends over positions [0, pos]).
struct RowInfo {
  const int32_t* block_table;
  int32_t row;
  int32_t pos;
};

// Largest head_dim the attention kernel handles (8 accumulators per lane of a warp).
constexpr int kMaxHeadDim = 256;

// --- matmul.cu ---
// y[M][N] = x[M][K] * W^T (+ bias[N] when non-null) reading W [N][K] in place: dtype 0 f32,
// 1 bf16, 2 f16, 3 int8 with `scales` [N][K/group]; f32 activations and accumulation.
void launch_dequant_gemm(const float* x, int64_t M, const void* w, const float* scales, int dtype,
                         int64_t N, int64_t K, int group, const float* bias, float* y,
                         cudaStream_t stream);
// out[i] = x[i] rounded to bf16 (dtype 1) or f16 (dtype 2), before a cuBLAS bf16/f16 GEMM.
void launch_convert_f32(const float* x, int64_t n, int dtype, uint16_t* out, cudaStream_t stream);
void launch_add_bias(float* y, const float* bias, int64_t M, int64_t N, cudaStream_t stream);

// --- norm.cu ---
void launch_rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps, float* y,
                    cudaStream_t stream);
void launch_add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M, int64_t D,
                        float eps, float* y, cudaStream_t stream);

// --- rope.cu ---
void launch_rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                 const float* cos, const float* sin, int max_positions, int* error_flag,
                 cudaStream_t stream);

// --- elementwise.cu ---
void launch_silu_mul(const float* gate_up, int64_t M, int64_t I, float* out, cudaStream_t stream);
void launch_add_inplace(float* y, const float* x, int64_t n, cudaStream_t stream);

// --- embedding.cu ---
void launch_embedding(const void* table, const float* scales, int dtype, int64_t rows, int64_t cols,
                      int group, int64_t row_begin, const int32_t* tokens, int64_t T, float* out,
                      cudaStream_t stream);

// --- attention.cu ---
// The cache holds f32, or bf16 when cache_bf16 (stored rounded to nearest even, read widened).
void launch_kv_cache_write(const RowInfo* rows, int64_t num_rows, int num_kv_heads, int head_dim,
                           int block_size, const float* k, const float* v, void* k_cache,
                           void* v_cache, bool cache_bf16, cudaStream_t stream);
// Flash-decoding split-K: with few (row, head) blocks and a long context the keys are split into
// up to kMaxAttentionSplits ranges of at least kKeysPerSplitMin keys, each its own thread block,
// and a second kernel merges the ranges' softmax states. attention_splits picks the count from
// the rows, heads, longest context (max position + 1) and the GPU's SM count;
// attention_partial_bytes is the device scratch `partials` must hold for it (0 for one split).
constexpr int kMaxAttentionSplits = 64;
constexpr int64_t kKeysPerSplitMin = 256;
int attention_splits(int64_t num_rows, int num_heads, int64_t max_context, int sm_count);
size_t attention_partial_bytes(int64_t num_rows, int num_heads, int head_dim, int splits);
void launch_paged_attention(const RowInfo* rows, int64_t num_rows, int num_heads, int num_kv_heads,
                            int head_dim, int block_size, float scale, const float* q,
                            const void* k_cache, const void* v_cache, bool cache_bf16, float* out,
                            int64_t max_context, int splits, float* partials, cudaStream_t stream);

// --- sampling.cu ---
// values/indices [rows][k] on the device; k == 1 is greedy argmax.
void launch_top_k(const float* logits, int64_t rows, int64_t vocab, int k, float* values,
                  int32_t* indices, cudaStream_t stream);
// Per row: max_logit (over non-NaN logits; -inf when none), sum_exp = sum exp(x - max) in f64
// (0 when max is -inf), invalid = 1 when the row holds NaN or +inf. All device pointers.
void launch_row_stats(const float* logits, int64_t rows, int64_t vocab, float* max_logit,
                      double* sum_exp, int32_t* invalid, cudaStream_t stream);

}  // namespace alem::cuda
