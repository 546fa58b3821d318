// Writes an HDF5 model store (layout in model_store.h and docs/model-store.md). The converter
// feeds it f32 values tensor by tensor; the writer rounds or quantises them to the stored type,
// lays them out in 64x64 chunks, and at finish() records the hash tree (a SHA-256 per tile, a
// root per tensor) and its root, the model digest, computed by reading the file back (so the
// digest describes what is on disk).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/model_config.h"
#include "model/tokenizer_data.h"
#include "model/weights.h"

namespace alem {

class ModelStoreWriter {
 public:
  // Creates (or truncates) the file and writes the root attributes and the tokenizer group.
  // `source` is recorded as the root attribute "source" (e.g. "gguf:model.gguf").
  ModelStoreWriter(const std::string& path, const ModelConfig& config,
                   const TokenizerData& tokenizer, const std::string& source);
  ~ModelStoreWriter();
  ModelStoreWriter(const ModelStoreWriter&) = delete;
  ModelStoreWriter& operator=(const ModelStoreWriter&) = delete;

  // Adds a 2-D tensor from row-major f32 values, stored as `dtype` (int8 needs cols % 32 == 0).
  void add_matrix(const std::string& name, const float* values, int64_t rows, int64_t cols,
                  DType dtype);
  // Adds an already-built matrix as is (its dtype, and scales for int8).
  void add_matrix(const std::string& name, const WeightMatrix& matrix);
  // Adds a 1-D tensor (norm weight or bias), always stored as f32.
  void add_vector(const std::string& name, const float* values, int64_t count);

  int64_t tensor_count() const;
  int64_t element_count() const;

  // Closes the file, computes the hash tree from its content, records it (/integrity) and its
  // root as the root attribute model_digest, and returns the digest (hex). The writer cannot be
  // used afterwards.
  std::string finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The canonical content digest of a store file (hex SHA-256), recomputed from the file and
// ignoring any digest already recorded in it. Definition in docs/model-store.md.
std::string compute_model_store_digest(const std::string& path);

// Computes the hash tree of a store whose tensors are all written, records it (/integrity and
// the model_digest attribute) and returns the digest. Used by ModelStoreWriter::finish().
std::string record_model_store_integrity(const std::string& path);

}  // namespace alem
