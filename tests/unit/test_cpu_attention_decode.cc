// The "cpu" backend's decode attention against "reference", at every instruction set this
// machine runs, on one and two threads: a decode row's kv heads walk the cache together as one
// task (AttentionWork::kv_heads, up to kMaxTaskQueries query vectors), span by span, each head
// asking for its share of the next span's rows. The shapes cover a task of every kv head
// (SmolLM2's 9/3, TinyLlama's 32/4 with its 8 queries per head on the transposing path), 30
// query slots in groups of 5 (the last group of four reads past the slots), group 1 with 16 kv
// heads, Llama-3-8B's 32/8 x 128 (tasks of two heads), head sizes 256 (the largest) and 80 (the
// portable kernel inside every ISA, one task per head); contexts of one span, several
// spans with a short last one, and a row beside a prefill chunk; f32 and bf16 caches. Two
// threads split the long rows into key ranges whose partial records are merged.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
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
