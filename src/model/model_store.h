// The HDF5 model store: one file holding a model's config, tokenizer and every weight tensor,
// written by `alem convert` and read by every rank. Layout (format_version 2, see
// docs/model-store.md):
//   /                       attributes (fixed-length strings): format="alem-model",
//                           format_version=2, config_json (ModelConfig::to_json), model_digest
//                           (hex SHA-256 root of the hash tree), source (e.g. "gguf:<file>")
//   /tokenizer/             datasets tokens_bytes/tokens_offsets and merges_bytes/merges_offsets
//                           (uint8 blob + uint64 offsets), token_kinds (int32), chat_template
//                           (uint8); attributes model, pre_tokenizer, bos/eos/unknown/padding ids,
//                           add_bos_token
//   /tensors/<name>         one dataset per tensor, HF names
//                           ("model.layers.0.self_attn.q_proj.weight"), 2-D [rows, cols] or
//                           1-D (norms, biases); every dataset has a string attribute dtype:
//                           "f32" (IEEE f32), "bf16"/"f16" (stored as uint16 bit patterns) or
//                           "int8". 2-D tensors are chunked in 64x64 tiles (clipped at the
//                           edges), uncompressed, so a tensor-parallel shard (a row or column
//                           range) is a cheap hyperslab; 1-D tensors are contiguous f32.
//   /tensors/<name>.scales  int8 only: f32 [rows, cols/32] group scales, chunked 64x64
//   /integrity/leaves/<d>   uint8 [tiles, 32]: SHA-256 of every 64x64 tile of dataset <d>
//   /integrity/tensor_roots uint8 [tensors, 32]: each tensor's root, in name order
// Every rank opens the file read-only and reads only the slices it owns. Opening checks that the
// config, tokenizer and tensor roots fold to model_digest; every read hashes the tiles it covers
// and checks them against the leaves (store_integrity.h), so no byte that differs from what the
// digest names is ever returned. Readers may be used from several threads: calls into HDF5
// (which is not thread-safe) are serialised internally.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/tokenizer_data.h"
#include "model/weights.h"

namespace alem {

struct TensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // 1-D or 2-D
  DType dtype = DType::F32;
};

struct ModelStoreReadOptions {
  // Check every block read against the hash tree. Always on in alem; off only to measure what
  // the check costs (tests/unit/test_model_store.cc).
  bool verify_reads = true;
};

// Reads a model store. Construction opens the file and checks format and version; corrupt,
// truncated or foreign files throw alem::Error naming the problem.
class ModelStoreReader {
 public:
  explicit ModelStoreReader(const std::string& path, const ModelStoreReadOptions& options = {});
  ~ModelStoreReader();
  ModelStoreReader(const ModelStoreReader&) = delete;
  ModelStoreReader& operator=(const ModelStoreReader&) = delete;

  const ModelConfig& config() const;
  const TokenizerData& tokenizer() const;
  const std::string& model_digest() const;  // hex SHA-256 recorded at conversion
  std::vector<TensorInfo> list_tensors() const;
  bool has_tensor(const std::string& name) const;
  TensorInfo tensor_info(const std::string& name) const;

  // Reads rows [row_begin, row_begin+row_count) and columns [col_begin, col_begin+col_count) of
  // a 2-D tensor into a WeightMatrix of the stored dtype (no conversion). For int8 the column
  // range must be group-aligned. col_count = -1 means "to the end".
  WeightMatrix read_matrix(const std::string& name, int64_t row_begin, int64_t row_count,
                           int64_t col_begin = 0, int64_t col_count = -1) const;
  // Reads a slice of a 1-D tensor (norm weights, biases) as f32.
  std::vector<float> read_vector(const std::string& name, int64_t begin = 0,
                                 int64_t count = -1) const;
  // Bytes of tensor data read through this reader so far (payload only, for the shard test).
  uint64_t bytes_read() const;

  // Recomputes the whole hash tree from the file's content and compares every tile hash, tensor
  // root and the digest with the recorded ones. Returns an empty string when all match,
  // otherwise a description naming the tensors (and tiles) that differ.
  std::string verify() const;

 private:
  friend std::string compute_model_store_digest(const std::string& path);    // model_store_writer.h
  friend std::string record_model_store_integrity(const std::string& path);  // model_store_writer.h
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace alem
