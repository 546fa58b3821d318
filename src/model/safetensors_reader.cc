// safetensors parsing with explicit checks on every header field (length, JSON shape, dtype,
// byte ranges versus shapes and file size), and the shard index of multi-file checkpoints.
#include "model/safetensors_reader.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/json_input.h"

namespace alem {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit is 100 MB

uint64_t safetensors_dtype_size(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" ||
      dtype == "F8_E5M2") {
    return 1;
  }
  return 0;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int64_t SafetensorsTensor::element_count() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

struct SafetensorsFile::Impl {
  std::string path;
  uint64_t file_size = 0;
  uint64_t data_start = 0;
  std::vector<SafetensorsTensor> tensors;
  std::map<std::string, size_t> index;
  std::map<std::string, std::string> metadata;
};

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot open safetensors file " + path);
  in.seekg(0, std::ios::end);
  impl_->file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  ALEM_CHECK(impl_->file_size >= 8, "safetensors file " + path +
                                        " is truncated: " + std::to_string(impl_->file_size) +
                                        " bytes, shorter than the 8-byte header length");
  uint64_t header_len = 0;
  in.read(reinterpret_cast<char*>(&header_len), 8);
  ALEM_CHECK(header_len <= kMaxHeaderBytes && header_len <= impl_->file_size - 8,
             "safetensors file " + path + " is truncated or corrupt: header length " +
                 std::to_string(header_len) + " exceeds the file size " +
                 std::to_string(impl_->file_size));
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  ALEM_CHECK(in.good(), "cannot read the header of safetensors file " + path);
  impl_->data_start = 8 + header_len;
  const uint64_t data_size = impl_->file_size - impl_->data_start;

  json j;
  try {
    j = parse_json_bounded(header);  // bounded nesting: deep JSON is an error, not a crash
  } catch (const JsonInputError& e) {
    ALEM_FAIL("safetensors file " + path + " has a corrupt JSON header: " + e.what());
  }
  ALEM_CHECK(j.is_object(), "safetensors file " + path + ": header is not a JSON object");
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      ALEM_CHECK(entry.is_object(), "safetensors file " + path + ": __metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (v.is_string()) impl_->metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = "safetensors file " + path + ": tensor '" + name + "'";
    ALEM_CHECK(entry.is_object() && entry.contains("dtype") && entry["dtype"].is_string() &&
                   entry.contains("shape") && entry["shape"].is_array() &&
                   entry.contains("data_offsets") && entry["data_offsets"].is_array() &&
                   entry["data_offsets"].size() == 2,
               what + " needs dtype, shape and data_offsets [begin, end]");
    SafetensorsTensor t;
    t.name = name;
    t.dtype = entry["dtype"].get<std::string>();
    const uint64_t elem = safetensors_dtype_size(t.dtype);
    ALEM_CHECK(elem > 0, what + " has unknown dtype '" + t.dtype + "'");
    uint64_t elements = 1;
    for (const json& d : entry["shape"]) {
      ALEM_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                 what + " has a non-integer or negative dimension");
      const uint64_t dim = d.get<uint64_t>();
      ALEM_CHECK(dim <= (uint64_t{1} << 40) && (dim == 0 || elements <= (uint64_t{1} << 48) / dim),
                 what + " has an impossible shape");
      t.shape.push_back(static_cast<int64_t>(dim));
      elements *= dim;
    }
    const json& offsets = entry["data_offsets"];
    ALEM_CHECK(offsets[0].is_number_unsigned() && offsets[1].is_number_unsigned(),
               what + ": data_offsets are not unsigned integers");
    t.data_begin = offsets[0].get<uint64_t>();
    t.data_end = offsets[1].get<uint64_t>();
    ALEM_CHECK(t.data_begin <= t.data_end && t.data_end <= data_size,
               what + " has byte range [" + std::to_string(t.data_begin) + ", " +
                   std::to_string(t.data_end) + ") outside the data section of " +
                   std::to_string(data_size) + " bytes (truncated file?)");
    ALEM_CHECK(t.data_end - t.data_begin == elements * elem,
               what + " holds " + std::to_string(t.data_end - t.data_begin) + " bytes, expected " +
                   std::to_string(elements * elem) + " for its shape and dtype " + t.dtype);
    impl_->index[name] = impl_->tensors.size();
    impl_->tensors.push_back(std::move(t));
  }
  std::sort(impl_->tensors.begin(), impl_->tensors.end(),
            [](const SafetensorsTensor& a, const SafetensorsTensor& b) { return a.name < b.name; });
  for (size_t i = 0; i < impl_->tensors.size(); ++i) impl_->index[impl_->tensors[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const {
  return impl_->path;
}
const std::vector<SafetensorsTensor>& SafetensorsFile::tensors() const {
  return impl_->tensors;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

std::vector<uint8_t> SafetensorsFile::read_raw(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  ALEM_CHECK(t != nullptr, "safetensors file " + impl_->path + " has no tensor '" + name + "'");
  std::vector<uint8_t> bytes(t->data_end - t->data_begin);
  std::ifstream in(impl_->path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(impl_->data_start + t->data_begin));
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ALEM_CHECK(in.good() || bytes.empty(),
             "cannot read tensor '" + name + "' from safetensors file " + impl_->path);
  return bytes;
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  ALEM_CHECK(t != nullptr, "safetensors file " + impl_->path + " has no tensor '" + name + "'");
  ALEM_CHECK(t->dtype == "F32" || t->dtype == "F16" || t->dtype == "BF16",
             "safetensors tensor '" + name + "' in " + impl_->path + " has dtype " + t->dtype +
                 "; alem imports F32, F16 and BF16");
  const std::vector<uint8_t> raw = read_raw(name);
  const size_t n = static_cast<size_t>(t->element_count());
  std::vector<float> out(n);
  if (t->dtype == "F32") {
    std::memcpy(out.data(), raw.data(), n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, raw.data() + 2 * i, 2);
      out[i] = t->dtype == "F16" ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return out;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& dir) {
  namespace fs = std::filesystem;
  ALEM_CHECK(fs::is_directory(dir), "Hugging Face model folder " + dir + " does not exist");
  std::vector<std::string> files;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(fs::path(dir) / "model.safetensors")) {
    files.push_back((fs::path(dir) / "model.safetensors").string());
  } else if (fs::exists(index_path)) {
    json index;
    try {
      index = parse_json_bounded(read_text_file(index_path.string()));
    } catch (const JsonInputError& e) {
      ALEM_FAIL(index_path.string() + " is not valid JSON: " + e.what());
    }
    ALEM_CHECK(index.contains("weight_map") && index["weight_map"].is_object(),
               index_path.string() + " has no weight_map object");
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      ALEM_CHECK(file.is_string(), index_path.string() + ": weight_map entry for '" + tensor +
                                       "' is not a file name");
      const std::string f = file.get<std::string>();
      ALEM_CHECK(f.find('/') == std::string::npos,
                 index_path.string() + ": shard name '" + f + "' must not contain a path");
      const std::string full = (fs::path(dir) / f).string();
      if (std::find(files.begin(), files.end(), full) == files.end()) files.push_back(full);
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".safetensors") files.push_back(e.path().string());
    }
  }
  ALEM_CHECK(!files.empty(), "Hugging Face model folder " + dir + " has no *.safetensors files");
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) {
    shards_.push_back(std::make_unique<SafetensorsFile>(f));
    for (const SafetensorsTensor& t : shards_.back()->tensors()) {
      ALEM_CHECK(shard_of_.emplace(t.name, shards_.size() - 1).second,
                 "tensor '" + t.name + "' appears in more than one shard of " + dir);
    }
  }
}

SafetensorsCheckpoint::~SafetensorsCheckpoint() = default;

std::vector<std::string> SafetensorsCheckpoint::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [name, shard] : shard_of_) names.push_back(name);
  return names;
}

const SafetensorsTensor* SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = shard_of_.find(name);
  return it == shard_of_.end() ? nullptr : shards_[it->second]->find(name);
}

std::vector<float> SafetensorsCheckpoint::read_f32(const std::string& name) const {
  auto it = shard_of_.find(name);
  ALEM_CHECK(it != shard_of_.end(), "checkpoint has no tensor '" + name + "'");
  return shards_[it->second]->read_f32(name);
}

size_t SafetensorsCheckpoint::shard_count() const {
  return shards_.size();
}

}  // namespace alem
