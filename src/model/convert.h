// Model import: turns a GGUF file or a Hugging Face folder (config.json, *.safetensors,
// tokenizer.json) into alem's HDF5 model store, and re-checks a store's digest. These functions
// are what `alem convert` calls; they print nothing and never exit. The output is written to
// "<out>.part" and renamed into place only after it is complete and its digest recorded, so a
// crash never leaves a half-written store under the final name.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/architecture.h"  // expected_tensors

namespace alem {

struct ModelConfig;

struct ConvertOptions {
  // Stored type of 2-D weight matrices (f32, bf16, f16, int8 or a ggml block type). 1-D tensors
  // (norms, biases) are always stored as f32. A K-quant (q3_k ... q6_k) or iq4_xs applies to
  // matrices whose rows are whole 256-value super-blocks; the others are stored as q8_0 (iq4_nl
  // for iq4_xs).
  DType dtype = DType::BF16;
  // GGUF only: keep 2-D tensors of the ggml block types alem computes with (Q4_0, Q4_1, Q5_0,
  // Q5_1, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) as they are, block for block, and 2-D
  // F32/F16/BF16 tensors in their own type; tensors of other types (Q2_K) are expanded to
  // `dtype`. Groups the engine stacks keep mixed types where it multiplies them part by part
  // (q/k/v, a dense gate/up); an expert's gate/up of two types are both expanded to `dtype`.
  bool keep_gguf_types = false;
  // Overrides the model name recorded in the config (empty: keep the source's name).
  std::string model_name;
  // Called before each tensor and after the last is written: (tensors done, tensors in
  // all). `alem convert` shows it (cli/progress.h).
  std::function<void(int64_t done, int64_t total)> progress;
};

struct ConvertReport {
  std::string output_path;
  std::string source;  // "gguf:<file name>" or "safetensors:<folder name>"
  int64_t tensor_count = 0;
  int64_t parameter_count = 0;  // elements over all stored tensors
  uint64_t bytes_written = 0;   // size of the finished .h5 file
  std::string digest;           // hex SHA-256 recorded in the store
  double seconds = 0.0;
};

// Imports a GGUF file (llama, qwen2, qwen3; see docs/model-store.md for the tensor types).
ConvertReport convert_gguf(const std::string& gguf_path, const std::string& out_h5,
                           const ConvertOptions& options);
// Imports a Hugging Face model folder: config.json, model.safetensors or sharded
// model-*.safetensors with model.safetensors.index.json, and tokenizer.json.
ConvertReport convert_safetensors(const std::string& hf_dir, const std::string& out_h5,
                                  const ConvertOptions& options);

// Opens a store, recomputes its digest and checks every tensor the config implies is present
// with the right shape. Returns "" when the store is intact, otherwise what is wrong. Throws
// alem::Error only when the file cannot be opened as a model store at all.
std::string verify_store(const std::string& path);

}  // namespace alem
