// BlockPool: bookkeeping for the paged KV cache of one replica (no tensors here; the engine owns
// the memory, indexed by the block ids handed out). The cache is cut into a fixed number of
// blocks of block_size tokens. Blocks are ref-counted so requests with a common prompt prefix
// share them (prefix caching, as in vLLM v1):
//
//  * A full block whose KV has been computed is identified by a hash chained over
//    (parent block's hash, this block's token ids), seeded by a per-tenant salt. The hash is
//    SHA-256 truncated to 128 bits; the block also keeps its parent hash and token ids, and a
//    lookup only hits when they compare equal, so a hash collision can never hand one request
//    another request's KV.
//  * A block whose last user frees it keeps its contents and its hash: it is "cached" and can be
//    picked up again by a later request with the same prefix, until allocation pressure evicts
//    it. Eviction takes never-used blocks first, then cached blocks least recently freed first;
//    a request's blocks are freed tail first so the deepest (least shared) blocks go first.
//  * Memory hygiene: a block whose contents are given up (its last user frees it and it has no
//    hash, or it is evicted from the prefix cache) is queued for wiping; the engine takes the
//    queue every step and zeroes those blocks on every rank before the step's KV writes.
//
// Not thread-safe: the scheduler (one thread on the replica leader) owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace alem {

// 128-bit block identity hash.
struct BlockHash {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const BlockHash&) const = default;
};

class BlockPool {
 public:
  BlockPool(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return static_cast<int32_t>(blocks_.size()); }
  int32_t num_used_blocks() const { return num_used_; }                 // ref count > 0
  int32_t num_free_blocks() const { return num_blocks() - num_used_; }  // ref 0: empty or cached
  int32_t num_cached_blocks() const { return static_cast<int32_t>(by_hash_.size()); }  // any ref
  int32_t num_evictable_blocks() const { return lru_size_; }  // cached with ref 0
  // Blocks needed to hold `num_tokens` tokens.
  int32_t blocks_for_tokens(int64_t num_tokens) const {
    return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
  }

  // How many leading tokens of `tokens` are held in cached full blocks, looked up without
  // changing anything. At most tokens.size() - 1 (rounded down to whole blocks): the last token
  // is always computed, since its logits make the next token.
  int32_t cached_prefix_tokens(std::span<const int32_t> tokens, const std::string& salt = {}) const;

  // Starts `request_id`'s block table: shares the cached prefix blocks of `tokens` (ref++) and
  // allocates fresh blocks so the table covers cached + num_new_tokens tokens. Returns the
  // number of cached tokens (as cached_prefix_tokens), or nullopt when there are not enough free
  // blocks, in which case nothing changed. The request must not have a table yet.
  std::optional<int32_t> allocate_for(int64_t request_id, std::span<const int32_t> tokens,
                                      int32_t num_new_tokens, const std::string& salt = {});

  // Extends the request's table to cover `num_tokens` tokens in total. Returns false (and
  // changes nothing) when there are not enough free blocks.
  bool grow(int64_t request_id, int64_t num_tokens);

  // Records that the KV of tokens [0, num_computed) of the request is now in its blocks: every
  // full block among them becomes shareable under its hash (unless an identical block already
  // is). `tokens` holds at least num_computed token ids.
  void commit(int64_t request_id, std::span<const int32_t> tokens, int64_t num_computed);

  // Drops the request's references (tail block first). Blocks nobody references return to the
  // pool; those with a hash stay cached until evicted. Unknown ids are ignored.
  void free(int64_t request_id);

  // Hands over (and clears) the blocks queued for wiping, each once, in release order.
  std::vector<int32_t> take_blocks_to_wipe();
  int32_t num_blocks_to_wipe() const { return static_cast<int32_t>(to_wipe_.size()); }

  bool has_request(int64_t request_id) const { return tables_.count(request_id) != 0; }
  // The request's physical blocks, in token order. Throws for an unknown request.
  const std::vector<int32_t>& block_table(int64_t request_id) const;
  int32_t ref_count(int32_t block_id) const;
  bool is_cached(int32_t block_id) const;

  // Recounts every reference from the request tables and checks the free lists, the hash index
  // and the counters against them. Throws alem::Error naming the first inconsistency. For tests.
  void check_invariants() const;

 private:
  struct Block {
    int32_t ref_count = 0;
    bool hashed = false;  // registered in by_hash_
    BlockHash hash;
    BlockHash parent;
    std::vector<int32_t> tokens;  // the block's token ids, when hashed
    int32_t lru_prev = -1, lru_next = -1;
    bool in_lru = false;
  };
  struct Table {
    std::vector<int32_t> blocks;
    std::vector<BlockHash> chain;  // hashes of the first chain.size() blocks (committed ones)
    std::string salt;
  };
  struct HashOf {
    size_t operator()(const BlockHash& h) const { return static_cast<size_t>(h.lo ^ h.hi); }
  };

  BlockHash root_hash(const std::string& salt) const;
  BlockHash hash_block(const BlockHash& parent, std::span<const int32_t> block_tokens) const;
  // Cached blocks matching the leading full blocks of `tokens` (capped as cached_prefix_tokens).
  std::vector<int32_t> find_prefix(std::span<const int32_t> tokens, const std::string& salt,
                                   std::vector<BlockHash>* chain) const;
  // Blocks that can be handed out now, not counting `reserved` evictable ones about to be shared.
  int32_t allocatable(int32_t reserved) const;
  int32_t take_free_block();
  void add_ref(int32_t block_id);
  void drop_ref(int32_t block_id);
  void lru_push_back(int32_t block_id);
  void lru_remove(int32_t block_id);
  void unhash(int32_t block_id);
  Table& table(int64_t request_id);

  int32_t block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> empty_;                            // ref 0, no hash: taken first (stack)
  int32_t lru_head_ = -1, lru_tail_ = -1, lru_size_ = 0;  // ref 0, hashed: oldest at head
  int32_t num_used_ = 0;
  std::unordered_map<BlockHash, int32_t, HashOf> by_hash_;
  std::unordered_map<int64_t, Table> tables_;
  std::vector<int32_t> to_wipe_;  // released contents, not yet zeroed by the engine
  std::vector<bool> wipe_queued_;
  void queue_wipe(int32_t block_id);
};

}  // namespace alem
