// Tests for BlockPool: sharing of a common prefix, the "last token is always computed" cap,
// tenant salts, LRU eviction order, exhaustion without side effects, and a randomized run that
// checks, against a shadow copy of what each KV slot holds, that a prefix hit only ever hands a
// request blocks whose contents are exactly its own tokens.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "core/error.h"
#include "engine/block_pool.h"

namespace alem {
namespace {

std::vector<int32_t> iota_tokens(int n, int start = 100) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Allocates, "computes" every token and commits, as the scheduler does for a finished prefill.
int32_t prefill(BlockPool& pool, int64_t id, const std::vector<int32_t>& tokens) {
  const int32_t cached = pool.cached_prefix_tokens(tokens);
  auto got = pool.allocate_for(id, tokens, int32_t(tokens.size()) - cached);
  EXPECT_TRUE(got.has_value());
  pool.commit(id, tokens, int64_t(tokens.size()));
  pool.check_invariants();
  return got.value_or(-1);
}

TEST(BlockPool, FreshPoolCounts) {
  BlockPool pool(10, 4);
  EXPECT_EQ(pool.num_blocks(), 10);
  EXPECT_EQ(pool.num_free_blocks(), 10);
  EXPECT_EQ(pool.num_used_blocks(), 0);
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  EXPECT_EQ(pool.blocks_for_tokens(0), 0);
  EXPECT_EQ(pool.blocks_for_tokens(4), 1);
  EXPECT_EQ(pool.blocks_for_tokens(5), 2);
  EXPECT_THROW(BlockPool(0, 4), Error);
  EXPECT_THROW(BlockPool(4, 0), Error);
}

TEST(BlockPool, TwoRequestsShareTheirCommonPrefix) {
  BlockPool pool(16, 4);
  std::vector<int32_t> a = iota_tokens(14);  // 3 full blocks + 2 tokens
  EXPECT_EQ(prefill(pool, 1, a), 0);
  EXPECT_EQ(pool.num_used_blocks(), 4);
  EXPECT_EQ(pool.num_cached_blocks(), 3);  // the partial 4th block is not shareable

  // b shares a's first 9 tokens: two full blocks match, the third differs at token 9.
  std::vector<int32_t> b(a.begin(), a.begin() + 9);
  for (int i = 0; i < 11; ++i) b.push_back(5000 + i);
  EXPECT_EQ(pool.cached_prefix_tokens(b), 8);
  EXPECT_EQ(prefill(pool, 2, b), 8);
  const auto& ta = pool.block_table(1);
  const auto& tb = pool.block_table(2);
  ASSERT_EQ(tb.size(), 5u);
  EXPECT_EQ(tb[0], ta[0]);
  EXPECT_EQ(tb[1], ta[1]);
  EXPECT_NE(tb[2], ta[2]);
  EXPECT_EQ(pool.ref_count(ta[0]), 2);
  EXPECT_EQ(pool.ref_count(ta[1]), 2);
  EXPECT_EQ(pool.ref_count(ta[2]), 1);
  EXPECT_EQ(pool.num_used_blocks(), 4 + 3);

  const std::vector<int32_t> shared = {ta[0], ta[1]};
  pool.free(1);
  pool.check_invariants();
  EXPECT_EQ(pool.ref_count(shared[0]), 1);
  EXPECT_EQ(pool.num_used_blocks(), 5);
  pool.free(2);
  pool.check_invariants();
  EXPECT_EQ(pool.num_used_blocks(), 0);
  EXPECT_EQ(pool.num_free_blocks(), 16);
  EXPECT_EQ(pool.num_cached_blocks(), 3 + 3);  // a's 3 full blocks, b's blocks 2..4
  // Freed but cached: a third request still hits.
  EXPECT_EQ(pool.cached_prefix_tokens(a), 12);
  pool.free(99);  // unknown ids are ignored
}

TEST(BlockPool, LastTokenIsAlwaysComputed) {
  BlockPool pool(8, 4);
  const std::vector<int32_t> a = iota_tokens(12);  // exactly 3 blocks
  prefill(pool, 1, a);
  EXPECT_EQ(pool.num_cached_blocks(), 3);
  EXPECT_EQ(pool.cached_prefix_tokens(a), 8);  // not 12: token 11 must be recomputed
  std::vector<int32_t> longer = a;
  longer.push_back(7);
  EXPECT_EQ(pool.cached_prefix_tokens(longer), 12);
  EXPECT_EQ(pool.cached_prefix_tokens({}), 0);
}

TEST(BlockPool, SameTokensUnderAnotherPrefixOrSaltDoNotHit) {
  BlockPool pool(16, 4);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  prefill(pool, 1, a);
  // Block 2 of a ({5,6,7,8}) as the first block of another prompt: different parent, no hit.
  EXPECT_EQ(pool.cached_prefix_tokens(std::vector<int32_t>{5, 6, 7, 8, 9}), 0);
  EXPECT_EQ(pool.cached_prefix_tokens(a, "tenant-b"), 0);
  auto got = pool.allocate_for(2, a, 9, "tenant-b");
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, 0);
  pool.commit(2, a, 9);
  EXPECT_EQ(pool.cached_prefix_tokens(a, "tenant-b"), 8);
  EXPECT_EQ(pool.cached_prefix_tokens(a), 8);
  EXPECT_NE(pool.block_table(1)[0], pool.block_table(2)[0]);
  pool.check_invariants();
}

TEST(BlockPool, DuplicateComputationStaysPrivate) {
  // Two requests with the same prompt admitted before either committed: both compute the
  // blocks; only the first commit is indexed, the second copy is dropped when freed.
  BlockPool pool(8, 4);
  const std::vector<int32_t> p = iota_tokens(9);
  ASSERT_TRUE(pool.allocate_for(1, p, 9).has_value());
  ASSERT_TRUE(pool.allocate_for(2, p, 9).has_value());
  pool.commit(1, p, 9);
  pool.commit(2, p, 9);
  EXPECT_EQ(pool.num_cached_blocks(), 2);
  const int32_t private_block = pool.block_table(2)[0];
  EXPECT_FALSE(pool.is_cached(private_block));
  pool.free(2);
  pool.free(1);
  pool.check_invariants();
  EXPECT_EQ(pool.num_cached_blocks(), 2);
  EXPECT_EQ(pool.num_evictable_blocks(), 2);
}

TEST(BlockPool, EvictsNeverUsedFirstThenLeastRecentlyFreedTailFirst) {
  BlockPool pool(7, 2);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5};       // blocks a0 a1 (full) + a2 (partial)
  const std::vector<int32_t> b = {11, 12, 13, 14, 15};  // b0 b1 + b2
  prefill(pool, 1, a);
  prefill(pool, 2, b);
  const std::vector<int32_t> ta = pool.block_table(1), tb = pool.block_table(2);
  pool.free(1);  // LRU after: a1, a0    (a2 was partial: back to the empty list)
  pool.free(2);  // LRU after: a1, a0, b1, b0
  EXPECT_EQ(pool.num_evictable_blocks(), 4);
  EXPECT_EQ(pool.num_free_blocks(), 7);

  // 3 blocks needed: the one never-used block and the two partial ones come first.
  ASSERT_TRUE(pool.allocate_for(3, std::vector<int32_t>{90, 91, 92, 93, 94, 95}, 6).has_value());
  EXPECT_EQ(pool.num_cached_blocks(), 4) << "nothing cached should have been evicted yet";
  // One more block: evicts a1 (a's tail, freed first).
  ASSERT_TRUE(pool.allocate_for(4, std::vector<int32_t>{70}, 1).has_value());
  EXPECT_EQ(pool.block_table(4)[0], ta[1]);
  EXPECT_EQ(pool.cached_prefix_tokens(a), 2);
  EXPECT_EQ(pool.cached_prefix_tokens(b), 4);
  // Then a0, then b1.
  ASSERT_TRUE(pool.allocate_for(5, std::vector<int32_t>{71, 72, 73}, 3).has_value());
  EXPECT_EQ(pool.block_table(5), (std::vector<int32_t>{ta[0], tb[1]}));
  EXPECT_EQ(pool.cached_prefix_tokens(a), 0);
  EXPECT_EQ(pool.cached_prefix_tokens(b), 2);
  pool.check_invariants();
}

TEST(BlockPool, AHitRefreshesRecency) {
  BlockPool pool(4, 2);
  const std::vector<int32_t> a = {1, 2, 3}, b = {5, 6, 7};
  prefill(pool, 1, a);  // a0 cached, a1 partial
  prefill(pool, 2, b);
  const int32_t a0 = pool.block_table(1)[0], b0 = pool.block_table(2)[0];
  pool.free(1);
  pool.free(2);                       // LRU: a0, b0
  EXPECT_EQ(prefill(pool, 3, a), 2);  // a0 reused: leaves the LRU
  pool.free(3);                       // LRU: b0, a0
  ASSERT_TRUE(pool.allocate_for(4, std::vector<int32_t>{9, 9, 9, 9, 9, 9}, 6).has_value());
  EXPECT_EQ(pool.block_table(4).back(), b0) << "b0 was the least recently freed";
  EXPECT_EQ(pool.cached_prefix_tokens(a), 2);
  EXPECT_NE(pool.block_table(4).back(), a0);
}

TEST(BlockPool, ExhaustionFailsWithoutSideEffects) {
  BlockPool pool(5, 4);
  const std::vector<int32_t> a = iota_tokens(9);
  prefill(pool, 1, a);  // 3 blocks
  // A request sharing a's 2 full blocks and needing 3 more: 2 hits + 3 new > 2 free.
  std::vector<int32_t> b(a.begin(), a.begin() + 8);
  for (int i = 0; i < 12; ++i) b.push_back(i);
  EXPECT_EQ(pool.allocate_for(2, b, 12), std::nullopt);
  EXPECT_FALSE(pool.has_request(2));
  EXPECT_EQ(pool.num_used_blocks(), 3);
  EXPECT_EQ(pool.ref_count(pool.block_table(1)[0]), 1);
  // Fill the pool exactly, then growing fails and changes nothing.
  ASSERT_TRUE(pool.allocate_for(3, std::vector<int32_t>{1}, 8).has_value());
  EXPECT_EQ(pool.num_free_blocks(), 0);
  EXPECT_FALSE(pool.grow(3, 9));
  EXPECT_EQ(pool.block_table(3).size(), 2u);
  EXPECT_TRUE(pool.grow(3, 8));
  pool.check_invariants();
  // Once a is freed, its cached blocks are evictable capacity again.
  pool.free(1);
  EXPECT_EQ(pool.num_free_blocks(), 3);
  EXPECT_TRUE(pool.grow(3, 20));
  EXPECT_EQ(pool.num_free_blocks(), 0);
  pool.check_invariants();
}

TEST(BlockPool, EvictableHitsAreNotCountedTwice) {
  // Regression guard: a hit on a free cached block uses that block, so it cannot also be
  // evicted to satisfy the new blocks of the same allocation.
  BlockPool pool(3, 2);
  const std::vector<int32_t> a = {1, 2, 3, 4, 5};
  prefill(pool, 1, a);                             // 3 blocks: a0 a1 cached, a2 partial
  pool.free(1);                                    // all 3 free, 2 evictable
  std::vector<int32_t> b = {1, 2, 3, 4, 6, 7, 8};  // hits a0 a1, needs 2 more (4..7)
  EXPECT_EQ(pool.allocate_for(2, b, 3), std::nullopt);
  pool.check_invariants();
  EXPECT_EQ(pool.num_cached_blocks(), 2);
  auto got = pool.allocate_for(2, b, 2);  // 2 hits + 1 new: fits
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, 4);
  pool.check_invariants();
}

// Randomized: requests drawn from a few shared prefixes, allocated, computed in chunks,
// committed, freed at random. A shadow of every KV slot's content checks that cached hits
// always carry the request's own tokens and that nobody writes into a block others hold.
TEST(BlockPool, RandomizedSharingNeverServesWrongContent) {
  const int32_t block_size = 4, num_blocks = 40;
  BlockPool pool(num_blocks, block_size);
  std::mt19937 rng(20240611);
  std::vector<std::vector<int32_t>> stems;
  for (int s = 0; s < 4; ++s) {
    std::vector<int32_t> stem(4 + rng() % 14);
    for (auto& t : stem) t = int32_t(rng() % 5);  // tiny vocabulary: many equal blocks
    stems.push_back(stem);
  }
  std::vector<std::vector<int32_t>> shadow(num_blocks, std::vector<int32_t>(block_size, -1));
  struct Live {
    std::vector<int32_t> tokens;
    int64_t computed = 0;
  };
  std::map<int64_t, Live> live;
  int64_t next_id = 1, hits = 0, failures = 0;
  for (int op = 0; op < 4000; ++op) {
    const int action = int(rng() % 3);
    if (action == 0 || live.empty()) {  // admit
      std::vector<int32_t> tokens = stems[rng() % stems.size()];
      const int extra = int(rng() % 10);
      for (int i = 0; i < extra; ++i) tokens.push_back(int32_t(rng() % 5));
      const int32_t cached = pool.cached_prefix_tokens(tokens);
      const int32_t chunk = 1 + int32_t(rng() % (tokens.size() - cached));
      auto got = pool.allocate_for(next_id, tokens, chunk);
      if (!got) {
        ++failures;
        continue;
      }
      ASSERT_EQ(*got, cached);
      hits += cached > 0;
      const auto& table = pool.block_table(next_id);
      for (int32_t pos = 0; pos < cached; ++pos) {
        ASSERT_EQ(shadow[table[pos / block_size]][pos % block_size], tokens[pos])
            << "prefix hit served KV of other tokens";
      }
      live[next_id++] = {tokens, cached};
    } else if (action == 1) {  // compute the next chunk of a random live request
      auto it = std::next(live.begin(), long(rng() % live.size()));
      Live& r = it->second;
      if (r.computed == int64_t(r.tokens.size())) continue;
      const int64_t end = std::min<int64_t>(r.tokens.size(), r.computed + 1 + rng() % 7);
      if (!pool.grow(it->first, end)) {
        ++failures;
        continue;
      }
      const auto& table = pool.block_table(it->first);
      ASSERT_GE(int64_t(table.size()) * block_size, end);
      for (int64_t pos = r.computed; pos < end; ++pos) {
        const int32_t b = table[pos / block_size];
        ASSERT_EQ(pool.ref_count(b), 1) << "writing into a block another request holds";
        ASSERT_FALSE(pool.is_cached(b)) << "writing into a block indexed as full";
        shadow[b][pos % block_size] = r.tokens[pos];
      }
      r.computed = end;
      pool.commit(it->first, r.tokens, r.computed);
    } else {  // free
      auto it = std::next(live.begin(), long(rng() % live.size()));
      pool.free(it->first);
      live.erase(it);
    }
    pool.check_invariants();
    ASSERT_EQ(pool.num_used_blocks() + pool.num_free_blocks(), num_blocks);
  }
  EXPECT_GT(hits, 100) << "the run should exercise prefix hits";
  EXPECT_GT(failures, 10) << "the run should exercise exhaustion";
}

}  // namespace
}  // namespace alem
