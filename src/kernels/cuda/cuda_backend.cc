// The CUDA backend's host side: owns the device, stream, cuBLAS handle, scratch and the device
// copies of host-held weights and rope tables, validates arguments like the reference backend
// does, turns host metadata (attention sequences, block tables, positions, tokens) into device
// arrays, and dispatches to the kernels in this directory (or cuBLASLt / cuBLAS for GEMMs).
// Every op synchronises its stream before returning, so errors surface at the op that caused
// them and callers may reuse host buffers immediately.
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <vector>

#include "kernels/cuda/cuda_common.h"
#include "kernels/cuda/gemm_lt.h"

#define ALEM_CUBLAS_CHECK(expr)                                  \
  do {                                                           \
    const cublasStatus_t alem_cublas_status = (expr);            \
    if (alem_cublas_status != CUBLAS_STATUS_SUCCESS) {           \
      ALEM_FAIL(std::string("cuBLAS error in ") + #expr + ": " + \
                cublasGetStatusName(alem_cublas_status) + ": " + \
                cublasGetStatusString(alem_cublas_status));      \
    }                                                            \
  } while (0)

namespace alem {
namespace {

// bf16/f16 matmuls with at most this many rows use the dequantising kernel (f32 activations,
// bandwidth-bound anyway); larger ones convert the activations and go to cuBLAS tensor cores.
constexpr int64_t kGemvMaxRows = 8;
constexpr size_t kScratchAlign = 256;

size_t align_up(size_t n) {
  return (n + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
}

// Device (or managed) memory, as opposed to ordinary host memory.
bool is_device_pointer(const void* p) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

cudaStream_t as_stream(CUstream_st* s) {
  return s;
}

void check_cuda_weight_dtype(DType dtype) {
  ALEM_CHECK(!dtype_is_block(dtype), "cuda: " + dtype_name(dtype) +
                                         " weights (ggml blocks) have no CUDA kernels yet; "
                                         "convert the model with --dtype bf16 or int8 for "
                                         "--backend cuda");
}

void check_int_range(int64_t v, const char* what) {
  ALEM_CHECK(v >= 0 && v <= INT_MAX,
             std::string("cuda matmul: ") + what + " = " + std::to_string(v) + " exceeds int");
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

CudaBackend::CudaBackend(int device) : device_(device) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    ALEM_FAIL(std::string("cuda backend: no usable GPU: ") + cudaGetErrorString(status));
  }
  ALEM_CHECK(device >= 0 && device < count, "cuda backend: device " + std::to_string(device) +
                                                " does not exist (" + std::to_string(count) +
                                                " visible)");
  ALEM_CUDA_CHECK(cudaSetDevice(device_));
  cudaStream_t stream = nullptr;
  ALEM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  cublasHandle_t handle = nullptr;
  const cublasStatus_t cublas_status = cublasCreate(&handle);
  if (cublas_status != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    ALEM_FAIL(std::string("cuda backend: cublasCreate failed: ") +
              cublasGetStatusString(cublas_status));
  }
  cublas_ = handle;
  ALEM_CUBLAS_CHECK(cublasSetStream(cublas_, stream));
  try {
    lt_ = std::make_unique<cuda::LtGemm>();
  } catch (const Error&) {
    lt_.reset();  // the 16-bit GEMMs use cublasGemmEx
  }
  ALEM_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
  ALEM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&error_flag_), sizeof(int)));
  ALEM_CUDA_CHECK(cudaMemset(error_flag_, 0, sizeof(int)));
}

CudaBackend::~CudaBackend() {
  // No throwing here: report nothing, release everything we can.
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  for (auto& [key, w] : weights_) {
    cudaFree(w.data);
    cudaFree(w.scales);
  }
  for (auto& [key, r] : ropes_) {
    cudaFree(r.cos);
    cudaFree(r.sin);
  }
  lt_.reset();
  cudaFree(scratch_);
  cudaFree(error_flag_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::activate() const {
  ALEM_CUDA_CHECK(cudaSetDevice(device_));
}

void CudaBackend::sync() const {
  ALEM_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
}

void* CudaBackend::scratch_locked(size_t bytes) const {
  if (bytes > scratch_bytes_) {
    const size_t grown = align_up(std::max(bytes, scratch_bytes_ * 2));
    ALEM_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
    ALEM_CUDA_CHECK(cudaFree(scratch_));
    scratch_ = nullptr;
    scratch_bytes_ = 0;
    ALEM_CUDA_CHECK(cudaMalloc(&scratch_, grown));
    scratch_bytes_ = grown;
  }
  return scratch_;
}

void CudaBackend::check_error_flag_locked(const char* what) const {
  int flag = 0;
  ALEM_CUDA_CHECK(
      cudaMemcpyAsync(&flag, error_flag_, sizeof(int), cudaMemcpyDeviceToHost, as_stream(stream_)));
  sync();
  if (flag == cuda::kErrNone) return;
  ALEM_CUDA_CHECK(cudaMemsetAsync(error_flag_, 0, sizeof(int), as_stream(stream_)));
  sync();
  if (flag == cuda::kErrRopePosition) ALEM_FAIL(std::string(what) + ": position outside the table");
  ALEM_FAIL(std::string(what) + ": kernel reported error code " + std::to_string(flag));
}

// ---------------------------------------------------------------------------------------------
// Memory.

void* CudaBackend::allocate(size_t bytes) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  void* p = nullptr;
  if (bytes == 0) return nullptr;
  ALEM_CUDA_CHECK(cudaMalloc(&p, bytes));
  ALEM_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, as_stream(stream_)));
  sync();
  return p;
}

void CudaBackend::free(void* device_ptr) const {
  if (!device_ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  sync();
  ALEM_CUDA_CHECK(cudaFree(device_ptr));
}

void CudaBackend::upload(void* dst_device, const void* src_host, size_t bytes) const {
  if (bytes == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CUDA_CHECK(
      cudaMemcpyAsync(dst_device, src_host, bytes, cudaMemcpyHostToDevice, as_stream(stream_)));
  sync();
}

void CudaBackend::download(void* dst_host, const void* src_device, size_t bytes) const {
  if (bytes == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CUDA_CHECK(
      cudaMemcpyAsync(dst_host, src_device, bytes, cudaMemcpyDeviceToHost, as_stream(stream_)));
  sync();
}

namespace {

// A device buffer from allocate_buffer(): freed (kSensitive: zeroed first) on destruction.
class CudaBuffer final : public BackendBuffer {
 public:
  CudaBuffer(const CudaBackend& owner, void* data, size_t bytes, BufferKind kind)
      : BackendBuffer(data, bytes, MemorySpace::kDevice, kind), owner_(owner) {}
  ~CudaBuffer() override {
    try {
      if (kind() == BufferKind::kSensitive) owner_.wipe(data(), bytes());
      owner_.free(data());
    } catch (...) {
      // A destructor cannot report; a failing device is reported by the next op.
    }
  }

 private:
  const CudaBackend& owner_;
};

}  // namespace

std::unique_ptr<BackendBuffer> CudaBackend::allocate_buffer(size_t bytes, BufferKind kind) const {
  void* p = allocate(bytes);
  return std::make_unique<CudaBuffer>(*this, p, bytes, kind);
}

void CudaBackend::copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                          size_t row_bytes, size_t rows) const {
  if (rows == 0 || row_bytes == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows,
                                    cudaMemcpyDeviceToDevice, as_stream(stream_)));
  sync();
}

void CudaBackend::wipe(void* dst, size_t bytes) const {
  if (!dst || bytes == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, as_stream(stream_)));
  sync();
}

CudaBackend::DeviceWeight CudaBackend::upload_weight_locked(const WeightMatrix& w) const {
  ALEM_CHECK(w.rows > 0 && w.cols > 0 && !w.data.empty(), "cuda: empty weight matrix");
  check_cuda_weight_dtype(w.dtype);
  const size_t bytes = static_cast<size_t>(w.rows * w.cols) * dtype_size(w.dtype);
  ALEM_CHECK(w.data.size() >= bytes, "cuda: weight matrix data smaller than its shape");
  DeviceWeight d;
  d.rows = w.rows;
  d.cols = w.cols;
  d.dtype = w.dtype;
  d.bytes = bytes;
  d.device = device_;
  if (w.dtype == DType::I8) {
    ALEM_CHECK(w.cols % kInt8GroupSize == 0 &&
                   w.scales.size() == static_cast<size_t>(w.rows * w.groups_per_row()),
               "cuda: int8 weight matrix without one scale per group");
  }
  ALEM_CUDA_CHECK(cudaMalloc(&d.data, bytes));
  try {
    ALEM_CUDA_CHECK(
        cudaMemcpyAsync(d.data, w.data.data(), bytes, cudaMemcpyHostToDevice, as_stream(stream_)));
    if (w.dtype == DType::I8) {
      const size_t scale_bytes = w.scales.size() * sizeof(float);
      ALEM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d.scales), scale_bytes));
      ALEM_CUDA_CHECK(cudaMemcpyAsync(d.scales, w.scales.data(), scale_bytes,
                                      cudaMemcpyHostToDevice, as_stream(stream_)));
    }
    sync();
  } catch (...) {
    cudaFree(d.data);
    cudaFree(d.scales);
    throw;
  }
  return d;
}

const CudaBackend::DeviceWeight& CudaBackend::weight_locked(const WeightMatrix& w) const {
  if (w.backend_copy) {  // adopted: the matrix owns its device copy
    const auto* d = static_cast<const DeviceWeight*>(w.backend_copy.get());
    ALEM_CHECK(d->device == device_, "cuda: weight matrix adopted by GPU " +
                                         std::to_string(d->device) + ", used on GPU " +
                                         std::to_string(device_));
    return *d;
  }
  ALEM_CHECK(w.rows > 0 && w.cols > 0 && !w.data.empty(), "cuda: empty weight matrix");
  check_cuda_weight_dtype(w.dtype);
  const size_t bytes = static_cast<size_t>(w.rows * w.cols) * dtype_size(w.dtype);
  const void* key = w.data.data();
  auto it = weights_.find(key);
  if (it != weights_.end()) {
    const DeviceWeight& d = it->second;
    if (d.rows == w.rows && d.cols == w.cols && d.dtype == w.dtype && d.bytes == bytes) return d;
    // The host buffer was reused for another matrix: drop the stale copy.
    sync();
    cudaFree(d.data);
    cudaFree(d.scales);
    weights_.erase(it);
  }
  return weights_.emplace(key, upload_weight_locked(w)).first->second;
}

void CudaBackend::adopt_weight(WeightMatrix& w) const {
  if (w.backend_copy) {
    std::lock_guard<std::mutex> lock(mutex_);
    weight_locked(w);  // checks that it is this GPU's
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  auto* copy = new DeviceWeight(upload_weight_locked(w));
  // A cached copy keyed by the host bytes about to be freed must not outlive them.
  if (auto it = weights_.find(w.data.data()); it != weights_.end()) {
    cudaFree(it->second.data);
    cudaFree(it->second.scales);
    weights_.erase(it);
  }
  w.backend_copy_bytes = copy->bytes + (copy->scales ? w.scales.size() * sizeof(float) : size_t{0});
  w.backend_copy = std::shared_ptr<void>(copy, [](void* p) {
    auto* d = static_cast<DeviceWeight*>(p);
    int current = 0;
    const bool switched = cudaGetDevice(&current) == cudaSuccess && current != d->device &&
                          cudaSetDevice(d->device) == cudaSuccess;
    cudaFree(d->data);  // synchronises the device first
    cudaFree(d->scales);
    if (switched) cudaSetDevice(current);
    delete d;
  });
  w.data = AlignedBuffer();
  w.scales.clear();
  w.scales.shrink_to_fit();
}

const CudaBackend::DeviceRope& CudaBackend::rope_locked(const RopeTable& table) const {
  const size_t n = static_cast<size_t>(table.max_positions) * table.half_dim;
  ALEM_CHECK(table.cos.size() == n && table.sin.size() == n,
             "cuda rope: table sizes do not match max_positions * half_dim");
  const void* key = table.cos.data();
  auto it = ropes_.find(key);
  if (it != ropes_.end()) {
    if (it->second.max_positions == table.max_positions && it->second.half_dim == table.half_dim) {
      return it->second;
    }
    sync();
    cudaFree(it->second.cos);
    cudaFree(it->second.sin);
    ropes_.erase(it);
  }
  DeviceRope r;
  r.max_positions = table.max_positions;
  r.half_dim = table.half_dim;
  ALEM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&r.cos), n * sizeof(float)));
  try {
    ALEM_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&r.sin), n * sizeof(float)));
    ALEM_CUDA_CHECK(cudaMemcpyAsync(r.cos, table.cos.data(), n * sizeof(float),
                                    cudaMemcpyHostToDevice, as_stream(stream_)));
    ALEM_CUDA_CHECK(cudaMemcpyAsync(r.sin, table.sin.data(), n * sizeof(float),
                                    cudaMemcpyHostToDevice, as_stream(stream_)));
    sync();
  } catch (...) {
    cudaFree(r.cos);
    cudaFree(r.sin);
    throw;
  }
  return ropes_.emplace(key, r).first->second;
}

void CudaBackend::prepare(const WeightMatrix& w) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  weight_locked(w);
}

void CudaBackend::evict(const WeightMatrix& w) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  auto it = weights_.find(w.data.data());
  if (it == weights_.end()) return;
  sync();
  ALEM_CUDA_CHECK(cudaFree(it->second.data));
  ALEM_CUDA_CHECK(cudaFree(it->second.scales));
  weights_.erase(it);
}

size_t CudaBackend::prepared_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  size_t total = 0;
  for (const auto& [key, w] : weights_) {
    total +=
        w.bytes + (w.dtype == DType::I8
                       ? static_cast<size_t>(w.rows * (w.cols / kInt8GroupSize)) * sizeof(float)
                       : 0);
  }
  for (const auto& [key, r] : ropes_) total += 2 * sizeof(float) * r.max_positions * r.half_dim;
  return total;
}

// ---------------------------------------------------------------------------------------------
// Ops.

void CudaBackend::matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                         float* y) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CHECK(M >= 0, "cuda matmul: negative M");
  if (M == 0) return;
  const DeviceWeight& d = weight_locked(w);
  const int64_t N = w.rows, K = w.cols;
  const cudaStream_t stream = as_stream(stream_);
  const bool use_kernel = w.dtype == DType::I8 ||
                          ((w.dtype == DType::BF16 || w.dtype == DType::F16) && M <= kGemvMaxRows);
  if (use_kernel) {
    cuda::launch_dequant_gemm(x, M, d.data, d.scales, static_cast<int>(w.dtype), N, K,
                              kInt8GroupSize, bias, y, stream);
    sync();
    return;
  }
  check_int_range(M, "M");
  check_int_range(N, "N");
  check_int_range(K, "K");
  const float alpha = 1.f, beta = 0.f;
  // Row-major y[M][N] = x[M][K] W^T is column-major y^T[N][M] = W^T(op T of W as KxN) * x^T.
  if (w.dtype == DType::F32) {
    ALEM_CUBLAS_CHECK(cublasSgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
                                  static_cast<int>(M), static_cast<int>(K), &alpha,
                                  static_cast<const float*>(d.data), static_cast<int>(K), x,
                                  static_cast<int>(K), &beta, y, static_cast<int>(N)));
  } else if (w.dtype == DType::BF16 || w.dtype == DType::F16) {
    const cudaDataType_t type = w.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
    auto* x_half = static_cast<uint16_t*>(scratch_locked(static_cast<size_t>(M * K) * 2));
    cuda::launch_convert_f32(x, M * K, static_cast<int>(w.dtype), x_half, stream);
    if (lt_ && gemm_library_ == GemmLibrary::kCublasLt &&
        lt_->run(d.data, x_half, type, static_cast<int>(M), static_cast<int>(N),
                 static_cast<int>(K), bias, y, stream)) {
      ++cublaslt_gemms_;
      sync();
      return;
    }
    ++fallback_gemms_;
    ALEM_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N),
                                   static_cast<int>(M), static_cast<int>(K), &alpha, d.data, type,
                                   static_cast<int>(K), x_half, type, static_cast<int>(K), &beta, y,
                                   CUDA_R_32F, static_cast<int>(N), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  } else {
    ALEM_FAIL("cuda matmul: weight dtype " + dtype_name(w.dtype) + " not implemented on cuda");
  }
  if (bias) cuda::launch_add_bias(y, bias, M, N, stream);
  sync();
}

void CudaBackend::set_gemm_library(GemmLibrary library) {
  std::lock_guard<std::mutex> lock(mutex_);
  gemm_library_ = library;
}

uint64_t CudaBackend::cublaslt_gemms() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cublaslt_gemms_;
}

uint64_t CudaBackend::fallback_gemms() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fallback_gemms_;
}

void CudaBackend::rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
                          float* y) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CHECK(M >= 0 && D >= 0, "cuda rmsnorm: negative shape");
  cuda::launch_rmsnorm(x, gamma, M, D, eps, y, as_stream(stream_));
  sync();
}

void CudaBackend::add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M,
                              int64_t D, float eps, float* y) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CHECK(M >= 0 && D >= 0, "cuda add_rmsnorm: negative shape");
  cuda::launch_add_rmsnorm(x, residual, gamma, M, D, eps, y, as_stream(stream_));
  sync();
}

void CudaBackend::rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                       const RopeTable& table) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  const int half = head_dim / 2;
  ALEM_CHECK(table.half_dim == half, "rope table half_dim " + std::to_string(table.half_dim) +
                                         " does not match head_dim " + std::to_string(head_dim));
  if (T <= 0) return;
  const DeviceRope& r = rope_locked(table);
  const int32_t* device_positions = positions;
  if (!is_device_pointer(positions)) {
    for (int64_t t = 0; t < T; ++t) {
      ALEM_CHECK(positions[t] >= 0 && positions[t] < table.max_positions,
                 "rope position " + std::to_string(positions[t]) + " outside the table");
    }
    void* s = scratch_locked(static_cast<size_t>(T) * sizeof(int32_t));
    ALEM_CUDA_CHECK(cudaMemcpyAsync(s, positions, static_cast<size_t>(T) * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, as_stream(stream_)));
    device_positions = static_cast<const int32_t*>(s);
  }
  cuda::launch_rope(x, T, num_heads, head_dim, device_positions, r.cos, r.sin, r.max_positions,
                    error_flag_, as_stream(stream_));
  check_error_flag_locked("cuda rope");
}

void CudaBackend::silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  cuda::launch_silu_mul(gate_up, M, I, out, as_stream(stream_));
  sync();
}

void CudaBackend::add_inplace(float* y, const float* x, int64_t n) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  cuda::launch_add_inplace(y, x, n, as_stream(stream_));
  sync();
}

void CudaBackend::embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens,
                            int64_t T, float* out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  if (T <= 0) return;
  const DeviceWeight& d = weight_locked(table);
  const int32_t* device_tokens = tokens;
  if (!is_device_pointer(tokens)) {
    void* s = scratch_locked(static_cast<size_t>(T) * sizeof(int32_t));
    ALEM_CUDA_CHECK(cudaMemcpyAsync(s, tokens, static_cast<size_t>(T) * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, as_stream(stream_)));
    device_tokens = static_cast<const int32_t*>(s);
  }
  cuda::launch_embedding(d.data, d.scales, static_cast<int>(table.dtype), table.rows, table.cols,
                         kInt8GroupSize, row_begin, device_tokens, T, out, as_stream(stream_));
  sync();
}

// ---------------------------------------------------------------------------------------------
// Attention: one RowInfo per query row, block tables copied to the device when they are host
// memory, all in one scratch upload.

namespace {

void check_attention_shape(const AttentionShape& s) {
  ALEM_CHECK(s.num_kv_heads > 0 && s.num_heads > 0 && s.num_heads % s.num_kv_heads == 0,
             "num_heads must be a multiple of num_kv_heads");
  ALEM_CHECK(s.head_dim > 0 && s.head_dim <= cuda::kMaxHeadDim,
             "cuda attention: head_dim " + std::to_string(s.head_dim) + " not in 1.." +
                 std::to_string(cuda::kMaxHeadDim));
  ALEM_CHECK(s.block_size > 0, "cuda attention: block_size must be positive");
}

// Returns the device RowInfo array (in scratch) and sets num_rows. `extra_bytes` more of the
// same scratch, 256-byte aligned, go to *extra (the attention's split partials).
const cuda::RowInfo* upload_rows(const AttentionShape& shape, const AttentionSequence* seqs,
                                 int num_seqs, cudaStream_t stream,
                                 const std::function<void*(size_t)>& scratch, int64_t& num_rows,
                                 size_t extra_bytes = 0, void** extra = nullptr) {
  num_rows = 0;
  int64_t host_table_ints = 0;
  std::vector<char> table_on_device(static_cast<size_t>(num_seqs));
  for (int s = 0; s < num_seqs; ++s) {
    const AttentionSequence& seq = seqs[s];
    ALEM_CHECK(seq.q_count >= 0 && seq.start_pos >= 0 && seq.q_begin >= 0,
               "cuda attention: sequence " + std::to_string(s) + " has a negative field");
    if (seq.q_count == 0) continue;
    ALEM_CHECK(seq.block_table != nullptr,
               "cuda attention: sequence " + std::to_string(s) + " has no block table");
    num_rows += seq.q_count;
    table_on_device[s] = is_device_pointer(seq.block_table) ? 1 : 0;
    if (!table_on_device[s]) {
      const int64_t end = static_cast<int64_t>(seq.start_pos) + seq.q_count;
      host_table_ints += (end + shape.block_size - 1) / shape.block_size;
    }
  }
  if (num_rows == 0) return nullptr;
  const size_t rows_bytes = align_up(static_cast<size_t>(num_rows) * sizeof(cuda::RowInfo));
  const size_t tables_bytes = align_up(static_cast<size_t>(host_table_ints) * sizeof(int32_t));
  auto* base = static_cast<char*>(scratch(rows_bytes + tables_bytes + extra_bytes));
  if (extra) *extra = extra_bytes > 0 ? base + rows_bytes + tables_bytes : nullptr;
  auto* device_tables = reinterpret_cast<int32_t*>(base + rows_bytes);
  std::vector<cuda::RowInfo> rows;
  rows.reserve(static_cast<size_t>(num_rows));
  std::vector<int32_t> tables;
  tables.reserve(static_cast<size_t>(host_table_ints));
  for (int s = 0; s < num_seqs; ++s) {
    const AttentionSequence& seq = seqs[s];
    if (seq.q_count == 0) continue;
    const int32_t* table = seq.block_table;
    if (!table_on_device[s]) {
      const int64_t end = static_cast<int64_t>(seq.start_pos) + seq.q_count;
      const int64_t blocks = (end + shape.block_size - 1) / shape.block_size;
      table = device_tables + tables.size();
      tables.insert(tables.end(), seq.block_table, seq.block_table + blocks);
    }
    for (int i = 0; i < seq.q_count; ++i)
      rows.push_back({table, seq.q_begin + i, seq.start_pos + i});
  }
  ALEM_CUDA_CHECK(cudaMemcpyAsync(base, rows.data(), rows.size() * sizeof(cuda::RowInfo),
                                  cudaMemcpyHostToDevice, stream));
  if (!tables.empty()) {
    ALEM_CUDA_CHECK(cudaMemcpyAsync(device_tables, tables.data(), tables.size() * sizeof(int32_t),
                                    cudaMemcpyHostToDevice, stream));
  }
  // The staging vectors die at return: wait for the copies (pageable copies are staged anyway).
  ALEM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return reinterpret_cast<const cuda::RowInfo*>(base);
}

}  // namespace

void CudaBackend::kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                                 int num_seqs, const float* k, const float* v,
                                 KVCacheLayerView cache) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  check_attention_shape(shape);
  check_kv_cache_dtype(cache.dtype);
  int64_t num_rows = 0;
  const cuda::RowInfo* rows = upload_rows(
      shape, seqs, num_seqs, as_stream(stream_), [this](size_t b) { return scratch_locked(b); },
      num_rows);
  if (num_rows == 0) return;
  cuda::launch_kv_cache_write(rows, num_rows, shape.num_kv_heads, shape.head_dim, shape.block_size,
                              k, v, cache.k, cache.v, cache.dtype == DType::BF16,
                              as_stream(stream_));
  sync();
}

void CudaBackend::paged_attention(const AttentionShape& shape, const AttentionSequence* seqs,
                                  int num_seqs, const float* q, KVCacheLayerView cache,
                                  float* out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  check_attention_shape(shape);
  check_kv_cache_dtype(cache.dtype);
  // Rows and the longest context decide the key splits (flash-decoding, attention.cu).
  int64_t rows_expected = 0, max_context = 0;
  for (int s = 0; s < num_seqs; ++s) {
    if (seqs[s].q_count <= 0) continue;
    rows_expected += seqs[s].q_count;
    max_context = std::max<int64_t>(max_context, int64_t{seqs[s].start_pos} + seqs[s].q_count);
  }
  const int splits = cuda::attention_splits(rows_expected, shape.num_heads, max_context, sm_count_);
  const size_t partial_bytes =
      cuda::attention_partial_bytes(rows_expected, shape.num_heads, shape.head_dim, splits);
  int64_t num_rows = 0;
  void* partials = nullptr;
  const cuda::RowInfo* rows = upload_rows(
      shape, seqs, num_seqs, as_stream(stream_), [this](size_t b) { return scratch_locked(b); },
      num_rows, partial_bytes, &partials);
  if (num_rows == 0) return;
  cuda::launch_paged_attention(rows, num_rows, shape.num_heads, shape.num_kv_heads, shape.head_dim,
                               shape.block_size, shape.scale, q, cache.k, cache.v,
                               cache.dtype == DType::BF16, out, max_context, splits,
                               static_cast<float*>(partials), as_stream(stream_));
  sync();
}

// ---------------------------------------------------------------------------------------------
// Sampling.

void CudaBackend::top_k(const float* logits, int64_t rows, int64_t vocab, int k, float* values,
                        int32_t* indices) const {
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  ALEM_CHECK(k >= 1 && k <= 1024 && k <= vocab,
             "cuda top_k: k = " + std::to_string(k) + " must be in 1..min(1024, vocab)");
  if (rows <= 0) return;
  const size_t n = static_cast<size_t>(rows) * k;
  auto* base =
      static_cast<char*>(scratch_locked(align_up(n * sizeof(float)) + n * sizeof(int32_t)));
  auto* device_values = reinterpret_cast<float*>(base);
  auto* device_indices = reinterpret_cast<int32_t*>(base + align_up(n * sizeof(float)));
  cuda::launch_top_k(logits, rows, vocab, k, device_values, device_indices, as_stream(stream_));
  if (values) {
    ALEM_CUDA_CHECK(cudaMemcpyAsync(values, device_values, n * sizeof(float),
                                    cudaMemcpyDeviceToHost, as_stream(stream_)));
  }
  ALEM_CUDA_CHECK(cudaMemcpyAsync(indices, device_indices, n * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, as_stream(stream_)));
  sync();
}

void CudaBackend::sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                                      SamplingCandidates& out) const {
  check_sampling_candidates_args(rows, vocab, k);
  const auto n = static_cast<size_t>(rows);
  out.k = k;
  out.values.assign(n * k, NAN);
  out.indices.assign(n * k, -1);
  out.max_logit.assign(n, -INFINITY);
  out.sum_exp.assign(n, 0.0);
  out.invalid.assign(n, 0);
  if (rows == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);
  activate();
  const cudaStream_t stream = as_stream(stream_);
  // Scratch: values [n*k] f32, sums [n] f64, indices [n*k] i32, max [n] f32, invalid [n] i32.
  const size_t values_at = 0;
  const size_t sums_at = values_at + align_up(n * k * sizeof(float));
  const size_t indices_at = sums_at + align_up(n * sizeof(double));
  const size_t max_at = indices_at + align_up(n * k * sizeof(int32_t));
  const size_t invalid_at = max_at + align_up(n * sizeof(float));
  const size_t total = invalid_at + align_up(n * sizeof(int32_t));
  auto* base = static_cast<char*>(scratch_locked(total));
  auto* d_values = reinterpret_cast<float*>(base + values_at);
  auto* d_sums = reinterpret_cast<double*>(base + sums_at);
  auto* d_indices = reinterpret_cast<int32_t*>(base + indices_at);
  auto* d_max = reinterpret_cast<float*>(base + max_at);
  auto* d_invalid = reinterpret_cast<int32_t*>(base + invalid_at);
  cuda::launch_top_k(logits, rows, vocab, k, d_values, d_indices, stream);
  cuda::launch_row_stats(logits, rows, vocab, d_max, d_sums, d_invalid, stream);
  std::vector<int32_t> invalid(n);
  ALEM_CUDA_CHECK(cudaMemcpyAsync(out.values.data(), d_values, n * k * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  ALEM_CUDA_CHECK(cudaMemcpyAsync(out.indices.data(), d_indices, n * k * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, stream));
  ALEM_CUDA_CHECK(cudaMemcpyAsync(out.max_logit.data(), d_max, n * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  ALEM_CUDA_CHECK(cudaMemcpyAsync(out.sum_exp.data(), d_sums, n * sizeof(double),
                                  cudaMemcpyDeviceToHost, stream));
  ALEM_CUDA_CHECK(cudaMemcpyAsync(invalid.data(), d_invalid, n * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, stream));
  sync();
  for (size_t r = 0; r < n; ++r) {
    if (!invalid[r]) continue;  // the same "nothing else set" as the host backends
    out.invalid[r] = 1;
    std::fill_n(out.values.begin() + r * k, k, NAN);
    std::fill_n(out.indices.begin() + r * k, k, -1);
    out.max_logit[r] = -INFINITY;
    out.sum_exp[r] = 0.0;
  }
}

void CudaBackend::argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens) const {
  top_k(logits, rows, vocab, 1, nullptr, tokens);
}

std::unique_ptr<KernelBackend> make_cuda_backend() {
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    ALEM_FAIL(std::string("cuda backend: no usable GPU: ") + cudaGetErrorString(status));
  }
  // Several ranks on one node: rank i of the node takes GPU i (mod the GPUs it sees), as
  // mpirun (OMPI_COMM_WORLD_LOCAL_RANK) or srun (SLURM_LOCALID) number them.
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  if (!local || !*local) local = std::getenv("SLURM_LOCALID");
  if (local && *local) {
    const int count = cuda_device_count();
    if (count > 0) device = std::atoi(local) % count;
  }
  return std::make_unique<CudaBackend>(device);
}

}  // namespace alem
