// Tensor allocation and the explicit host <-> backend copies (kernels/tensor.h).
#include "kernels/tensor.h"

namespace alem {

size_t tensor_type_size(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kI32:
      return 4;
    case TensorType::kBF16:
    case TensorType::kF16:
      return 2;
  }
  return 0;
}

const char* tensor_type_name(TensorType type) {
  switch (type) {
    case TensorType::kF32:
      return "f32";
    case TensorType::kBF16:
      return "bf16";
    case TensorType::kF16:
      return "f16";
    case TensorType::kI32:
      return "i32";
  }
  return "?";
}

Tensor::Tensor(const KernelBackend& backend, TensorType type, int64_t count, BufferKind kind)
    : type_(type), count_(count) {
  ALEM_CHECK(count >= 0, "tensor: negative element count");
  if (count > 0) buffer_ = backend.allocate_buffer(bytes(), kind);
}

void Tensor::reserve(const KernelBackend& backend, TensorType type, int64_t count) {
  if (buffer_ && type == type_ && count <= count_) return;
  const BufferKind kind = buffer_ ? buffer_->kind() : BufferKind::kScratch;
  buffer_.reset();
  count_ = 0;
  type_ = type;
  *this = Tensor(backend, type, count, kind);
}

void Tensor::upload(const KernelBackend& backend, const void* host, int64_t count, int64_t offset) {
  ALEM_CHECK(offset >= 0 && count >= 0 && offset + count <= count_,
             "tensor upload: " + std::to_string(count) + " elements at " + std::to_string(offset) +
                 " do not fit " + std::to_string(count_));
  const size_t size = tensor_type_size(type_);
  backend.upload(data<uint8_t>() + offset * size, host, static_cast<size_t>(count) * size);
}

void Tensor::download(const KernelBackend& backend, void* host, int64_t count,
                      int64_t offset) const {
  ALEM_CHECK(offset >= 0 && count >= 0 && offset + count <= count_,
             "tensor download: " + std::to_string(count) + " elements at " +
                 std::to_string(offset) + " do not fit " + std::to_string(count_));
  const size_t size = tensor_type_size(type_);
  backend.download(host, data<uint8_t>() + offset * size, static_cast<size_t>(count) * size);
}

}  // namespace alem
