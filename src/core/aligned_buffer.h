// A move-only, 64-byte aligned byte buffer for weights and activations. 64-byte alignment lets
// AVX-512 kernels use aligned loads; wipe() zeroes the bytes in a way the compiler cannot elide,
// for buffers that held request data.
#pragma once

#include <cstddef>
#include <cstdint>

namespace alem {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  // Reallocates to `bytes` (contents are not kept). Newly allocated memory is zeroed.
  void resize(size_t bytes);
  void wipe();
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(data_);
  }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Zeroes memory so the write is not optimised away (OPENSSL_cleanse-like).
void secure_wipe(void* data, size_t bytes);

}  // namespace alem
