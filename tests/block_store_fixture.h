// A one-layer model store holding one random [rows][cols] matrix per block type ("m.<dtype>"),
// shared by the block-weight tests (test_block_weights: Q4_0/Q4_1/Q8_0; test_kquant_weights:
// the K-quant super-blocks), which check that the store keeps each type's blocks byte for byte
// and cuts shards only between them. The file is removed when the fixture goes.
#pragma once

#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/model_store_writer.h"
#include "model/tokenizer_data.h"
#include "model/weights.h"

namespace alem::test {

struct BlockStore {
  std::string path;
  int64_t rows = 0, cols = 0;
  std::map<DType, WeightMatrix> matrices;

  // `draw` gives the values, row by row, matrix after matrix in the order of `dtypes`;
  // `more(writer)` may add or try more before the store is finished.
  BlockStore(std::string store_path, int64_t rows_, int64_t cols_,
             std::initializer_list<DType> dtypes, const std::function<float()>& draw,
             const std::function<void(ModelStoreWriter&)>& more = {})
      : path(std::move(store_path)), rows(rows_), cols(cols_) {
    ModelConfig c;
    c.name = "blocks";
    c.vocab_size = 8;
    c.hidden_size = 64;
    c.num_layers = 1;
    c.num_heads = 1;
    c.num_kv_heads = 1;
    c.head_dim = 64;
    c.intermediate_size = 64;
    c.max_position_embeddings = 16;
    TokenizerData t;
    t.tokens = {"a", "b"};
    t.token_kinds = {1, 1};
    ModelStoreWriter w(path, c, t, "test:blocks");
    std::vector<float> values(rows * cols);
    for (DType dtype : dtypes) {
      for (float& v : values) v = draw();
      matrices.emplace(dtype, make_weight_matrix(values.data(), rows, cols, dtype));
      w.add_matrix(name(dtype), matrices.at(dtype));
    }
    if (more) more(w);
    w.finish();
  }
  ~BlockStore() { std::filesystem::remove(path); }
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  static std::string name(DType dtype) { return "m." + dtype_name(dtype); }
};

}  // namespace alem::test
