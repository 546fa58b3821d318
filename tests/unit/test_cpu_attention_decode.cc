// The "cpu" backend's decode attention against "reference", at every instruction set this
// machine runs, on one and two threads: a decode row's kv heads walk the cache together as one
// task (AttentionWork::kv_heads, up to kMaxTaskQueries query vectors), span by span, each head
// asking for its share of the next span's rows. The shapes cover a task of every kv head
// (SmolLM2's 9/3, TinyLlama's 32/4 with its 8 queries per head on the transposing path), 30
// query slots in groups of 5 (the last group of four reads past the slots), group 1 with 16 kv
// heads, Llama-3-8B's 32/8 x 128 (tasks of two heads), head sizes 256 (the largest) and 80 (the
// portable kernel inside every ISA, one task per head); contexts of one span, several
// spans with a short last one, and a row beside a prefill chunk; f32 and bf16 caches. Two
// threads split the long rows into key ranges whose partial records are merged. A task told
// its thread's next task asks for that task's rows and reads nothing of its table beyond them.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include <cmath>
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

// A paged cache with the sequences' blocks shuffled over a pool, f32 and its bf16 rounding.
struct Cache {
  std::vector<float> k, v;
  std::vector<uint16_t> k16, v16;
  std::vector<std::vector<int32_t>> tables;
  KVCacheLayerView view(DType dtype) {
    return dtype == DType::BF16 ? KVCacheLayerView{k16.data(), v16.data(), dtype}
                                : KVCacheLayerView{k.data(), v.data(), dtype};
  }
};

Cache make_cache(const AttentionShape& shape, const std::vector<int>& lengths, uint32_t seed) {
  Cache c;
  test::BlockTables pool = test::shuffled_block_tables(lengths, shape.block_size, 2, seed);
  const size_t floats =
      size_t(pool.total_blocks) * shape.block_size * shape.num_kv_heads * shape.head_dim;
  c.k = random_values(floats, seed + 1, -3.f, 3.f);  // sharp scores: the softmax rescales
  c.v = random_values(floats, seed + 2);
  for (float x : c.k) c.k16.push_back(f32_to_bf16(x));
  for (float x : c.v) c.v16.push_back(f32_to_bf16(x));
  c.tables = std::move(pool.tables);
  return c;
}

class CpuAttentionDecode : public ::testing::TestWithParam<cpu::Isa> {};

TEST_P(CpuAttentionDecode, KvHeadsTogetherMatchReference) {
  struct Shape {
    int heads, kv_heads, head_dim;
  };
  const Shape shapes[] = {{9, 3, 64},   {32, 4, 64}, {30, 6, 64}, {16, 16, 64},
                          {32, 8, 128}, {8, 2, 256}, {12, 4, 80}};
  // (start_pos, q_count) per sequence: one span, several spans ending short, a decode row
  // beside a prefill chunk and a second short row.
  const std::vector<std::vector<std::pair<int, int>>> layouts = {
      {{200, 1}}, {{1300, 1}}, {{700, 1}, {40, 12}, {5, 1}}};
  const ReferenceBackend ref;
  for (int threads : {1, 2}) {
    const CpuBackend cpu(GetParam(), threads);
    for (const Shape& s : shapes) {
      const AttentionShape shape{s.heads, s.kv_heads, s.head_dim, 16,
                                 1.f / std::sqrt(float(s.head_dim))};
      for (size_t l = 0; l < layouts.size(); ++l) {
        const auto& layout = layouts[l];
        std::vector<int> lengths;
        std::vector<AttentionSequence> seqs;
        int rows = 0;
        for (auto [start, count] : layout) lengths.push_back(start + count);
        Cache cache = make_cache(shape, lengths, 40 + uint32_t(l));
        for (size_t i = 0; i < layout.size(); ++i) {
          seqs.push_back({rows, layout[i].second, layout[i].first, cache.tables[i].data()});
          rows += layout[i].second;
        }
        const auto q = random_values(size_t(rows) * s.heads * s.head_dim, 50 + uint32_t(l));
        for (DType dtype : {DType::F32, DType::BF16}) {
          std::vector<float> want(q.size()), got(q.size(), NAN);
          const int n = static_cast<int>(seqs.size());
          ref.paged_attention(shape, seqs.data(), n, q.data(), cache.view(dtype), want.data());
          cpu.paged_attention(shape, seqs.data(), n, q.data(), cache.view(dtype), got.data());
          const std::string what = std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) +
                                   " x " + std::to_string(s.head_dim) + ", layout " +
                                   std::to_string(l) + ", " + dtype_name(dtype) + ", " +
                                   std::to_string(threads) + " threads";
          for (size_t i = 0; i < want.size(); ++i) {
            ASSERT_NEAR(got[i], want[i], 2e-5) << what << " at " << i;
          }
        }
      }
    }
  }
}

// A task handed the thread's next task (AttentionWork::next) asks for that task's first rows
// while it computes: its own output stays bit for bit the same, and it reads no entry of the
// next task's block table past the keys named (the table ends where an unreadable page begins).
TEST_P(CpuAttentionDecode, NextTaskLookaheadReadsOnlyItsRows) {
  const cpu::KernelTable kernels = cpu::kernel_table(GetParam());
  const long page = sysconf(_SC_PAGESIZE);
  auto* guarded = static_cast<uint8_t*>(
      mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(guarded, MAP_FAILED);
  ASSERT_EQ(mprotect(guarded + page, page, PROT_NONE), 0);
  struct Shape {
    int heads, kv_heads, head_dim;
  };
  for (const Shape& s : {Shape{9, 3, 64}, Shape{32, 8, 128}}) {
    const AttentionShape shape{s.heads, s.kv_heads, s.head_dim, 16,
                               1.f / std::sqrt(float(s.head_dim))};
    // This task's sequence (one span, or several), and the next task's, whose keys end
    // mid-block (and, as a split piece, start past 0).
    for (int length : {200, 1300}) {
      const int next_length = 131;  // under a span: its keys end the table
      Cache cache = make_cache(shape, {length, next_length}, 7);
      const std::vector<int32_t>& next_table = cache.tables[1];
      const size_t next_bytes = next_table.size() * sizeof(int32_t);
      auto* table = reinterpret_cast<int32_t*>(guarded + page - next_bytes);
      std::copy(next_table.begin(), next_table.end(), table);
      const AttentionSequence seq{0, 1, length - 1, cache.tables[0].data()};
      const auto q = random_values(size_t(s.heads) * s.head_dim, 9);
      const int heads = std::min(s.kv_heads, cpu::kMaxTaskQueries / (s.heads / s.kv_heads));
      for (DType dtype : {DType::F32, DType::BF16}) {
        for (int64_t next_begin : {0, 48}) {
          cpu::AttentionWork work{0, 0, 1, 0, length, nullptr, heads, {}};
          std::vector<float> alone(q.size(), NAN), ahead(q.size(), NAN);
          kernels.attention(shape, seq, work, q.data(), cache.view(dtype), alone.data());
          work.next = {table, s.kv_heads - heads, heads, next_begin, next_length};
          kernels.attention(shape, seq, work, q.data(), cache.view(dtype), ahead.data());
          for (int i = 0; i < heads * s.heads / s.kv_heads * s.head_dim; ++i) {
            ASSERT_EQ(alone[i], ahead[i]) << s.heads << "/" << s.kv_heads << ", " << length
                                          << " keys, " << dtype_name(dtype) << " at " << i;
          }
        }
      }
    }
  }
  munmap(guarded, 2 * page);
}

std::vector<cpu::Isa> runnable_isas() {
  std::vector<cpu::Isa> isas;
  for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvxVnni, cpu::Isa::kAvx512}) {
    if (cpu::isa_supported(isa)) isas.push_back(isa);
  }
  return isas;
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuAttentionDecode, ::testing::ValuesIn(runnable_isas()),
                         [](const ::testing::TestParamInfo<cpu::Isa>& info) {
                           return std::string(cpu::isa_name(info.param));
                         });

}  // namespace
}  // namespace alem
