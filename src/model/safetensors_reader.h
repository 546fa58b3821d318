// Reader for Hugging Face safetensors checkpoints: an 8-byte little-endian header length, a JSON
// header naming each tensor's dtype, shape and byte range, then raw little-endian data. Used by
// `alem convert` for HF folders (one model.safetensors, or shards listed in
// model.safetensors.index.json). Every header field is checked against the file size, so a
// truncated or corrupt file raises alem::Error naming the file and tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace alem {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // "F32", "F16", "BF16", ... as in the header
  std::vector<int64_t> shape;  // row-major, outermost first (HF orientation)
  uint64_t data_begin = 0;     // byte range inside the data section
  uint64_t data_end = 0;

  int64_t element_count() const;
};

class SafetensorsFile {
 public:
  // Reads and validates the header; tensor data is read on demand.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const;
  const std::vector<SafetensorsTensor>& tensors() const;
  const SafetensorsTensor* find(const std::string& name) const;
  // The optional "__metadata__" string map.
  const std::map<std::string, std::string>& metadata() const;
  // The tensor's raw bytes.
  std::vector<uint8_t> read_raw(const std::string& name) const;
  // The tensor converted to f32 (dtypes F32, F16, BF16; others throw alem::Error).
  std::vector<float> read_f32(const std::string& name) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A checkpoint folder: model.safetensors, or the shards named by model.safetensors.index.json
// (or, failing both, every *.safetensors file in the folder). Tensor names must be unique.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& dir);
  ~SafetensorsCheckpoint();
  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  std::vector<std::string> tensor_names() const;  // sorted
  const SafetensorsTensor* find(const std::string& name) const;
  std::vector<float> read_f32(const std::string& name) const;
  size_t shard_count() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, size_t> shard_of_;
};

}  // namespace alem
