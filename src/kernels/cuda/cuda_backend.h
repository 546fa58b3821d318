// The CUDA kernel backend: every KernelBackend op on one GPU, plus device memory helpers and a
// greedy/top-k sampling kernel. Declared here without any CUDA header, so the backend registry
// (kernels/backend.cc) and tests can name it; it is defined by the CUDA sources and only exists
// in builds where ALEM_HAVE_CUDA is set.
//
// Memory spaces. Activations, bias, gamma, the KV cache and outputs are device pointers, from
// allocate_buffer() (kernels/tensor.h's Tensor uses it); kSensitive buffers are zeroed on the
// device before cudaFree.
// WeightMatrix and RopeTable hold host memory: the backend copies each one to the device on first
// use (or explicitly via prepare()) and keeps the copy, keyed by the host data pointer. Small
// int32 metadata (positions, tokens, block tables) may be host or device pointers; host ones are
// copied per call. The AttentionSequence array itself is always host memory.
// Every op runs on the backend's own stream and synchronises before returning (correctness
// first; see docs/gpu.md, "The CUDA kernel backend").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kernels/backend.h"

struct CUstream_st;
struct cublasContext;

namespace alem {
namespace cuda {
class LtGemm;  // kernels/cuda/gemm_lt.h
}

// Number of usable CUDA devices; 0 (never an exception) when there is no GPU or no driver.
int cuda_device_count();

class CudaBackend final : public KernelBackend {
 public:
  // Uses `device` (cudaSetDevice before every call, so one process may drive several GPUs).
  explicit CudaBackend(int device = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }
  void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
              float* y) const override;
  void rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
               float* y) const override;
  // Fused on the GPU: one kernel per call (norm.cu).
  void add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M, int64_t D,
                   float eps, float* y) const override;
  void rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
            const RopeTable& table) const override;
  void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const override;
  void add_inplace(float* y, const float* x, int64_t n) const override;
  void kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                      const float* k, const float* v, KVCacheLayerView cache) const override;
  void paged_attention(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                       const float* q, KVCacheLayerView cache, float* out) const override;
  void embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens, int64_t T,
                 float* out) const override;
  // Uploads w into device memory owned by w (WeightMatrix::backend_copy, freed with it) and
  // releases w's host bytes; later ops read the device copy.
  void adopt_weight(WeightMatrix& w) const override;
  // Top-k (the selection kernel of top_k below) and row statistics on the device; only
  // rows * (k + 3) numbers are copied to the host.
  void sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                           SamplingCandidates& out) const override;

  // Device memory (KernelBackend's memory interface, all in device space).
  MemorySpace memory_space() const override { return MemorySpace::kDevice; }
  std::unique_ptr<BackendBuffer> allocate_buffer(size_t bytes, BufferKind kind) const override;
  void upload(void* dst_device, const void* src_host, size_t bytes) const override;
  void download(void* dst_host, const void* src_device, size_t bytes) const override;
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) const override;
  void wipe(void* dst, size_t bytes) const override;
  // Raw device memory: allocate() returns zeroed memory aligned to 256 bytes; free(nullptr) is a
  // no-op. Prefer allocate_buffer(), which frees itself.
  void* allocate(size_t bytes) const;
  void free(void* device_ptr) const;

  // Copies a weight matrix (and its int8 scales) to the device now instead of on first use.
  void prepare(const WeightMatrix& w) const;
  // Drops the device copy of w (call before destroying or refilling a prepared matrix).
  void evict(const WeightMatrix& w) const;
  // Bytes of device memory held by weight and rope-table copies.
  size_t prepared_bytes() const;

  // Greedy sampling: tokens[r] = argmax over logits[r][0:vocab] (lowest index on ties; NaN is
  // never chosen, an all-NaN row gives -1). logits is a device pointer; tokens is host memory.
  void argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens) const;
  // Top-k: values/indices [rows][k] host memory (values may be null), best first, ties to the
  // lower index; rows with fewer than k non-NaN logits pad with -1 / NaN. k <= min(vocab, 1024).
  void top_k(const float* logits, int64_t rows, int64_t vocab, int k, float* values,
             int32_t* indices) const;

  int device() const { return device_; }

  // Which library runs the bf16/f16 GEMMs of more than 8 rows: cuBLASLt (the default, bias in
  // its epilogue) or cublasGemmEx (the fallback, also taken for a shape cuBLASLt has no
  // algorithm for, or when cuBLASLt could not start). For tests and benchmarks.
  enum class GemmLibrary : uint8_t { kCublasLt = 0, kCublas = 1 };
  void set_gemm_library(GemmLibrary library);
  // GEMMs run by cuBLASLt, and by the cublasGemmEx fallback, since construction.
  uint64_t cublaslt_gemms() const;
  uint64_t fallback_gemms() const;

 private:
  struct DeviceWeight {
    void* data = nullptr;
    float* scales = nullptr;
    int64_t rows = 0, cols = 0;
    DType dtype = DType::F32;
    size_t bytes = 0;
    int device = 0;
  };
  // Allocates and fills a device copy of w's host bytes (the caller owns the result).
  DeviceWeight upload_weight_locked(const WeightMatrix& w) const;
  struct DeviceRope {
    float* cos = nullptr;
    float* sin = nullptr;
    int max_positions = 0, half_dim = 0;
  };

  void activate() const;  // cudaSetDevice(device_)
  void sync() const;      // waits on the stream, turning any kernel fault into alem::Error
  const DeviceWeight& weight_locked(const WeightMatrix& w) const;
  const DeviceRope& rope_locked(const RopeTable& table) const;
  // Device scratch of at least `bytes`, reused between calls (valid until the next call).
  void* scratch_locked(size_t bytes) const;
  void check_error_flag_locked(const char* what) const;

  int device_ = 0;
  int sm_count_ = 1;                  // streaming multiprocessors, for the attention's key splits
  std::unique_ptr<cuda::LtGemm> lt_;  // null when cuBLASLt could not start
  GemmLibrary gemm_library_ = GemmLibrary::kCublasLt;
  mutable uint64_t cublaslt_gemms_ = 0, fallback_gemms_ = 0;
  CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  int* error_flag_ = nullptr;  // device int set by kernels on bad input
  mutable std::mutex mutex_;   // the ops are const but share scratch and caches
  mutable void* scratch_ = nullptr;
  mutable size_t scratch_bytes_ = 0;
  mutable std::unordered_map<const void*, DeviceWeight> weights_;
  mutable std::unordered_map<const void*, DeviceRope> ropes_;
};

// Returns the CUDA backend for the current device. Throws alem::Error when no GPU is usable.
std::unique_ptr<KernelBackend> make_cuda_backend();

}  // namespace alem
