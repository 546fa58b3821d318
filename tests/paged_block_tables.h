// What the paged-attention tests share: block tables whose blocks lie scattered over a pool, as a
// serving engine's cache holds sequences that came and went (test_backend_ops.cc,
// test_cuda_kernels.cc, test_kernels.cc, test_cpu_attention_decode.cc).
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace alem::test {

struct BlockTables {
  int total_blocks = 0;                      // the pool: every sequence's blocks and the spare ones
  std::vector<std::vector<int32_t>> tables;  // one per sequence
};

// Tables for sequences of `lengths` tokens in blocks of `block_size`, over a pool of their
// blocks plus `spare` unused ones whose order is shuffled by `seed`; each sequence takes the
// next of the shuffled blocks in turn.
inline BlockTables shuffled_block_tables(const std::vector<int>& lengths, int block_size, int spare,
                                         uint32_t seed) {
  BlockTables t;
  t.total_blocks = spare;
  for (int len : lengths) t.total_blocks += (len + block_size - 1) / block_size;
  std::vector<int32_t> physical(t.total_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), std::mt19937(seed));
  size_t next = 0;
  for (int len : lengths) {
    std::vector<int32_t> table;
    for (int b = 0; b < (len + block_size - 1) / block_size; ++b) table.push_back(physical[next++]);
    t.tables.push_back(table);
  }
  return t;
}

}  // namespace alem::test
