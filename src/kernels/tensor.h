// Tensor: a typed, flat block of a backend's memory (host for the CPU backends, device for CUDA).
// It knows its memory space, dtype and element count, and is allocated and released by the
// backend that owns it (the ggml "buffer type" / TensorRT-LLM IBuffer idea, kept small): model
// code asks a backend for tensors and never allocates host vectors for activations or the KV
// cache, so the same engine runs on every backend. Shapes stay with the caller (row-major,
// passed to the ops explicitly); data<T>() is a pointer in the backend's space, for ops only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/backend.h"

namespace alem {

// Element types a Tensor may hold (DType for floats, plus the int32 metadata the ops take).
enum class TensorType : uint8_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI32 = 3 };
size_t tensor_type_size(TensorType type);
const char* tensor_type_name(TensorType type);

class Tensor {
 public:
  Tensor() = default;
  // `count` zeroed elements of `type` from `backend` (which must outlive the tensor).
  Tensor(const KernelBackend& backend, TensorType type, int64_t count,
         BufferKind kind = BufferKind::kScratch);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  bool empty() const { return count_ == 0; }
  int64_t count() const { return count_; }
  TensorType type() const { return type_; }
  size_t bytes() const { return static_cast<size_t>(count_) * tensor_type_size(type_); }
  MemorySpace space() const { return buffer_ ? buffer_->space() : MemorySpace::kHost; }
  const BackendBuffer* buffer() const { return buffer_.get(); }
  template <typename T>
  T* data() const {
    return buffer_ ? static_cast<T*>(buffer_->data()) : nullptr;
  }

  // Grows (reallocating, contents dropped) to at least `count` elements; for per-step scratch.
  void reserve(const KernelBackend& backend, TensorType type, int64_t count);
  // Host -> tensor and tensor -> host through the owning backend; counts in elements.
  void upload(const KernelBackend& backend, const void* host, int64_t count, int64_t offset = 0);
  void download(const KernelBackend& backend, void* host, int64_t count, int64_t offset = 0) const;

 private:
  std::unique_ptr<BackendBuffer> buffer_;
  TensorType type_ = TensorType::kF32;
  int64_t count_ = 0;
};

}  // namespace alem
