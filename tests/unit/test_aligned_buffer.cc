// AlignedBuffer's memory: every buffer zeroed and 64-byte aligned; medium buffers (16 KiB to
// 1 MiB: a small model's weight matrices) sliced from shared 2 MiB pages without overlapping,
// a page given back once its buffers are all freed (so churn does not grow memory), moves and
// resizes freeing the right way; big buffers 2 MiB aligned on pages of their own.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <vector>

#include "core/aligned_buffer.h"

namespace alem {
namespace {

constexpr uintptr_t kTwoMiB = uintptr_t{2} << 20;

uintptr_t page_of(const AlignedBuffer& b) {
  return reinterpret_cast<uintptr_t>(b.data()) & ~(kTwoMiB - 1);
}

size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

bool all_zero(const AlignedBuffer& b) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (b.data()[i] != 0) return false;
  }
  return true;
}

TEST(AlignedBuffer, MediumBuffersShareAPageWithoutOverlapping) {
  // Sizes as SmolLM2-135M's Q4_0 matrices (k/v, q/o, down, gate+up) and odd ones.
  const std::vector<size_t> sizes = {62208, 186624, 497664, 995328, 16384, 100001, 777};
  std::vector<AlignedBuffer> buffers;
  for (size_t s : sizes) buffers.emplace_back(s);
  for (size_t i = 0; i < buffers.size(); ++i) {
    ASSERT_EQ(buffers[i].size(), sizes[i]);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffers[i].data()) % 64, 0u) << i;
    EXPECT_TRUE(all_zero(buffers[i])) << i;
    std::fill(buffers[i].data(), buffers[i].data() + buffers[i].size(), uint8_t(i + 1));
  }
  for (size_t i = 0; i < buffers.size(); ++i) {
    for (size_t k = 0; k < buffers[i].size(); ++k) {
      ASSERT_EQ(buffers[i].data()[k], uint8_t(i + 1)) << "buffer " << i << " overwritten at " << k;
    }
  }
  // The first two (about 250 KB together) lie in one 2 MiB page.
  EXPECT_EQ(page_of(buffers[0]), page_of(buffers[1]));
}

TEST(AlignedBuffer, ChurnReusesPagesAndMovesFreeOnce) {
  AlignedBuffer kept(300000);  // pins its page throughout
  const size_t resident_before = resident_bytes();
  for (int i = 0; i < 2000; ++i) {
    AlignedBuffer b(300000 + 64 * (i % 7));
    ASSERT_TRUE(all_zero(b));
    b.data()[0] = 1;
    AlignedBuffer moved(std::move(b));
    EXPECT_EQ(b.data(), nullptr);
    AlignedBuffer assigned;
    assigned = std::move(moved);
    assigned.resize(20000);  // frees the 300 KB slice, takes a 20 KB one
    ASSERT_TRUE(all_zero(assigned));
  }
  // 2000 x 320 KB is 640 MB: pages given back are freed, so the process barely grows.
  EXPECT_LT(resident_bytes(), resident_before + (size_t{64} << 20));
  kept.resize(0);
  EXPECT_TRUE(kept.empty());
}

TEST(AlignedBuffer, BigAndSmallBuffers) {
  AlignedBuffer big(3 << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % kTwoMiB, 0u);
  EXPECT_TRUE(all_zero(big));
  AlignedBuffer small(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % 64, 0u);
  EXPECT_TRUE(all_zero(small));
  big = std::move(small);
  EXPECT_EQ(big.size(), 100u);
  EXPECT_EQ(small.size(), 0u);
}

}  // namespace
}  // namespace alem
