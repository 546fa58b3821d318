// The model store's hash tree: tile leaves, tensor roots and the model digest (SHA-256, OpenSSL
// EVP). Shared by the writer (which records leaves and roots) and the reader (which checks every
// block it reads, and recomputes everything for `alem convert --verify`).
#include "model/store_integrity.h"

#include <openssl/evp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace alem::integrity {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the model store hashes in-memory little-endian bytes");

// Blocks at least this large are hashed on several threads.
constexpr size_t kParallelBytes = size_t{4} << 20;
constexpr unsigned kMaxHashThreads = 4;

// SHA-256 fetched once: OpenSSL 3 looks an implicitly fetched EVP_sha256() up again on every
// EVP_DigestInit_ex, which made hashing one 64 x 64 tile cost more than the hash itself.
const EVP_MD* sha256_md() {
  static EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  ALEM_CHECK(md != nullptr, "cannot fetch SHA-256 (OpenSSL)");
  return md;
}

class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) {
    ALEM_CHECK(ctx_ != nullptr, "cannot allocate a SHA-256 context (OpenSSL)");
    reset();
  }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void reset() {
    ALEM_CHECK(EVP_DigestInit_ex(ctx_, sha256_md(), nullptr) == 1,
               "cannot initialise SHA-256 (OpenSSL)");
  }
  void bytes(const void* data, size_t size) {
    if (size > 0) ALEM_CHECK(EVP_DigestUpdate(ctx_, data, size) == 1, "SHA-256 update failed");
  }
  void u64(uint64_t v) { bytes(&v, 8); }
  void i64(int64_t v) { bytes(&v, 8); }
  void text(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  Hash finish() {
    Hash out{};
    unsigned int len = 0;
    ALEM_CHECK(EVP_DigestFinal_ex(ctx_, out.data(), &len) == 1 && len == out.size(),
               "SHA-256 final failed");
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

// Hashes tile rows [tr_begin, tr_end) of the block (tile-row indices relative to the block).
void hash_tile_rows(const TileGrid& g, const Block& b, const uint8_t* data, size_t element_size,
                    int64_t tr_begin, int64_t tr_end, int64_t tiles_per_row, Hash* out) {
  Sha256 h;
  const size_t row_bytes = static_cast<size_t>(b.cols) * element_size;
  for (int64_t tr = tr_begin; tr < tr_end; ++tr) {
    const int64_t r0 = tr * g.tile_rows;
    const int64_t nr = std::min(g.tile_rows, b.rows - r0);
    for (int64_t tc = 0; tc < tiles_per_row; ++tc) {
      const int64_t c0 = tc * g.tile_cols;
      const int64_t nc = std::min(g.tile_cols, b.cols - c0);
      h.reset();
      for (int64_t r = r0; r < r0 + nr; ++r) {
        h.bytes(data + static_cast<size_t>(r) * row_bytes + static_cast<size_t>(c0) * element_size,
                static_cast<size_t>(nc) * element_size);
      }
      out[tr * tiles_per_row + tc] = h.finish();
    }
  }
}

}  // namespace

TileGrid tile_grid(const std::vector<int64_t>& shape) {
  ALEM_CHECK(shape.size() == 1 || shape.size() == 2, "tile_grid: rank must be 1 or 2");
  TileGrid g;
  if (shape.size() == 1) {
    g.rows = 1;
    g.cols = shape[0];
    g.tile_rows = 1;
    g.tile_cols = kVectorTile;
  } else {
    g.rows = shape[0];
    g.cols = shape[1];
    g.tile_rows = kTileEdge;
    g.tile_cols = kTileEdge;
  }
  return g;
}

Block covering_block(const TileGrid& g, const Block& w) {
  Block b;
  b.row_begin = w.row_begin / g.tile_rows * g.tile_rows;
  b.col_begin = w.col_begin / g.tile_cols * g.tile_cols;
  const int64_t row_end =
      std::min(g.rows, (w.row_begin + w.rows + g.tile_rows - 1) / g.tile_rows * g.tile_rows);
  const int64_t col_end =
      std::min(g.cols, (w.col_begin + w.cols + g.tile_cols - 1) / g.tile_cols * g.tile_cols);
  b.rows = row_end - b.row_begin;
  b.cols = col_end - b.col_begin;
  return b;
}

std::vector<Hash> hash_block(const TileGrid& g, const Block& b, const uint8_t* data,
                             size_t element_size) {
  ALEM_CHECK(b.row_begin % g.tile_rows == 0 && b.col_begin % g.tile_cols == 0 &&
                 (b.rows % g.tile_rows == 0 || b.row_begin + b.rows == g.rows) &&
                 (b.cols % g.tile_cols == 0 || b.col_begin + b.cols == g.cols),
             "hash_block: the block is not made of whole tiles");
  const int64_t tile_rows = (b.rows + g.tile_rows - 1) / g.tile_rows;
  const int64_t tiles_per_row = (b.cols + g.tile_cols - 1) / g.tile_cols;
  std::vector<Hash> out(static_cast<size_t>(tile_rows * tiles_per_row));
  const size_t total = static_cast<size_t>(b.rows * b.cols) * element_size;
  const unsigned threads =
      total < kParallelBytes
          ? 1u
          : static_cast<unsigned>(std::min<int64_t>(
                tile_rows,
                std::min(kMaxHashThreads, std::max(1u, std::thread::hardware_concurrency()))));
  if (threads <= 1) {
    hash_tile_rows(g, b, data, element_size, 0, tile_rows, tiles_per_row, out.data());
    return out;
  }
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(threads);
  for (unsigned t = 0; t < threads; ++t) {
    const int64_t begin = tile_rows * t / threads, end = tile_rows * (t + 1) / threads;
    workers.emplace_back([&, t, begin, end] {
      try {
        hash_tile_rows(g, b, data, element_size, begin, end, tiles_per_row, out.data());
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (std::thread& w : workers) w.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return out;
}

int64_t first_mismatch(const TileGrid& g, const Block& b, const std::vector<Hash>& hashes,
                       const std::vector<Hash>& leaves) {
  const int64_t tr0 = b.row_begin / g.tile_rows, tc0 = b.col_begin / g.tile_cols;
  const int64_t tiles_per_row = (b.cols + g.tile_cols - 1) / g.tile_cols;
  for (size_t i = 0; i < hashes.size(); ++i) {
    const int64_t tr = tr0 + static_cast<int64_t>(i) / tiles_per_row;
    const int64_t tc = tc0 + static_cast<int64_t>(i) % tiles_per_row;
    const size_t leaf = static_cast<size_t>(tr * g.grid_cols() + tc);
    if (leaf >= leaves.size() || hashes[i] != leaves[leaf]) return static_cast<int64_t>(i);
  }
  return -1;
}

Hash tensor_root(const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, const std::vector<Hash>& leaves,
                 const std::vector<Hash>* scale_leaves) {
  const TileGrid g = tile_grid(shape);
  Sha256 h;
  h.text(kTensorRootDomain);
  h.text(name);
  h.text(dtype);
  h.u64(shape.size());
  for (int64_t d : shape) h.i64(d);
  h.u64(static_cast<uint64_t>(g.tile_rows));
  h.u64(static_cast<uint64_t>(g.tile_cols));
  h.u64(leaves.size());
  for (const Hash& leaf : leaves) h.bytes(leaf.data(), leaf.size());
  if (scale_leaves) {
    h.u64(scale_leaves->size());
    for (const Hash& leaf : *scale_leaves) h.bytes(leaf.data(), leaf.size());
  }
  return h.finish();
}

std::string model_digest(const std::string& config_json, const TokenizerData& t,
                         const std::vector<std::pair<std::string, Hash>>& tensor_roots) {
  Sha256 h;
  h.text(kModelDigestDomain);
  h.text(config_json);
  h.text(t.model);
  h.text(t.pre_tokenizer);
  h.u64(t.tokens.size());
  for (const std::string& s : t.tokens) h.text(s);
  h.u64(t.token_kinds.size());
  h.bytes(t.token_kinds.data(), t.token_kinds.size() * sizeof(int32_t));
  h.u64(t.merges.size());
  for (const std::string& s : t.merges) h.text(s);
  h.i64(t.bos_token_id);
  h.i64(t.eos_token_id);
  h.i64(t.unknown_token_id);
  h.i64(t.padding_token_id);
  h.i64(t.add_bos_token ? 1 : 0);
  h.text(t.chat_template);
  h.u64(tensor_roots.size());
  for (const auto& [name, root] : tensor_roots) {
    h.text(name);
    h.bytes(root.data(), root.size());
  }
  return to_hex(h.finish());
}

std::string to_hex(const Hash& hash) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(64);
  for (uint8_t b : hash) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

}  // namespace alem::integrity
