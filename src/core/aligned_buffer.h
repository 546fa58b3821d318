// A move-only, 64-byte aligned byte buffer for weights and activations. 64-byte alignment lets
// AVX-512 kernels use aligned loads; wipe() zeroes the bytes in a way the compiler cannot elide,
// for buffers that held request data. SensitiveBuffer is the page-mapped kind for memory that
// holds request data for a long time (the KV cache): kept out of core dumps, locked in RAM where
// the memlock limit allows, wiped before it is unmapped.
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

// A zeroed, page-aligned anonymous mapping for request data. The mapping is marked
// MADV_DONTDUMP (never written into a core file) and, while sensitive-memory locking is on
// (the default), mlock'ed so it is never swapped out; when the memlock limit refuses, the buffer
// still works, unlocked, and the failure is counted. Wiped, unlocked and unmapped on
// destruction. Move-only. Throws std::bad_alloc when the mapping fails.
class SensitiveBuffer {
 public:
  SensitiveBuffer() = default;
  explicit SensitiveBuffer(size_t bytes);
  ~SensitiveBuffer();
  SensitiveBuffer(SensitiveBuffer&& other) noexcept;
  SensitiveBuffer& operator=(SensitiveBuffer&& other) noexcept;
  SensitiveBuffer(const SensitiveBuffer&) = delete;
  SensitiveBuffer& operator=(const SensitiveBuffer&) = delete;

  size_t size() const { return size_; }
  size_t mapped_bytes() const { return mapped_; }  // size rounded up to whole pages
  bool locked() const { return locked_; }
  bool dont_dump() const { return dont_dump_; }
  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  template <typename T>
  T* as() {
    return reinterpret_cast<T*>(data_);
  }
  void wipe() { secure_wipe(data_, mapped_); }

 private:
  void release() noexcept;
  uint8_t* data_ = nullptr;
  size_t size_ = 0, mapped_ = 0;
  bool locked_ = false, dont_dump_ = false;
};

// Process-wide totals over live SensitiveBuffers, for start-up logs and tests.
struct SensitiveMemoryStats {
  uint64_t mapped_bytes = 0;
  uint64_t locked_bytes = 0;
  uint64_t buffers = 0;
  uint64_t lock_failures = 0;  // buffers the memlock limit refused to lock (since start)
};
SensitiveMemoryStats sensitive_memory_stats();
// Whether new SensitiveBuffers try mlock (default true). Existing buffers are not changed.
void set_sensitive_memory_locking(bool enabled);

}  // namespace alem
