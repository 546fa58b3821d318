// GGUF parsing. A Cursor walks the mapped bytes and refuses every read that would leave the file,
// so a corrupt length field becomes an alem::Error with the byte offset, not an out-of-bounds
// read or a giant allocation. After the directory is parsed, every tensor's data range is
// checked against the file size before any tensor is touched.
#include "model/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "model/gguf_moe.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxDims = 4;
constexpr int kMaxArrayNesting = 4;

// Read-only memory mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ALEM_CHECK(fd_ >= 0, "cannot open GGUF file " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      ALEM_FAIL("GGUF path " + path + " is not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        ::close(fd_);
        ALEM_FAIL("cannot map GGUF file " + path + ": " + std::strerror(errno));
      }
      data_ = static_cast<const uint8_t*>(p);
    }
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    if (fd_ >= 0) ::close(fd_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  int fd_ = -1;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Bounds-checked sequential reader over the mapped bytes.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  uint64_t offset() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t bytes, const std::string& what) const {
    if (bytes > remaining()) {
      ALEM_FAIL("GGUF file " + path_ + " is truncated or corrupt: " + what + " at byte " +
                std::to_string(pos_) + " needs " + std::to_string(bytes) + " bytes, only " +
                std::to_string(remaining()) + " remain (file size " + std::to_string(size_) + ")");
    }
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& what) {
    const uint64_t len = read<uint64_t>(what + " (string length)");
    need(len, what);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }
  [[noreturn]] void fail(const std::string& message) const {
    ALEM_FAIL("GGUF file " + path_ + " is corrupt: " + message + " (at byte " +
              std::to_string(pos_) + ")");
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

// Smallest encoded size of one element of the type (for checking array counts before allocating).
uint64_t min_encoded_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::U16:
    case GgufValueType::I16:
      return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32:
      return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64:
    case GgufValueType::String:
      return 8;
    case GgufValueType::Array:
      return 12;
  }
  return 0;
}

bool is_integer_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::U16:
    case GgufValueType::I16:
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::Bool:
      return true;
    default:
      return false;
  }
}

std::string value_type_name(GgufValueType t) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? names[i] : "type#" + std::to_string(i);
}

int64_t read_integer(Cursor& c, GgufValueType t, const std::string& what) {
  switch (t) {
    case GgufValueType::U8:
      return c.read<uint8_t>(what);
    case GgufValueType::I8:
      return c.read<int8_t>(what);
    case GgufValueType::U16:
      return c.read<uint16_t>(what);
    case GgufValueType::I16:
      return c.read<int16_t>(what);
    case GgufValueType::U32:
      return c.read<uint32_t>(what);
    case GgufValueType::I32:
      return c.read<int32_t>(what);
    case GgufValueType::I64:
      return c.read<int64_t>(what);
    case GgufValueType::U64: {
      const uint64_t v = c.read<uint64_t>(what);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail(what + " holds u64 value " + std::to_string(v) + ", beyond the supported range");
      }
      return static_cast<int64_t>(v);
    }
    case GgufValueType::Bool: {
      const uint8_t b = c.read<uint8_t>(what);
      if (b > 1) c.fail(what + " holds bool byte " + std::to_string(b) + " (expected 0 or 1)");
      return b;
    }
    default:
      c.fail(what + ": not an integer type");
  }
}

GgufValueType read_value_type(Cursor& c, const std::string& what) {
  const uint32_t raw = c.read<uint32_t>(what + " (value type)");
  if (raw > static_cast<uint32_t>(GgufValueType::F64)) {
    c.fail(what + " has unknown value type " + std::to_string(raw));
  }
  return static_cast<GgufValueType>(raw);
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& what, int depth) {
  GgufValue v;
  v.type = type;
  if (is_integer_type(type)) {
    v.integer = read_integer(c, type, what);
    v.real = static_cast<double>(v.integer);
  } else if (type == GgufValueType::F32) {
    v.real = c.read<float>(what);
  } else if (type == GgufValueType::F64) {
    v.real = c.read<double>(what);
  } else if (type == GgufValueType::String) {
    v.text = c.read_string(what);
  } else {  // Array
    if (depth >= kMaxArrayNesting) c.fail(what + ": arrays nested too deeply");
    v.element_type = read_value_type(c, what + " (array element type)");
    const uint64_t count = c.read<uint64_t>(what + " (array length)");
    const uint64_t min_size = min_encoded_size(v.element_type);
    if (count > c.remaining() / min_size) {
      c.fail(what + " claims " + std::to_string(count) + " array elements of type " +
             value_type_name(v.element_type) + ", more than the " + std::to_string(c.remaining()) +
             " bytes left in the file can hold");
    }
    const GgufValueType et = v.element_type;
    if (et == GgufValueType::String) {
      v.strings.reserve(count);
      for (uint64_t i = 0; i < count; ++i) v.strings.push_back(c.read_string(what));
    } else if (is_integer_type(et)) {
      v.integers.reserve(count);
      for (uint64_t i = 0; i < count; ++i) v.integers.push_back(read_integer(c, et, what));
    } else if (et == GgufValueType::F32) {
      v.reals.reserve(count);
      for (uint64_t i = 0; i < count; ++i) v.reals.push_back(c.read<float>(what));
    } else if (et == GgufValueType::F64) {
      v.reals.reserve(count);
      for (uint64_t i = 0; i < count; ++i) v.reals.push_back(c.read<double>(what));
    } else {
      v.nested.reserve(count);
      for (uint64_t i = 0; i < count; ++i) {
        v.nested.push_back(read_value(c, GgufValueType::Array, what, depth + 1));
      }
    }
  }
  return v;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

size_t GgufValue::array_size() const {
  if (type != GgufValueType::Array) return 0;
  return strings.size() + integers.size() + reals.size() + nested.size();
}

int64_t GgufTensorInfo::element_count() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

int64_t GgufTensorInfo::rows() const {
  int64_t r = 1;
  for (size_t i = 1; i < dims.size(); ++i) r *= dims[i];
  return r;
}

std::vector<int64_t> GgufTensorInfo::hf_shape() const {
  if (dims.size() <= 1) return {cols()};
  return {rows(), cols()};
}

std::string gguf_to_hf_tensor_name(const std::string& name) {
  static const std::map<std::string, std::string> global = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  static const std::map<std::string, std::string> per_layer = {
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"attn_q.bias", "self_attn.q_proj.bias"},
      {"attn_k.bias", "self_attn.k_proj.bias"},
      {"attn_v.bias", "self_attn.v_proj.bias"},
      {"attn_q_norm.weight", "self_attn.q_norm.weight"},
      {"attn_k_norm.weight", "self_attn.k_norm.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      // dots.llm1's shared experts and router correction bias (the only family with them that
      // the importer takes; Qwen2-MoE's single shared expert is not imported from GGUF).
      {"ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"},
      {"ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"},
      {"ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"},
      {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"},
  };
  if (auto it = global.find(name); it != global.end()) return it->second;
  if (name.rfind("blk.", 0) != 0) return "";
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4) return "";
  const std::string layer = name.substr(4, dot - 4);
  if (layer.size() > 6 ||
      !std::all_of(layer.begin(), layer.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    return "";
  }
  auto it = per_layer.find(name.substr(dot + 1));
  if (it == per_layer.end()) return "";
  return layer_tensor_name(std::stoi(layer), it->second);
}

namespace {

// The same row permutation on rows of any byte width (raw ggml blocks).
std::vector<uint8_t> unpermute_llama_qk_byte_rows(const uint8_t* bytes, int64_t rows,
                                                  size_t row_bytes, int n_head) {
  ALEM_CHECK(n_head > 0 && rows % (int64_t{2} * n_head) == 0,
             "q/k un-permutation: " + std::to_string(rows) + " rows do not split into " +
                 std::to_string(n_head) + " heads of even size");
  const int64_t head_dim = rows / n_head;
  const int64_t half = head_dim / 2;
  std::vector<uint8_t> out(static_cast<size_t>(rows) * row_bytes);
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t hf_row = h * head_dim + i * half + j;
        const int64_t gguf_row = h * head_dim + 2 * j + i;
        std::memcpy(&out[hf_row * row_bytes], bytes + gguf_row * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

}  // namespace

void unpermute_llama_qk_rows(std::vector<float>& values, int64_t rows, int64_t cols, int n_head) {
  ALEM_CHECK(n_head > 0 && rows % (int64_t{2} * n_head) == 0,
             "q/k un-permutation: " + std::to_string(rows) + " rows do not split into " +
                 std::to_string(n_head) + " heads of even size");
  ALEM_CHECK(static_cast<int64_t>(values.size()) == rows * cols,
             "q/k un-permutation: expected " + std::to_string(rows * cols) + " values, got " +
                 std::to_string(values.size()));
  const int64_t head_dim = rows / n_head;
  const int64_t half = head_dim / 2;
  std::vector<float> out(values.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t hf_row = h * head_dim + i * half + j;
        const int64_t gguf_row = h * head_dim + 2 * j + i;
        std::memcpy(&out[hf_row * cols], &values[gguf_row * cols], sizeof(float) * cols);
      }
    }
  }
  values.swap(out);
}

struct GgufFile::Impl {
  std::string path;
  std::unique_ptr<MappedFile> file;
  uint32_t version = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t data_start = 0;
  std::string architecture;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;
  std::map<std::string, size_t> by_name;  // GGUF and HF names -> index

  void parse();
};

void GgufFile::Impl::parse() {
  Cursor c(file->data(), file->size(), path);
  const uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kGgufMagic) {
    ALEM_FAIL("file " + path + " is not a GGUF file (magic bytes are not \"GGUF\")");
  }
  version = c.read<uint32_t>("version");
  if (version == 1)
    ALEM_FAIL("GGUF file " + path + " is version 1, which is not supported (2 or 3)");
  if (version != 2 && version != 3) {
    ALEM_FAIL("GGUF file " + path + " has unsupported version " + std::to_string(version) +
              " (expected 2 or 3; a big-endian file reads as a huge version)");
  }
  const uint64_t tensor_count = c.read<uint64_t>("tensor count");
  const uint64_t kv_count = c.read<uint64_t>("metadata count");
  // Each kv takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8+4+4+8.
  if (kv_count > c.remaining() / 13)
    c.fail("metadata count " + std::to_string(kv_count) + " is impossible for the file size");
  if (tensor_count > c.remaining() / 24)
    c.fail("tensor count " + std::to_string(tensor_count) + " is impossible for the file size");

  for (uint64_t i = 0; i < kv_count; ++i) {
    const std::string key = c.read_string("metadata key #" + std::to_string(i));
    const GgufValueType type = read_value_type(c, "metadata '" + key + "'");
    GgufValue v = read_value(c, type, "metadata '" + key + "'", 0);
    if (!metadata.emplace(key, std::move(v)).second) c.fail("duplicate metadata key '" + key + "'");
  }
  if (auto it = metadata.find("general.alignment"); it != metadata.end()) {
    if (!is_integer_type(it->second.type)) c.fail("general.alignment is not an integer");
    const int64_t a = it->second.integer;
    if (a <= 0 || (a & (a - 1)) != 0 || a > (1 << 20)) {
      c.fail("general.alignment " + std::to_string(a) + " is not a power of two up to 1 MiB");
    }
    alignment = static_cast<uint64_t>(a);
  }
  if (auto it = metadata.find("general.architecture");
      it != metadata.end() && it->second.type == GgufValueType::String) {
    architecture = it->second.text;
  }

  tensors.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string("tensor name #" + std::to_string(i));
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = c.read<uint32_t>(what + " dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) {
      c.fail(what + " has " + std::to_string(n_dims) + " dimensions (expected 1 to 4)");
    }
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t dim = c.read<uint64_t>(what + " dimension");
      if (dim == 0 || dim > (uint64_t{1} << 40) ||
          static_cast<uint64_t>(elements) > (uint64_t{1} << 48) / dim) {
        c.fail(what + " has an impossible dimension " + std::to_string(dim));
      }
      t.dims.push_back(static_cast<int64_t>(dim));
      elements *= static_cast<int64_t>(dim);
    }
    t.type = c.read<uint32_t>(what + " type");
    const GgmlBlockGeometry g = ggml_block_geometry(t.type);
    if (g.elements_per_block == 0)
      c.fail(what + " has unknown ggml type id " + std::to_string(t.type));
    if (t.dims[0] % g.elements_per_block != 0) {
      c.fail(what + " of type " + ggml_type_name(t.type) + " has a row of " +
             std::to_string(t.dims[0]) + " elements, not a multiple of its block size " +
             std::to_string(g.elements_per_block));
    }
    t.bytes = ggml_bytes_for(t.type, elements);
    t.offset = c.read<uint64_t>(what + " offset");
    if (t.offset % alignment != 0) {
      c.fail(what + " data offset " + std::to_string(t.offset) + " is not aligned to " +
             std::to_string(alignment));
    }
    t.hf_name = gguf_to_hf_tensor_name(t.name);
    if (by_name.count(t.name)) c.fail("duplicate tensor name '" + t.name + "'");
    by_name[t.name] = tensors.size();
    if (!t.hf_name.empty()) by_name[t.hf_name] = tensors.size();
    tensors.push_back(std::move(t));
  }

  const uint64_t header_end = c.offset();
  data_start = (header_end + alignment - 1) / alignment * alignment;
  const uint64_t size = file->size();
  for (const GgufTensorInfo& t : tensors) {
    if (data_start > size || t.offset > size - data_start ||
        t.bytes > size - data_start - t.offset) {
      ALEM_FAIL("GGUF file " + path + " is truncated: tensor '" + t.name + "' (" +
                ggml_type_name(t.type) + ", " + std::to_string(t.bytes) + " bytes at data offset " +
                std::to_string(t.offset) +
                ") extends past the end of the file (data section starts at " +
                std::to_string(data_start) + ", file size " + std::to_string(size) + ")");
    }
  }
  // Every tensor owns its own bytes: two tensors sharing data (a crafted or corrupt offset) would
  // import as garbage weights that the store then faithfully digests and serves.
  std::vector<size_t> by_offset(tensors.size());
  for (size_t i = 0; i < by_offset.size(); ++i) by_offset[i] = i;
  std::sort(by_offset.begin(), by_offset.end(), [&](size_t a, size_t b) {
    return tensors[a].offset != tensors[b].offset ? tensors[a].offset < tensors[b].offset : a < b;
  });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& prev = tensors[by_offset[k - 1]];
    const GgufTensorInfo& t = tensors[by_offset[k]];
    if (t.offset < prev.offset + prev.bytes) {
      ALEM_FAIL("GGUF file " + path + " is corrupt: tensor '" + t.name + "' (data offset " +
                std::to_string(t.offset) + ", " + std::to_string(t.bytes) +
                " bytes) overlaps tensor '" + prev.name + "' (data offset " +
                std::to_string(prev.offset) + ", " + std::to_string(prev.bytes) + " bytes)");
    }
  }
}

GgufFile::GgufFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->file = std::make_unique<MappedFile>(path);
  impl_->parse();
}

GgufFile::~GgufFile() = default;

const std::string& GgufFile::path() const {
  return impl_->path;
}
uint32_t GgufFile::version() const {
  return impl_->version;
}
uint64_t GgufFile::alignment() const {
  return impl_->alignment;
}
uint64_t GgufFile::file_size() const {
  return impl_->file->size();
}
uint64_t GgufFile::data_offset() const {
  return impl_->data_start;
}
const std::string& GgufFile::architecture() const {
  return impl_->architecture;
}
const std::map<std::string, GgufValue>& GgufFile::metadata() const {
  return impl_->metadata;
}
bool GgufFile::has_key(const std::string& key) const {
  return impl_->metadata.count(key) != 0;
}

const GgufValue& GgufFile::value(const std::string& key) const {
  auto it = impl_->metadata.find(key);
  ALEM_CHECK(it != impl_->metadata.end(),
             "GGUF file " + impl_->path + " has no metadata key '" + key + "'");
  return it->second;
}

std::string GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = value(key);
  ALEM_CHECK(v.type == GgufValueType::String, "GGUF metadata '" + key + "' in " + impl_->path +
                                                  " is " + value_type_name(v.type) +
                                                  ", expected string");
  return v.text;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = value(key);
  ALEM_CHECK(is_integer_type(v.type), "GGUF metadata '" + key + "' in " + impl_->path + " is " +
                                          value_type_name(v.type) + ", expected an integer");
  return v.integer;
}

int64_t GgufFile::get_int(const std::string& key, int64_t fallback) const {
  return has_key(key) ? get_int(key) : fallback;
}

double GgufFile::get_float(const std::string& key, double fallback) const {
  if (!has_key(key)) return fallback;
  const GgufValue& v = value(key);
  ALEM_CHECK(
      v.type == GgufValueType::F32 || v.type == GgufValueType::F64 || is_integer_type(v.type),
      "GGUF metadata '" + key + "' in " + impl_->path + " is " + value_type_name(v.type) +
          ", expected a number");
  return v.real;
}

bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  if (!has_key(key)) return fallback;
  return get_int(key) != 0;
}

const std::vector<GgufTensorInfo>& GgufFile::tensors() const {
  return impl_->tensors;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& tensor) const {
  return impl_->file->data() + impl_->data_start + tensor.offset;
}

ModelConfig GgufFile::model_config() const {
  const std::string& arch = impl_->architecture;
  ALEM_CHECK(!arch.empty(), "GGUF file " + impl_->path + " has no general.architecture string");
  ALEM_CHECK(arch == "llama" || arch == "qwen2" || arch == "qwen3" || arch == "qwen3moe" ||
                 arch == "dots1",
             "GGUF file " + impl_->path + " has architecture '" + arch +
                 "'; alem imports llama (with experts: Mixtral), qwen2, qwen3, qwen3moe and dots1 "
                 "only");
  const std::string p = arch + ".";
  ModelConfig cfg;
  cfg.architecture = arch;
  cfg.name = has_key("general.name") ? get_string("general.name") : "";
  cfg.hidden_size = static_cast<int>(get_int(p + "embedding_length"));
  cfg.num_layers = static_cast<int>(get_int(p + "block_count"));
  cfg.num_heads = static_cast<int>(get_int(p + "attention.head_count"));
  cfg.num_kv_heads = static_cast<int>(get_int(p + "attention.head_count_kv", cfg.num_heads));
  cfg.head_dim = static_cast<int>(
      get_int(p + "attention.key_length", cfg.num_heads > 0 ? cfg.hidden_size / cfg.num_heads : 0));
  cfg.intermediate_size = static_cast<int>(get_int(p + "feed_forward_length"));
  cfg.max_position_embeddings = static_cast<int>(get_int(p + "context_length"));
  cfg.rms_norm_eps = static_cast<float>(get_float(p + "attention.layer_norm_rms_epsilon", 1e-5));
  cfg.rope_theta = static_cast<float>(get_float(p + "rope.freq_base", 10000.0));
  if (has_key(p + "rope.scaling.type")) {
    const std::string type = get_string(p + "rope.scaling.type");
    ALEM_CHECK(type == "none", "GGUF file " + impl_->path + " uses RoPE scaling '" + type +
                                   "', which the importer does not support");
  }
  ALEM_CHECK(find_tensor("rope_freqs.weight") == nullptr,
             "GGUF file " + impl_->path +
                 " carries rope_freqs (Llama 3.1 RoPE scaling baked into a tensor); import this "
                 "model from its Hugging Face safetensors instead");
  const GgufTensorInfo* embed = find_tensor("token_embd.weight");
  ALEM_CHECK(embed != nullptr, "GGUF file " + impl_->path + " has no token_embd.weight tensor");
  cfg.vocab_size = static_cast<int>(get_int(p + "vocab_size", embed->rows()));
  ALEM_CHECK(embed->rows() == cfg.vocab_size && embed->cols() == cfg.hidden_size,
             "GGUF file " + impl_->path + ": token_embd.weight is [" +
                 std::to_string(embed->rows()) + ", " + std::to_string(embed->cols()) +
                 "] but metadata says vocab " + std::to_string(cfg.vocab_size) + ", hidden " +
                 std::to_string(cfg.hidden_size));
  cfg.tie_word_embeddings = find_tensor("output.weight") == nullptr;
  cfg.attention_bias = find_tensor("blk.0.attn_q.bias") != nullptr;
  cfg.qk_norm = find_tensor("blk.0.attn_q_norm.weight") != nullptr;
  cfg.bos_token_id = static_cast<int>(get_int("tokenizer.ggml.bos_token_id", -1));
  const int64_t eos = get_int("tokenizer.ggml.eos_token_id", -1);
  if (eos >= 0) cfg.eos_token_ids.push_back(static_cast<int>(eos));
  const int64_t eot = get_int("tokenizer.ggml.eot_token_id", -1);
  if (eot >= 0 && eot != eos) cfg.eos_token_ids.push_back(static_cast<int>(eot));
  read_gguf_moe_config(*this, cfg);  // experts, router layers (model/gguf_moe.h)
  cfg.validate();
  return cfg;
}

TokenizerData GgufFile::tokenizer_data() const {
  TokenizerData tok;
  tok.model = get_string("tokenizer.ggml.model");
  ALEM_CHECK(tok.model == "gpt2", "GGUF file " + impl_->path + " has tokenizer model '" +
                                      tok.model + "'; alem supports byte-level BPE ('gpt2') only");
  tok.pre_tokenizer = has_key("tokenizer.ggml.pre") ? get_string("tokenizer.ggml.pre") : "gpt2";
  const GgufValue& tokens = value("tokenizer.ggml.tokens");
  ALEM_CHECK(tokens.type == GgufValueType::Array && tokens.element_type == GgufValueType::String,
             "GGUF metadata tokenizer.ggml.tokens in " + impl_->path + " is not a string array");
  tok.tokens = tokens.strings;
  if (has_key("tokenizer.ggml.token_type")) {
    const GgufValue& kinds = value("tokenizer.ggml.token_type");
    ALEM_CHECK(kinds.type == GgufValueType::Array && is_integer_type(kinds.element_type) &&
                   kinds.integers.size() == tok.tokens.size(),
               "GGUF metadata tokenizer.ggml.token_type in " + impl_->path +
                   " is not an integer array with one entry per token (" +
                   std::to_string(tok.tokens.size()) + ")");
    tok.token_kinds.reserve(kinds.integers.size());
    for (int64_t k : kinds.integers) {
      ALEM_CHECK(k >= 1 && k <= 6, "GGUF token_type value " + std::to_string(k) + " in " +
                                       impl_->path + " is not a known token kind (1..6)");
      tok.token_kinds.push_back(static_cast<int32_t>(k));
    }
  } else {
    tok.token_kinds.assign(tok.tokens.size(), static_cast<int32_t>(TokenKind::Normal));
  }
  if (has_key("tokenizer.ggml.merges")) {
    const GgufValue& merges = value("tokenizer.ggml.merges");
    ALEM_CHECK(merges.type == GgufValueType::Array && merges.element_type == GgufValueType::String,
               "GGUF metadata tokenizer.ggml.merges in " + impl_->path + " is not a string array");
    tok.merges = merges.strings;
  }
  const int64_t n = static_cast<int64_t>(tok.tokens.size());
  auto special_id = [&](const std::string& key) {
    const int64_t id = get_int(key, -1);
    ALEM_CHECK(id >= -1 && id < n, "GGUF metadata " + key + " = " + std::to_string(id) + " in " +
                                       impl_->path + " is outside the vocabulary of " +
                                       std::to_string(n) + " tokens");
    return static_cast<int>(id);
  };
  tok.bos_token_id = special_id("tokenizer.ggml.bos_token_id");
  tok.eos_token_id = special_id("tokenizer.ggml.eos_token_id");
  tok.unknown_token_id = special_id("tokenizer.ggml.unknown_token_id");
  tok.padding_token_id = special_id("tokenizer.ggml.padding_token_id");
  tok.add_bos_token = get_bool("tokenizer.ggml.add_bos_token", false);
  tok.chat_template =
      has_key("tokenizer.chat_template") ? get_string("tokenizer.chat_template") : "";
  return tok;
}

std::vector<float> GgufFile::dequantize(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  ALEM_CHECK(t != nullptr, "GGUF file " + impl_->path + " has no tensor '" + name + "'");
  std::vector<float> out(static_cast<size_t>(t->element_count()));
  dequantize_ggml(t->type, tensor_data(*t), t->bytes, out.data(), t->element_count());
  // llama.cpp permutes q/k weights (and biases, when present) for the llama architecture only.
  if (impl_->architecture == "llama") {
    const bool is_q = ends_with(t->name, ".attn_q.weight") || ends_with(t->name, ".attn_q.bias");
    const bool is_k = ends_with(t->name, ".attn_k.weight") || ends_with(t->name, ".attn_k.bias");
    if (is_q || is_k) {
      const int heads = static_cast<int>(
          is_q ? get_int("llama.attention.head_count")
               : get_int("llama.attention.head_count_kv", get_int("llama.attention.head_count")));
      const bool is_vector = t->dims.size() == 1;
      unpermute_llama_qk_rows(out, is_vector ? t->cols() : t->rows(), is_vector ? 1 : t->cols(),
                              heads);
    }
  }
  return out;
}

std::vector<uint8_t> GgufFile::raw_rows(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  ALEM_CHECK(t != nullptr, "GGUF file " + impl_->path + " has no tensor '" + name + "'");
  ALEM_CHECK(t->dims.size() == 2, "GGUF tensor '" + t->name + "' is not 2-D");
  const uint8_t* bytes = tensor_data(*t);
  const size_t row_bytes = static_cast<size_t>(t->bytes / static_cast<uint64_t>(t->rows()));
  ALEM_CHECK(row_bytes * static_cast<uint64_t>(t->rows()) == t->bytes,
             "GGUF tensor '" + t->name + "' does not split into whole rows");
  if (impl_->architecture == "llama") {
    const bool is_q = ends_with(t->name, ".attn_q.weight");
    const bool is_k = ends_with(t->name, ".attn_k.weight");
    if (is_q || is_k) {
      const int heads = static_cast<int>(
          is_q ? get_int("llama.attention.head_count")
               : get_int("llama.attention.head_count_kv", get_int("llama.attention.head_count")));
      return unpermute_llama_qk_byte_rows(bytes, t->rows(), row_bytes, heads);
    }
  }
  return std::vector<uint8_t>(bytes, bytes + t->bytes);
}

}  // namespace alem
