// Implements AlignedBuffer with std::aligned_alloc, and SensitiveBuffer with mmap, madvise and
// mlock.
#include "core/aligned_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
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
  // Buffers of 1 MiB and more (weights, mostly) go on transparent huge pages where the kernel
  // allows it: streaming reads of 4 KiB pages reach about 60% of the bandwidth of 2 MiB ones
  // (docs/kernels.md). ALEM_HUGE_PAGES=0 turns this off.
  static const bool huge_pages_wanted = [] {
    const char* v = std::getenv("ALEM_HUGE_PAGES");
    return !(v && v[0] == '0' && v[1] == '\0');
  }();
  constexpr size_t kHugePage = size_t{2} << 20;
  const bool huge = huge_pages_wanted && bytes >= (size_t{1} << 20);
  const size_t rounded =
      huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : (bytes + 63) / 64 * 64;
  data_ = static_cast<uint8_t*>(std::aligned_alloc(huge ? kHugePage : 64, rounded));
  if (!data_) throw std::bad_alloc();
  if (huge) madvise(data_, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
  std::memset(data_, 0, rounded);
  size_ = bytes;
}

void AlignedBuffer::wipe() {
  secure_wipe(data_, size_);
}

void secure_wipe(void* data, size_t bytes) {
  if (!data || bytes == 0) return;
  // glibc's memset that the compiler may not drop (about 4x a volatile byte loop here; the KV
  // blocks of a finished request are wiped on the engine thread).
  explicit_bzero(data, bytes);
  __asm__ __volatile__("" : : "r"(data) : "memory");
}

namespace {

std::atomic<uint64_t> g_mapped{0}, g_locked{0}, g_buffers{0}, g_lock_failures{0};
std::atomic<bool> g_lock_enabled{true};

}  // namespace

SensitiveBuffer::SensitiveBuffer(size_t bytes) {
  if (bytes == 0) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<uint8_t*>(p);  // anonymous mappings start zeroed
  size_ = bytes;
  mapped_ = mapped;
  dont_dump_ = madvise(p, mapped, MADV_DONTDUMP) == 0;
  if (g_lock_enabled.load()) {
    locked_ = mlock(p, mapped) == 0;
    if (!locked_) g_lock_failures.fetch_add(1);
  }
  g_mapped.fetch_add(mapped);
  if (locked_) g_locked.fetch_add(mapped);
  g_buffers.fetch_add(1);
}

SensitiveBuffer::~SensitiveBuffer() {
  release();
}

SensitiveBuffer::SensitiveBuffer(SensitiveBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      locked_(std::exchange(other.locked_, false)),
      dont_dump_(std::exchange(other.dont_dump_, false)) {}

SensitiveBuffer& SensitiveBuffer::operator=(SensitiveBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    locked_ = std::exchange(other.locked_, false);
    dont_dump_ = std::exchange(other.dont_dump_, false);
  }
  return *this;
}

void SensitiveBuffer::release() noexcept {
  if (!data_) return;
  secure_wipe(data_, mapped_);
  if (locked_) {
    munlock(data_, mapped_);
    g_locked.fetch_sub(mapped_);
  }
  munmap(data_, mapped_);
  g_mapped.fetch_sub(mapped_);
  g_buffers.fetch_sub(1);
  data_ = nullptr;
  size_ = mapped_ = 0;
  locked_ = dont_dump_ = false;
}

SensitiveMemoryStats sensitive_memory_stats() {
  return {g_mapped.load(), g_locked.load(), g_buffers.load(), g_lock_failures.load()};
}

void set_sensitive_memory_locking(bool enabled) {
  g_lock_enabled.store(enabled);
}

}  // namespace alem
