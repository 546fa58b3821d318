// The CPU backend's work outside the matmuls at the sizes of a serving step (16 prompts of a
// hundred tokens and more): x quantised for the block kernels, the copies of q, k and v out of
// the fused projection, and the KV cache write. Past about 256 KiB the copies and the cache
// write are split over the threads, and AVX-512 quantises 16 blocks at a time; each must give
// the same bytes as the plain way (memcpy, the reference backend, the scalar quantiser).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/reference_backend.h"
#include "tests/block_test_values.h"
#include "tests/paged_block_tables.h"

namespace alem {
namespace {

using test::random_values;

// x quantised to 16 bits per 32 values (the block kernels' activations) must be the same bits
// on every instruction set: AVX-512 takes 16 blocks at a time, AVX2 one, the scalar code one
// value at a time. Blocks of every magnitude, all-zero blocks and lone non-zero values.
TEST(CpuMatmul, QuantizeQ16IsBitExactOnEveryIsa) {
  using QuantizeFn = void (*)(const float*, int64_t, int64_t, int16_t*, float*, float*);
  std::vector<std::pair<const char*, QuantizeFn>> kernels;
  if (cpu::isa_supported(cpu::Isa::kAvx2)) kernels.push_back({"avx2", cpu::avx2::quantize_q16});
  if (cpu::has_avx512_vnni()) kernels.push_back({"avx512", cpu::avx512_vnni::quantize_q16});
  if (kernels.empty()) GTEST_SKIP() << "this CPU has neither AVX2 nor AVX512-VNNI";
  std::mt19937 rng(91);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t K : {32, 512, 544, 576, 1536, 2080}) {
    const int64_t M = 3, blocks = K / 32;
    std::vector<float> x(M * K);
    for (int64_t b = 0; b < M * blocks; ++b) {
      const float gain = std::pow(10.f, static_cast<float>(static_cast<int>(rng() % 13) - 6));
      for (int j = 0; j < 32; ++j) x[b * 32 + j] = normal(rng) * gain;
      if (b % 7 == 3) std::fill(x.begin() + b * 32, x.begin() + b * 32 + 32, 0.f);
      if (b % 11 == 5) {
        std::fill(x.begin() + b * 32, x.begin() + b * 32 + 32, 0.f);
        x[b * 32 + rng() % 32] = -gain;
      }
    }
    std::vector<int16_t> want_q(M * K);
    std::vector<float> want_d(M * blocks), want_s(M * blocks);
    cpu::scalar::quantize_q16(x.data(), M, K, want_q.data(), want_d.data(), want_s.data());
    for (const auto& [name, quantize] : kernels) {
      std::vector<int16_t> q(M * K, 7);
      std::vector<float> d(M * blocks, NAN), s(M * blocks, NAN);
      quantize(x.data(), M, K, q.data(), d.data(), s.data());
      for (int64_t i = 0; i < M * K; ++i) {
        ASSERT_EQ(q[i], want_q[i]) << name << " K=" << K << " value " << i;
      }
      for (int64_t b = 0; b < M * blocks; ++b) {
        ASSERT_EQ(std::bit_cast<uint32_t>(d[b]), std::bit_cast<uint32_t>(want_d[b]))
            << name << " K=" << K << " scale of block " << b;
        ASSERT_EQ(std::bit_cast<uint32_t>(s[b]), std::bit_cast<uint32_t>(want_s[b]))
            << name << " K=" << K << " sum of block " << b;
      }
    }
  }
}

// Columns 5..580 of 300 rows of 960 (q out of a prefill's fused projection), 675 KiB: split
// over two threads.
TEST(CpuLargeSteps, Copy2dSplitOverThreads) {
  const CpuBackend cpu(cpu::configured_isa(), 2);
  const int64_t rows = 300, width = 960, first = 5, taken = 576;
  const auto wide = random_values(rows * width, 3);
  std::vector<float> packed(rows * taken, NAN);
  cpu.copy_2d(packed.data(), taken * sizeof(float), wide.data() + first, width * sizeof(float),
              taken * sizeof(float), rows);
  for (int64_t r = 0; r < rows; ++r) {
    ASSERT_EQ(std::memcmp(&packed[r * taken], &wide[r * width + first], taken * sizeof(float)), 0)
        << "row " << r;
  }
}

// A step of over a thousand rows (two prompts, a sequence that brings no rows, a decode row)
// into a cache of scattered blocks, on two threads: the bytes the reference backend writes.
TEST(CpuLargeSteps, KvCacheWriteSplitOverThreads) {
  const CpuBackend cpu(cpu::configured_isa(), 2);
  const ReferenceBackend ref;
  const AttentionShape shape{8, 4, 64, 16, 0.125f};
  const std::vector<std::pair<int, int>> layout = {{0, 700}, {9, 0}, {40, 330}, {5, 1}};
  std::vector<int> lengths;
  for (auto [start, count] : layout) lengths.push_back(start + count);
  const test::BlockTables tables = test::shuffled_block_tables(lengths, shape.block_size, 5, 21);
  std::vector<AttentionSequence> seqs;
  int rows = 0;
  for (size_t s = 0; s < layout.size(); ++s) {
    seqs.push_back({rows, layout[s].second, layout[s].first, tables.tables[s].data()});
    rows += layout[s].second;
  }
  const int64_t row_width = int64_t{shape.num_kv_heads} * shape.head_dim;
  const auto k = random_values(rows * row_width, 22), v = random_values(rows * row_width, 23);
  const size_t cache_elements = size_t(tables.total_blocks) * shape.block_size * row_width;
  for (DType dtype : {DType::F32, DType::BF16}) {
    const size_t bytes = cache_elements * dtype_size(dtype);
    std::vector<uint8_t> want_k(bytes, 0x5A), want_v(bytes, 0x5A), got_k(bytes, 0x5A),
        got_v(bytes, 0x5A);
    ref.kv_cache_write(shape, seqs.data(), static_cast<int>(seqs.size()), k.data(), v.data(),
                       {want_k.data(), want_v.data(), dtype});
    cpu.kv_cache_write(shape, seqs.data(), static_cast<int>(seqs.size()), k.data(), v.data(),
                       {got_k.data(), got_v.data(), dtype});
    EXPECT_TRUE(got_k == want_k) << dtype_name(dtype) << ": k cache bytes differ";
    EXPECT_TRUE(got_v == want_v) << dtype_name(dtype) << ": v cache bytes differ";
  }
}

}  // namespace
}  // namespace alem
