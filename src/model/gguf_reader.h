// Reader for GGUF (llama.cpp's model file format, versions 2 and 3): metadata, tensor directory,
// and tensor data expanded to f32 in Hugging Face orientation and naming. This is how alem
// imports its built-in default model (SmolLM2-135M-Instruct, Q4_1). Every offset and length in
// the file is bounds-checked: a truncated or corrupt file raises alem::Error naming the problem,
// never a crash. The file is memory-mapped read-only; only touched pages are read.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/tokenizer_data.h"

namespace alem {

// On-disk metadata value types (gguf_type).
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// One metadata value. Scalars fill exactly one of integer/real/text (booleans and all integer
// widths use `integer`; u64 values above INT64_MAX are rejected). Arrays set `element_type`
// and fill `strings`, `integers`, `reals` or `nested` according to it.
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  int64_t integer = 0;
  double real = 0.0;
  std::string text;
  GgufValueType element_type = GgufValueType::U8;  // arrays only
  std::vector<std::string> strings;
  std::vector<int64_t> integers;
  std::vector<double> reals;
  std::vector<GgufValue> nested;  // arrays of arrays
  // Number of elements of an array value (0 for scalars).
  size_t array_size() const;
};

struct GgufTensorInfo {
  std::string name;           // as in the file: "blk.0.attn_q.weight"
  std::string hf_name;        // Hugging Face name, or "" when the tensor has no HF counterpart
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (columns)
  uint32_t type = 0;          // ggml type id (see gguf_quant.h)
  uint64_t offset = 0;        // relative to the start of the data section
  uint64_t bytes = 0;

  int64_t element_count() const;
  // HF orientation: rows = product of dims[1..], cols = dims[0]. A 1-D tensor has rows == 1.
  int64_t rows() const;
  int64_t cols() const { return dims.empty() ? 1 : dims[0]; }
  // HF shape: {rows, cols} for 2-D tensors, {cols} for 1-D ones.
  std::vector<int64_t> hf_shape() const;
};

class GgufFile {
 public:
  // Opens, maps and parses the file. Throws alem::Error for a missing, truncated or corrupt file.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const;
  uint32_t version() const;
  uint64_t alignment() const;
  uint64_t file_size() const;
  // Byte offset of the tensor data section (after the header, aligned).
  uint64_t data_offset() const;
  // "llama", "qwen2", ... (general.architecture).
  const std::string& architecture() const;

  const std::map<std::string, GgufValue>& metadata() const;
  bool has_key(const std::string& key) const;
  // Typed lookups; throw alem::Error naming the key when absent or of another type.
  const GgufValue& value(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;

  const std::vector<GgufTensorInfo>& tensors() const;
  // Finds a tensor by GGUF name or HF name; nullptr when absent.
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // Raw bytes of a tensor inside the mapping (bounds-checked at open).
  const uint8_t* tensor_data(const GgufTensorInfo& tensor) const;

  // Model hyper-parameters from the architecture's metadata keys (llama, qwen2, qwen3).
  // Throws alem::Error for other architectures or missing keys.
  ModelConfig model_config() const;
  // Vocabulary, merges, token kinds, special ids and chat template (tokenizer.* keys).
  TokenizerData tokenizer_data() const;

  // The tensor (GGUF or HF name) as f32, row-major [rows * cols] in HF orientation. For the
  // llama architecture, attn_q and attn_k rows are un-permuted back to HF's rotate-half order
  // (llama.cpp's converter interleaves them; see docs/model-store.md).
  std::vector<float> dequantize(const std::string& name) const;
  // The tensor's bytes as stored (its ggml blocks, unexpanded), rows in HF order: attn_q and
  // attn_k rows un-permuted as dequantize() does. Only for 2-D tensors.
  std::vector<uint8_t> raw_rows(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Maps a GGUF tensor name to its Hugging Face name ("" when there is none, e.g. rope_freqs).
std::string gguf_to_hf_tensor_name(const std::string& gguf_name);

// Inverse of llama.cpp's q/k row permutation, in place on a row-major [rows, cols] matrix:
// HF row h*hd + i*hd/2 + j  <-  GGUF row h*hd + 2*j + i  (hd = rows / n_head, i in {0,1}).
void unpermute_llama_qk_rows(std::vector<float>& values, int64_t rows, int64_t cols, int n_head);

}  // namespace alem
