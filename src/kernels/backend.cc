// The backend registry: the one place that maps a backend name ("reference", "cpu", "cuda") to
// an implementation, so engine code picks kernels by a configuration string and never names a
// concrete backend class. The CUDA entry exists only in builds made with CUDA.
// Also the host side of backend memory (the default allocate_buffer/upload/download/copy_2d/wipe
// every CPU backend uses).
#include "kernels/backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#ifdef ALEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace alem {
namespace {

class HostScratchBuffer final : public BackendBuffer {
 public:
  explicit HostScratchBuffer(AlignedBuffer memory)
      : BackendBuffer(memory.data(), memory.size(), MemorySpace::kHost, BufferKind::kScratch),
        memory_(std::move(memory)) {}

 private:
  AlignedBuffer memory_;
};

// Out of core dumps, mlock'ed where allowed, wiped when unmapped (SensitiveBuffer does all three).
class HostSensitiveBuffer final : public BackendBuffer {
 public:
  explicit HostSensitiveBuffer(SensitiveBuffer memory)
      : BackendBuffer(memory.data(), memory.size(), MemorySpace::kHost, BufferKind::kSensitive),
        memory_(std::move(memory)) {}
  const SensitiveBuffer* host_sensitive() const override { return &memory_; }

 private:
  SensitiveBuffer memory_;
};

}  // namespace

void check_kv_cache_dtype(DType dtype) {
  ALEM_CHECK(dtype == DType::F32 || dtype == DType::BF16,
             "KV cache dtype " + dtype_name(dtype) + " is not supported (f32 or bf16)");
}

const char* memory_space_name(MemorySpace space) {
  return space == MemorySpace::kDevice ? "device" : "host";
}

std::unique_ptr<BackendBuffer> KernelBackend::allocate_buffer(size_t bytes, BufferKind kind) const {
  if (kind == BufferKind::kSensitive) {
    return std::make_unique<HostSensitiveBuffer>(SensitiveBuffer(bytes));
  }
  return std::make_unique<HostScratchBuffer>(AlignedBuffer(bytes));
}

void KernelBackend::upload(void* dst, const void* src_host, size_t bytes) const {
  if (bytes > 0) std::memcpy(dst, src_host, bytes);
}

void KernelBackend::download(void* dst_host, const void* src, size_t bytes) const {
  if (bytes > 0) std::memcpy(dst_host, src, bytes);
}

void KernelBackend::copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                            size_t row_bytes, size_t rows) const {
  ALEM_CHECK(row_bytes <= dst_pitch && row_bytes <= src_pitch, "copy_2d: rows wider than pitch");
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (size_t r = 0; r < rows; ++r) std::memcpy(d + r * dst_pitch, s + r * src_pitch, row_bytes);
}

void KernelBackend::wipe(void* dst, size_t bytes) const {
  secure_wipe(dst, bytes);
}

void KernelBackend::add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M,
                                int64_t D, float eps, float* y) const {
  add_inplace(x, residual, M * D);
  rmsnorm(x, gamma, M, D, eps, y);
}

void check_sampling_candidates_args(int64_t rows, int64_t vocab, int k) {
  ALEM_CHECK(rows >= 0 && vocab > 0 && vocab <= std::numeric_limits<int32_t>::max(),
             "sampling_candidates: bad shape rows=" + std::to_string(rows) +
                 " vocab=" + std::to_string(vocab));
  ALEM_CHECK(k >= 1 && k <= kMaxSamplingCandidates && k <= vocab,
             "sampling_candidates: k = " + std::to_string(k) + " must be in 1..min(" +
                 std::to_string(kMaxSamplingCandidates) + ", vocab " + std::to_string(vocab) + ")");
}

void start_sampling_candidates(int64_t rows, int64_t vocab, int k, SamplingCandidates& out) {
  check_sampling_candidates_args(rows, vocab, k);
  const auto n = static_cast<size_t>(rows);
  out.k = k;
  out.values.assign(n * k, std::numeric_limits<float>::quiet_NaN());
  out.indices.assign(n * k, -1);
  out.max_logit.assign(n, -std::numeric_limits<float>::infinity());
  out.sum_exp.assign(n, 0.0);
  out.invalid.assign(n, 0);
}

void logit_row_stats(const float* x, int64_t n, LogitRowStats* out) {
  float max_logit = -std::numeric_limits<float>::infinity();
  int32_t argmax = 0;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(x[i] < std::numeric_limits<float>::infinity());  // NaN or +inf
    if (x[i] > max_logit) {  // strictly: the first index of the maximum
      max_logit = x[i];
      argmax = static_cast<int32_t>(i);
    }
  }
  out->invalid = bad;
  if (bad) return;
  out->max_logit = max_logit;
  out->argmax = argmax;
  double sum = 0.0;
  if (max_logit != -std::numeric_limits<float>::infinity()) {
    for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max_logit);
  }
  out->sum_exp = sum;
}

void fill_sampling_candidates(const float* logits, int64_t row_begin, int64_t row_end,
                              int64_t vocab, int k, LogitRowStatsFn stats,
                              SamplingCandidates& out) {
  std::vector<int32_t> order;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float* x = logits + r * vocab;
    LogitRowStats row;
    stats(x, vocab, &row);
    if (row.invalid) {
      out.invalid[r] = 1;
      continue;
    }
    out.max_logit[r] = row.max_logit;
    out.sum_exp[r] = row.sum_exp;
    if (k == 1) {
      out.values[r] = x[row.argmax];
      out.indices[r] = row.argmax;
      continue;
    }
    order.resize(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
    for (int j = 0; j < k; ++j) {
      out.values[r * k + j] = x[order[j]];
      out.indices[r * k + j] = order[j];
    }
  }
}

void KernelBackend::sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                                        SamplingCandidates& out) const {
  start_sampling_candidates(rows, vocab, k, out);
  fill_sampling_candidates(logits, 0, rows, vocab, k, logit_row_stats, out);
}

std::unique_ptr<KernelBackend> make_backend(const std::string& name) {
  if (name == "reference") return std::make_unique<ReferenceBackend>();
  if (name == "cpu") return make_cpu_backend();
#ifdef ALEM_HAVE_CUDA
  if (name == "cuda") return make_cuda_backend();
#endif
  std::string known;
  for (const std::string& n : available_backends()) known += (known.empty() ? "" : ", ") + n;
  ALEM_FAIL("unknown kernel backend '" + name + "' (available: " + known + ")");
}

std::vector<std::string> available_backends() {
  std::vector<std::string> names = {"reference", "cpu"};
#ifdef ALEM_HAVE_CUDA
  names.push_back("cuda");
#endif
  return names;
}

}  // namespace alem
