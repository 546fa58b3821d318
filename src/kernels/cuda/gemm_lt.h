// The cuBLASLt path of the CUDA backend's 16-bit GEMMs: y[M][N] (f32) = x[M][K] * W^T with x and W
// both bf16 (or both f16), f32 accumulation on the tensor cores, and the bias added in the GEMM's
// epilogue instead of a second kernel. cuBLASLt picks the algorithm by its heuristic for each
// shape (cached per shape) within a fixed workspace. When it offers no algorithm for a shape the
// caller falls back to cublasGemmEx (CudaBackend::matmul), so a GEMM never fails for want of one.
// Internal to the CUDA sources.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

#include <cstddef>
#include <map>
#include <memory>
#include <tuple>

namespace alem::cuda {

class LtGemm {
 public:
  LtGemm();  // throws alem::Error when cuBLASLt cannot start
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // Enqueues y = x W^T (+ bias) on `stream`; x [M][K] and w [N][K] row-major of `type`
  // (CUDA_R_16BF or CUDA_R_16F), y [M][N] f32, bias [N] f32 or null. Returns false, enqueuing
  // nothing, when cuBLASLt has no algorithm for the shape; throws on any other cuBLASLt error.
  bool run(const void* w, const void* x, cudaDataType_t type, int M, int N, int K,
           const float* bias, float* y, cudaStream_t stream);

 private:
  struct Plan;  // descriptors and the chosen algorithm of one shape
  using Key = std::tuple<int, int, int, int, bool>;  // type, M, N, K, bias
  Plan* plan_for(const Key& key);

  void* handle_ = nullptr;  // cublasLtHandle_t
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace alem::cuda
