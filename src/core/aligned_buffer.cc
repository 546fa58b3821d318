// Implements AlignedBuffer with std::aligned_alloc (medium buffers sliced from shared huge pages),
// and SensitiveBuffer with mmap, madvise and mlock.
#include "core/aligned_buffer.h"

#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>

namespace alem {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// Buffers of [kSharedMin, kSharedMax) share huge pages; from kSharedMax up each has its own.
constexpr size_t kSharedMin = size_t{16} << 10, kSharedMax = size_t{1} << 20;

bool huge_pages_wanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("ALEM_HUGE_PAGES");
    return !(v && v[0] == '0' && v[1] == '\0');
  }();
  return wanted;
}

// Medium buffers (a small model's weight matrices: SmolLM2-135M's are 60 KB to 1 MB) packed
// into shared 2 MiB huge pages, so they stream as fast as big ones (on 4 KiB pages SmolLM2's
// Q4_0 decode ran 66-72 tok/s, on huge pages 89-92) without a 2 MiB page each. A bump
// allocator per page: a page is returned once every buffer in it is freed, and the current page
// starts over when it empties.
class SharedHugePages {
 public:
  uint8_t* allocate(size_t bytes) {
    const size_t rounded = (bytes + 63) / 64 * 64;
    std::lock_guard<std::mutex> lock(mutex_);
    if (!current_ || used_ + rounded > kHugePage) {
      auto* page = static_cast<uint8_t*>(std::aligned_alloc(kHugePage, kHugePage));
      if (!page) return nullptr;
      madvise(page, kHugePage, MADV_HUGEPAGE);  // advice only: failure is harmless
      current_ = page;
      used_ = 0;
      live_[page] = 0;
    }
    uint8_t* p = current_ + used_;
    used_ += rounded;
    ++live_[current_];
    return p;
  }
  // Frees p if it lies in one of these pages (they are wholly the allocator's, so no other
  // buffer starts inside one) and returns true; false for memory of any other origin.
  bool release(uint8_t* p) {
    auto* page = reinterpret_cast<uint8_t*>(reinterpret_cast<uintptr_t>(p) & ~(kHugePage - 1));
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(page);
    if (it == live_.end()) return false;
    if (--it->second > 0) return true;
    if (page == current_) {
      used_ = 0;  // keep the page for the next buffers
      return true;
    }
    live_.erase(it);
    std::free(page);
    return true;
  }

 private:
  std::mutex mutex_;
  uint8_t* current_ = nullptr;
  size_t used_ = 0;
  std::unordered_map<uint8_t*, size_t> live_;  // page -> buffers in it
};

SharedHugePages& shared_huge_pages() {
  static auto* pages = new SharedHugePages;  // never destroyed: buffers may outlive statics
  return *pages;
}

void free_buffer(uint8_t* p) {
  if (p && !shared_huge_pages().release(p)) std::free(p);
}

}  // namespace

AlignedBuffer::AlignedBuffer(size_t bytes) {
  resize(bytes);
}

AlignedBuffer::~AlignedBuffer() {
  free_buffer(data_);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    free_buffer(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

void AlignedBuffer::resize(size_t bytes) {
  free_buffer(data_);
  data_ = nullptr;
  size_ = 0;
  if (bytes == 0) return;
  // Buffers of 1 MiB and more (weights, mostly) go on transparent huge pages of their own where
  // the kernel allows it: streaming reads of 4 KiB pages reach about 60% of the bandwidth of
  // 2 MiB ones (docs/kernels.md); from 16 KiB they share huge pages (SharedHugePages).
  // ALEM_HUGE_PAGES=0 turns both off.
  const bool huge = huge_pages_wanted() && bytes >= kSharedMax;
  if (huge_pages_wanted() && bytes >= kSharedMin && bytes < kSharedMax) {
    data_ = shared_huge_pages().allocate(bytes);  // null if no page could be had
  }
  const size_t rounded =
      huge ? (bytes + kHugePage - 1) / kHugePage * kHugePage : (bytes + 63) / 64 * 64;
  if (!data_) {
    data_ = static_cast<uint8_t*>(std::aligned_alloc(huge ? kHugePage : 64, rounded));
    if (!data_) throw std::bad_alloc();
    if (huge) madvise(data_, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
  }
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
  // From 2 MiB up (the KV cache) the mapping is 2 MiB aligned and advised onto transparent huge
  // pages, as large AlignedBuffers are. ALEM_HUGE_PAGES=0 keeps them off.
  const bool huge = huge_pages_wanted() && bytes >= kHugePage;
  const size_t page = huge ? kHugePage : static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page;
  const size_t reserved = huge ? mapped + kHugePage : mapped;
  void* p = mmap(nullptr, reserved, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  if (huge) {  // keep the 2 MiB aligned part of the reservation, unmap the rest
    const uintptr_t start = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
    if (aligned > start) munmap(p, aligned - start);
    const uintptr_t end = start + reserved, used_end = aligned + mapped;
    if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
    p = reinterpret_cast<void*>(aligned);
    madvise(p, mapped, MADV_HUGEPAGE);  // advice only: failure is harmless
  }
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
