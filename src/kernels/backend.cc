// The backend registry: the one place that maps a backend name ("reference", "cpu", "cuda") to
// an implementation, so engine code picks kernels by a configuration string and never names a
// concrete backend class. The CUDA entry exists only in builds made with CUDA.
// Also the host side of backend memory (the default allocate_buffer/upload/download/copy_2d/wipe
// every CPU backend uses).
#include "kernels/backend.h"

#include <cstring>
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
