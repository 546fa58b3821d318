// cuBLASLt GEMMs for the CUDA backend (see gemm_lt.h): one matmul descriptor, three matrix layouts
// and the heuristic's algorithm per (dtype, M, N, K, bias) shape, made on first use and kept.
// Row-major y[M][N] = x[M][K] W^T is column-major y^T[N][M] = op_T(W as K x N) * (x^T as K x M).
#include "kernels/cuda/gemm_lt.h"

#include <cublasLt.h>

#include <string>

#include "core/error.h"
#include "kernels/cuda/cuda_common.h"

#define ALEM_CUBLASLT_CHECK(expr)                                  \
  do {                                                             \
    const cublasStatus_t alem_lt_status = (expr);                  \
    if (alem_lt_status != CUBLAS_STATUS_SUCCESS) {                 \
      ALEM_FAIL(std::string("cuBLASLt error in ") + #expr + ": " + \
                cublasLtGetStatusName(alem_lt_status) + ": " +     \
                cublasLtGetStatusString(alem_lt_status));          \
    }                                                              \
  } while (0)

namespace alem::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // NVIDIA's advice for Hopper: 32 MiB

cublasLtHandle_t as_handle(void* h) {
  return static_cast<cublasLtHandle_t>(h);
}

}  // namespace

struct LtGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

LtGemm::LtGemm() {
  cublasLtHandle_t handle = nullptr;
  ALEM_CUBLASLT_CHECK(cublasLtCreate(&handle));
  handle_ = handle;
  const cudaError_t status = cudaMalloc(&workspace_, kWorkspaceBytes);
  if (status != cudaSuccess) {
    cublasLtDestroy(handle);
    handle_ = nullptr;
    ALEM_FAIL(std::string("cuBLASLt workspace: ") + cudaGetErrorString(status));
  }
  workspace_bytes_ = kWorkspaceBytes;
}

LtGemm::~LtGemm() {
  plans_.clear();
  cudaFree(workspace_);
  if (handle_) cublasLtDestroy(as_handle(handle_));
}

LtGemm::Plan* LtGemm::plan_for(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  const auto [type_code, M, N, K, with_bias] = key;
  const auto type = static_cast<cudaDataType_t>(type_code);
  auto plan = std::make_unique<Plan>();
  ALEM_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  ALEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                     &trans_a, sizeof(trans_a)));
  ALEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                     &trans_b, sizeof(trans_b)));
  if (with_bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    ALEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                       &epilogue, sizeof(epilogue)));
    const cudaDataType_t bias_type = CUDA_R_32F;
    ALEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  ALEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->a, type, K, N, K));        // W^T source
  ALEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->b, type, K, M, K));        // x^T
  ALEM_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_32F, N, M, N));  // y^T
  cublasLtMatmulPreference_t preference = nullptr;
  ALEM_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t status = [&] {
    const cublasStatus_t set =
        cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace_bytes_, sizeof(workspace_bytes_));
    if (set != CUBLAS_STATUS_SUCCESS) return set;
    return cublasLtMatmulAlgoGetHeuristic(as_handle(handle_), plan->op, plan->a, plan->b, plan->c,
                                          plan->c, preference, 1, &result, &found);
  }();
  cublasLtMatmulPreferenceDestroy(preference);
  // No algorithm is an answer (the caller falls back), not an error.
  plan->found = status == CUBLAS_STATUS_SUCCESS && found > 0;
  if (plan->found) plan->algo = result.algo;
  return plans_.emplace(key, std::move(plan)).first->second.get();
}

bool LtGemm::run(const void* w, const void* x, cudaDataType_t type, int M, int N, int K,
                 const float* bias, float* y, cudaStream_t stream) {
  Plan* plan = plan_for({static_cast<int>(type), M, N, K, bias != nullptr});
  if (!plan->found) return false;
  if (bias) {
    ALEM_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof(bias)));
  }
  const float alpha = 1.f, beta = 0.f;
  ALEM_CUBLASLT_CHECK(cublasLtMatmul(as_handle(handle_), plan->op, &alpha, w, plan->a, x, plan->b,
                                     &beta, y, plan->c, y, plan->c, &plan->algo, workspace_,
                                     workspace_bytes_, stream));
  return true;
}

}  // namespace alem::cuda
