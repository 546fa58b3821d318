// Implements AlignedBuffer with std::aligned_alloc.
#include "core/aligned_buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

namespace alem {

AlignedBuffer::AlignedBuffer(size_t bytes) {
  resize(bytes);
}

AlignedBuffer::~AlignedBuffer() {
  std::free(data_);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void AlignedBuffer::resize(size_t bytes) {
  std::free(data_);
  data_ = nullptr;
  size_ = 0;
  if (bytes == 0) return;
  const size_t rounded = (bytes + 63) / 64 * 64;
  data_ = static_cast<uint8_t*>(std::aligned_alloc(64, rounded));
  if (!data_) throw std::bad_alloc();
  std::memset(data_, 0, rounded);
  size_ = bytes;
}

void AlignedBuffer::wipe() {
  secure_wipe(data_, size_);
}

void secure_wipe(void* data, size_t bytes) {
  if (!data || bytes == 0) return;
  volatile uint8_t* p = static_cast<volatile uint8_t*>(data);
  for (size_t i = 0; i < bytes; ++i) p[i] = 0;
  __asm__ __volatile__("" : : "r"(data) : "memory");
}

}  // namespace alem
