// The model store's hash tree (format version 2). Storage is untrusted, so every rank must check
// the bytes it actually reads against the announced model digest, without reading the whole
// model. Leaves are SHA-256 hashes of the 64 x 64 tiles of each stored dataset (the HDF5 chunks;
// 1-D tensors use tiles of 4096 elements); a tensor root folds the leaves of a tensor (and of
// its int8 scales); the model digest folds the config, the tokenizer and every tensor root.
// A rank reads the tiles covering its hyperslab, hashes them and compares them with the stored
// leaves, whose fold it checks against the stored tensor root, whose fold with the others is the
// digest. Definitions in docs/model-store.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/tokenizer_data.h"

namespace alem::integrity {

using Hash = std::array<uint8_t, 32>;

constexpr int64_t kTileEdge = 64;      // 2-D leaves: 64 x 64 elements, clipped at the edges
constexpr int64_t kVectorTile = 4096;  // 1-D leaves: 4096 elements, clipped at the end
constexpr const char* kTensorRootDomain = "alem-tensor-root-v2";
constexpr const char* kModelDigestDomain = "alem-model-digest-v2";

// A dataset viewed as [rows, cols] (a 1-D tensor of n elements is [1, n]) cut into tiles.
struct TileGrid {
  int64_t rows = 0, cols = 0;
  int64_t tile_rows = 0, tile_cols = 0;
  int64_t grid_rows() const { return (rows + tile_rows - 1) / tile_rows; }
  int64_t grid_cols() const { return (cols + tile_cols - 1) / tile_cols; }
  int64_t leaf_count() const { return grid_rows() * grid_cols(); }
};
TileGrid tile_grid(const std::vector<int64_t>& shape);

// A rectangle of a dataset: rows [row_begin, row_begin + rows) x cols [col_begin, ...).
struct Block {
  int64_t row_begin = 0, rows = 0, col_begin = 0, cols = 0;
  bool operator==(const Block&) const = default;
};
// The smallest block made of whole tiles that contains `wanted`.
Block covering_block(const TileGrid& grid, const Block& wanted);

// Hashes every tile of `block` (which must be made of whole tiles), whose elements are in `data`
// row-major with `element_size` bytes each. Returns the hashes in row-major tile order of the
// block. Large blocks are hashed on several threads.
std::vector<Hash> hash_block(const TileGrid& grid, const Block& block, const uint8_t* data,
                             size_t element_size);

// Checks the hashes of `block`'s tiles against the dataset's leaves (row-major over the grid).
// Returns -1 when all match, else the index (into `hashes`) of the first tile that differs.
int64_t first_mismatch(const TileGrid& grid, const Block& block, const std::vector<Hash>& hashes,
                       const std::vector<Hash>& leaves);

// SHA-256(str(domain) str(name) str(dtype) u64(rank) i64(dims)... u64(tile_rows) u64(tile_cols)
//         u64(n) leaves... [int8: u64(n_scales) scale leaves...]).
Hash tensor_root(const std::string& name, const std::string& dtype,
                 const std::vector<int64_t>& shape, const std::vector<Hash>& leaves,
                 const std::vector<Hash>* scale_leaves);

// The model digest (hex) from the config, the tokenizer and (name, root) of every tensor in
// byte-wise sorted name order.
std::string model_digest(const std::string& config_json, const TokenizerData& tokenizer,
                         const std::vector<std::pair<std::string, Hash>>& tensor_roots);

std::string to_hex(const Hash& h);

}  // namespace alem::integrity
