// Implements BlockPool: the free lists (a stack of empty blocks, an intrusive LRU list of cached
// ones), the hash index and the per-request block tables. Hashes are SHA-256 over
// (parent hash, token ids) truncated to 128 bits; token ids are hashed as little-endian int32.
#include "engine/block_pool.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace alem {
namespace {

BlockHash sha256_128(const uint8_t* data, size_t size) {
  uint8_t digest[EVP_MAX_MD_SIZE];
  unsigned int digest_size = 0;
  ALEM_CHECK(EVP_Digest(data, size, digest, &digest_size, EVP_sha256(), nullptr) == 1,
             "SHA-256 failed while hashing a KV block");
  BlockHash h;
  std::memcpy(&h.hi, digest, 8);
  std::memcpy(&h.lo, digest + 8, 8);
  return h;
}

}  // namespace

BlockPool::BlockPool(int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), blocks_(static_cast<size_t>(std::max(num_blocks, 0))) {
  ALEM_CHECK(num_blocks > 0,
             "block pool needs at least one block, got " + std::to_string(num_blocks));
  ALEM_CHECK(block_size > 0, "block size must be positive, got " + std::to_string(block_size));
  empty_.reserve(blocks_.size());
  wipe_queued_.assign(blocks_.size(), false);
  // Stack: block 0 on top, so blocks are handed out in id order (easier to read in tests).
  for (int32_t b = num_blocks - 1; b >= 0; --b) empty_.push_back(b);
}

// ---- hashing --------------------------------------------------------------------------------

BlockHash BlockPool::root_hash(const std::string& salt) const {
  std::string seed = "alem-kv-prefix-v1:" + std::to_string(block_size_) + ":" + salt;
  return sha256_128(reinterpret_cast<const uint8_t*>(seed.data()), seed.size());
}

BlockHash BlockPool::hash_block(const BlockHash& parent,
                                std::span<const int32_t> block_tokens) const {
  std::vector<uint8_t> bytes(16 + block_tokens.size() * 4);
  std::memcpy(bytes.data(), &parent.hi, 8);
  std::memcpy(bytes.data() + 8, &parent.lo, 8);
  for (size_t i = 0; i < block_tokens.size(); ++i) {
    const uint32_t t = static_cast<uint32_t>(block_tokens[i]);
    for (int k = 0; k < 4; ++k) bytes[16 + i * 4 + k] = static_cast<uint8_t>(t >> (8 * k));
  }
  return sha256_128(bytes.data(), bytes.size());
}

std::vector<int32_t> BlockPool::find_prefix(std::span<const int32_t> tokens,
                                            const std::string& salt,
                                            std::vector<BlockHash>* chain) const {
  std::vector<int32_t> hits;
  if (tokens.empty()) return hits;
  const size_t max_blocks = (tokens.size() - 1) / static_cast<size_t>(block_size_);
  BlockHash parent = root_hash(salt);
  for (size_t i = 0; i < max_blocks; ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const BlockHash h = hash_block(parent, block_tokens);
    const auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;
    const Block& b = blocks_[it->second];
    // A hash match is only a hint: the identity is (parent, tokens).
    if (!(b.parent == parent) ||
        !std::equal(b.tokens.begin(), b.tokens.end(), block_tokens.begin(), block_tokens.end())) {
      break;
    }
    hits.push_back(it->second);
    if (chain) chain->push_back(h);
    parent = h;
  }
  return hits;
}

int32_t BlockPool::cached_prefix_tokens(std::span<const int32_t> tokens,
                                        const std::string& salt) const {
  return static_cast<int32_t>(find_prefix(tokens, salt, nullptr).size()) * block_size_;
}

// ---- free lists -----------------------------------------------------------------------------

int32_t BlockPool::allocatable(int32_t reserved) const {
  return static_cast<int32_t>(empty_.size()) + lru_size_ - reserved;
}

int32_t BlockPool::take_free_block() {
  int32_t b;
  if (!empty_.empty()) {
    b = empty_.back();
    empty_.pop_back();
  } else {
    ALEM_CHECK(lru_head_ >= 0, "block pool: no free block (caller must check capacity first)");
    b = lru_head_;  // evict the least recently freed cached block
    lru_remove(b);
    unhash(b);
    queue_wipe(b);  // its prefix KV must not reach the new owner's unwritten slots
  }
  Block& block = blocks_[b];
  ALEM_CHECK(block.ref_count == 0, "block pool: free block " + std::to_string(b) + " is in use");
  block.ref_count = 1;
  ++num_used_;
  return b;
}

void BlockPool::add_ref(int32_t block_id) {
  Block& b = blocks_[block_id];
  if (b.ref_count == 0) {
    lru_remove(block_id);  // only hashed blocks are shared, and ref-0 hashed blocks are in the LRU
    ++num_used_;
  }
  ++b.ref_count;
}

void BlockPool::drop_ref(int32_t block_id) {
  Block& b = blocks_[block_id];
  ALEM_CHECK(b.ref_count > 0, "block pool: block " + std::to_string(block_id) + " freed twice");
  if (--b.ref_count > 0) return;
  --num_used_;
  if (b.hashed) {
    lru_push_back(block_id);
  } else {
    empty_.push_back(block_id);
    queue_wipe(block_id);
  }
}

void BlockPool::queue_wipe(int32_t block_id) {
  if (wipe_queued_[block_id]) return;
  wipe_queued_[block_id] = true;
  to_wipe_.push_back(block_id);
}

std::vector<int32_t> BlockPool::take_blocks_to_wipe() {
  std::vector<int32_t> out;
  out.swap(to_wipe_);
  for (int32_t b : out) wipe_queued_[b] = false;
  return out;
}

void BlockPool::lru_push_back(int32_t block_id) {
  Block& b = blocks_[block_id];
  b.lru_prev = lru_tail_;
  b.lru_next = -1;
  if (lru_tail_ >= 0) {
    blocks_[lru_tail_].lru_next = block_id;
  } else {
    lru_head_ = block_id;
  }
  lru_tail_ = block_id;
  b.in_lru = true;
  ++lru_size_;
}

void BlockPool::lru_remove(int32_t block_id) {
  Block& b = blocks_[block_id];
  ALEM_CHECK(b.in_lru, "block pool: block " + std::to_string(block_id) + " is not in the LRU list");
  if (b.lru_prev >= 0) {
    blocks_[b.lru_prev].lru_next = b.lru_next;
  } else {
    lru_head_ = b.lru_next;
  }
  if (b.lru_next >= 0) {
    blocks_[b.lru_next].lru_prev = b.lru_prev;
  } else {
    lru_tail_ = b.lru_prev;
  }
  b.lru_prev = b.lru_next = -1;
  b.in_lru = false;
  --lru_size_;
}

void BlockPool::unhash(int32_t block_id) {
  Block& b = blocks_[block_id];
  if (!b.hashed) return;
  by_hash_.erase(b.hash);
  b.hashed = false;
  b.tokens.clear();
}

// ---- requests -------------------------------------------------------------------------------

BlockPool::Table& BlockPool::table(int64_t request_id) {
  auto it = tables_.find(request_id);
  ALEM_CHECK(it != tables_.end(), "block pool: request has no block table");
  return it->second;
}

const std::vector<int32_t>& BlockPool::block_table(int64_t request_id) const {
  auto it = tables_.find(request_id);
  ALEM_CHECK(it != tables_.end(), "block pool: request has no block table");
  return it->second.blocks;
}

std::optional<int32_t> BlockPool::allocate_for(int64_t request_id, std::span<const int32_t> tokens,
                                               int32_t num_new_tokens, const std::string& salt) {
  ALEM_CHECK(!has_request(request_id), "block pool: request already has a block table");
  ALEM_CHECK(num_new_tokens >= 0, "block pool: negative token count");
  std::vector<BlockHash> chain;
  const std::vector<int32_t> hits = find_prefix(tokens, salt, &chain);
  const int32_t cached_tokens = static_cast<int32_t>(hits.size()) * block_size_;
  const int32_t needed = blocks_for_tokens(int64_t(cached_tokens) + num_new_tokens) -
                         static_cast<int32_t>(hits.size());
  int32_t reserved = 0;  // hits sitting in the LRU list cannot also be evicted for new blocks
  for (int32_t b : hits) reserved += blocks_[b].ref_count == 0;
  if (needed > allocatable(reserved)) return std::nullopt;

  Table t;
  t.salt = salt;
  t.chain = std::move(chain);
  for (int32_t b : hits) {
    add_ref(b);
    t.blocks.push_back(b);
  }
  for (int32_t i = 0; i < needed; ++i) t.blocks.push_back(take_free_block());
  tables_.emplace(request_id, std::move(t));
  return cached_tokens;
}

bool BlockPool::grow(int64_t request_id, int64_t num_tokens) {
  Table& t = table(request_id);
  const int32_t needed = blocks_for_tokens(num_tokens) - static_cast<int32_t>(t.blocks.size());
  if (needed <= 0) return true;
  if (needed > allocatable(0)) return false;
  for (int32_t i = 0; i < needed; ++i) t.blocks.push_back(take_free_block());
  return true;
}

void BlockPool::commit(int64_t request_id, std::span<const int32_t> tokens, int64_t num_computed) {
  Table& t = table(request_id);
  ALEM_CHECK(num_computed >= 0 && static_cast<size_t>(num_computed) <= tokens.size(),
             "block pool: commit of more tokens than the request has");
  const size_t full_blocks = static_cast<size_t>(num_computed / block_size_);
  ALEM_CHECK(full_blocks <= t.blocks.size(), "block pool: commit beyond the request's blocks");
  BlockHash parent = t.chain.empty() ? root_hash(t.salt) : t.chain.back();
  for (size_t i = t.chain.size(); i < full_blocks; ++i) {
    const auto block_tokens = tokens.subspan(i * block_size_, block_size_);
    const BlockHash h = hash_block(parent, block_tokens);
    Block& b = blocks_[t.blocks[i]];
    if (!b.hashed && by_hash_.count(h) == 0) {
      b.hashed = true;
      b.hash = h;
      b.parent = parent;
      b.tokens.assign(block_tokens.begin(), block_tokens.end());
      by_hash_.emplace(h, t.blocks[i]);
    }
    // Else an identical block is already shared (two requests computed the same prefix at
    // once), or a colliding one: this copy stays private and is dropped when freed.
    t.chain.push_back(h);
    parent = h;
  }
}

void BlockPool::free(int64_t request_id) {
  auto it = tables_.find(request_id);
  if (it == tables_.end()) return;
  const std::vector<int32_t>& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) drop_ref(*b);
  tables_.erase(it);
}

int32_t BlockPool::ref_count(int32_t block_id) const {
  ALEM_CHECK(block_id >= 0 && block_id < num_blocks(), "block id out of range");
  return blocks_[block_id].ref_count;
}

bool BlockPool::is_cached(int32_t block_id) const {
  ALEM_CHECK(block_id >= 0 && block_id < num_blocks(), "block id out of range");
  return blocks_[block_id].hashed;
}

void BlockPool::check_invariants() const {
  std::vector<int32_t> refs(blocks_.size(), 0);
  for (const auto& [id, t] : tables_) {
    ALEM_CHECK(t.chain.size() <= t.blocks.size(), "a table has more hashes than blocks");
    for (int32_t b : t.blocks) {
      ALEM_CHECK(b >= 0 && b < num_blocks(), "a table holds an out-of-range block id");
      ++refs[b];
    }
  }
  int32_t used = 0;
  for (size_t b = 0; b < blocks_.size(); ++b) {
    const std::string name = "block " + std::to_string(b);
    ALEM_CHECK(blocks_[b].ref_count == refs[b], name + " has ref count " +
                                                    std::to_string(blocks_[b].ref_count) + " but " +
                                                    std::to_string(refs[b]) + " tables hold it");
    used += refs[b] > 0;
    if (blocks_[b].hashed) {
      auto it = by_hash_.find(blocks_[b].hash);
      ALEM_CHECK(it != by_hash_.end() && it->second == int32_t(b),
                 name + " is not indexed by its hash");
      ALEM_CHECK(blocks_[b].tokens.size() == size_t(block_size_),
                 name + " keeps a partial token list");
    }
    ALEM_CHECK(blocks_[b].in_lru == (refs[b] == 0 && blocks_[b].hashed),
               name + " is in the LRU list exactly when it is free and cached");
  }
  ALEM_CHECK(used == num_used_, "used-block counter is off");
  int32_t lru_count = 0;
  for (int32_t b = lru_head_, prev = -1; b >= 0; prev = b, b = blocks_[b].lru_next) {
    ALEM_CHECK(blocks_[b].lru_prev == prev, "LRU list links are broken");
    ALEM_CHECK(++lru_count <= num_blocks(), "LRU list has a cycle");
  }
  ALEM_CHECK(lru_count == lru_size_, "LRU size counter is off");
  for (int32_t b : empty_) {
    ALEM_CHECK(refs[b] == 0 && !blocks_[b].hashed && !blocks_[b].in_lru,
               "block " + std::to_string(b) + " on the empty list is in use or cached");
  }
  ALEM_CHECK(int32_t(empty_.size()) + lru_size_ + used == num_blocks(),
             "empty + evictable + used blocks do not add up to the pool size");
  for (const auto& [h, b] : by_hash_) {
    ALEM_CHECK(blocks_[b].hashed && blocks_[b].hash == h, "hash index points at the wrong block");
  }
}

}  // namespace alem
