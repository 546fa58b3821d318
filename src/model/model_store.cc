// ModelStoreReader and the canonical model digest. Opening a store reads only metadata (config,
// tokenizer, the tensor directory); tensor data is read on demand with hyperslab selections of
// exactly the requested rows and columns, so each rank touches only the chunks of its shard.
#include "model/model_store.h"

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <filesystem>
#include <map>

#include "model/h5_util.h"
#include "model/model_store_writer.h"

namespace alem {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the model store digest hashes in-memory little-endian bytes");

constexpr int kFormatVersion = 1;
constexpr const char* kScalesSuffix = ".scales";
constexpr int64_t kDigestRowsPerRead = 1024;

bool is_scales_name(const std::string& name) {
  const size_t n = std::char_traits<char>::length(kScalesSuffix);
  return name.size() > n && name.compare(name.size() - n, n, kScalesSuffix) == 0;
}

hid_t memory_type_for(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return H5T_NATIVE_FLOAT;
    case DType::BF16:
    case DType::F16:
      return H5T_NATIVE_UINT16;
    case DType::I8:
      return H5T_NATIVE_INT8;
  }
  return H5T_NATIVE_FLOAT;
}

// SHA-256 over a stream of length-prefixed fields (OpenSSL EVP).
class Sha256Stream {
 public:
  Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
    ALEM_CHECK(ctx_ && EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) == 1,
               "cannot initialise SHA-256 (OpenSSL)");
  }
  ~Sha256Stream() { EVP_MD_CTX_free(ctx_); }
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;

  void bytes(const void* data, size_t size) {
    if (size > 0) ALEM_CHECK(EVP_DigestUpdate(ctx_, data, size) == 1, "SHA-256 update failed");
  }
  void u64(uint64_t v) { bytes(&v, 8); }
  void i64(int64_t v) { bytes(&v, 8); }
  void text(const std::string& s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  std::string hex() {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    ALEM_CHECK(EVP_DigestFinal_ex(ctx_, out, &len) == 1, "SHA-256 final failed");
    static const char* digits = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) {
      s += digits[out[i] >> 4];
      s += digits[out[i] & 15];
    }
    return s;
  }

 private:
  EVP_MD_CTX* ctx_;
};

std::vector<std::string> read_string_dataset(hid_t group, const std::string& name,
                                             const std::string& where) {
  const std::string what = where + "/" + name;
  ALEM_CHECK(H5Lexists(group, name.c_str(), H5P_DEFAULT) > 0,
             where + " has no dataset '" + name + "'");
  h5::Handle ds = h5::own_dataset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "open " + what);
  h5::Handle file_type = h5::own_type(H5Dget_type(ds.get()), "type of " + what);
  ALEM_CHECK(H5Tget_class(file_type.get()) == H5T_STRING && H5Tis_variable_str(file_type.get()) > 0,
             what + " is not a dataset of variable-length strings");
  h5::Handle space = h5::own_space(H5Dget_space(ds.get()), "space of " + what);
  ALEM_CHECK(H5Sget_simple_extent_ndims(space.get()) == 1, what + " is not 1-D");
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  ALEM_CHECK(n >= 0, what + " has an unreadable size");
  std::vector<std::string> out;
  if (n == 0) return out;
  h5::Handle type = h5::vlen_string_type();
  std::vector<char*> pointers(static_cast<size_t>(n), nullptr);
  h5::check_status(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()),
                   "read " + what);
  out.reserve(pointers.size());
  for (char* p : pointers) out.emplace_back(p ? p : "");
  H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, pointers.data());
  return out;
}

std::vector<int32_t> read_int32_dataset(hid_t group, const std::string& name,
                                        const std::string& where) {
  const std::string what = where + "/" + name;
  ALEM_CHECK(H5Lexists(group, name.c_str(), H5P_DEFAULT) > 0,
             where + " has no dataset '" + name + "'");
  h5::Handle ds = h5::own_dataset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "open " + what);
  h5::Handle space = h5::own_space(H5Dget_space(ds.get()), "space of " + what);
  ALEM_CHECK(H5Sget_simple_extent_ndims(space.get()) == 1, what + " is not 1-D");
  const hssize_t n = H5Sget_simple_extent_npoints(space.get());
  ALEM_CHECK(n >= 0, what + " has an unreadable size");
  std::vector<int32_t> out(static_cast<size_t>(n));
  if (n > 0) {
    h5::check_status(H5Dread(ds.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
                     "read " + what);
  }
  return out;
}

}  // namespace

struct ModelStoreReader::Impl {
  struct Entry {
    TensorInfo info;
  };
  std::string path;
  h5::Handle file;
  h5::Handle tensors_group;
  std::string config_json;
  ModelConfig config;
  TokenizerData tokenizer;
  std::string digest;
  std::map<std::string, Entry> tensors;  // sorted by name: the digest order
  mutable std::atomic<uint64_t> bytes_read{0};

  void open(const std::string& file_path, bool require_digest);
  void load_tokenizer();
  void load_tensor_directory();
  const Entry& entry(const std::string& name) const;
  h5::Handle open_dataset(const std::string& name) const {
    return h5::own_dataset(H5Dopen2(tensors_group.get(), name.c_str(), H5P_DEFAULT),
                           "open tensor " + name + " in " + path);
  }
  // Reads a [row_begin, +rows) x [col_begin, +cols) block of a 2-D dataset into `out`.
  void read_block(const std::string& dataset, hid_t memory_type, int64_t row_begin, int64_t rows,
                  int64_t col_begin, int64_t cols, void* out) const;
  std::string compute_digest() const;
};

void ModelStoreReader::Impl::open(const std::string& file_path, bool require_digest) {
  h5::silence_errors();
  path = file_path;
  std::error_code ec;
  ALEM_CHECK(std::filesystem::is_regular_file(path, ec),
             "model store " + path + " does not exist or is not a regular file");
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  if (is_hdf5 <= 0) {
    H5Eclear2(H5E_DEFAULT);
    ALEM_FAIL("model store " + path + " is not an HDF5 file (no HDF5 signature)");
  }
  file = h5::own_file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT),
                      "cannot open model store " + path + " (truncated or corrupt HDF5 file?)");
  const hid_t root = file.get();
  const std::string where = "model store " + path;
  ALEM_CHECK(h5::has_attribute(root, "format") &&
                 h5::read_string_attribute(root, "format", where) == "alem-model",
             path +
                 " is an HDF5 file but not an alem model store (no format=\"alem-model\" "
                 "attribute on /)");
  const int64_t version = h5::read_int_attribute(root, "format_version", where);
  ALEM_CHECK(version == kFormatVersion, where + " has format_version " + std::to_string(version) +
                                            ", this build reads version " +
                                            std::to_string(kFormatVersion));
  config_json = h5::read_string_attribute(root, "config_json", where);
  try {
    config = ModelConfig::from_json(config_json);
  } catch (const Error& e) {
    ALEM_FAIL(where + ": invalid config_json: " + e.message());
  }
  if (require_digest) {
    ALEM_CHECK(h5::has_attribute(root, "model_digest"),
               where + " has no model_digest attribute (the conversion did not finish)");
    digest = h5::read_string_attribute(root, "model_digest", where);
  }
  load_tokenizer();
  load_tensor_directory();
}

void ModelStoreReader::Impl::load_tokenizer() {
  const std::string where = path + ":/tokenizer";
  ALEM_CHECK(H5Lexists(file.get(), "tokenizer", H5P_DEFAULT) > 0,
             "model store " + path + " has no /tokenizer group");
  h5::Handle g = h5::own_group(H5Gopen2(file.get(), "tokenizer", H5P_DEFAULT), "open " + where);
  tokenizer.tokens = read_string_dataset(g.get(), "tokens", where);
  tokenizer.token_kinds = read_int32_dataset(g.get(), "token_kinds", where);
  tokenizer.merges = read_string_dataset(g.get(), "merges", where);
  ALEM_CHECK(tokenizer.token_kinds.size() == tokenizer.tokens.size(),
             where + ": " + std::to_string(tokenizer.tokens.size()) + " tokens but " +
                 std::to_string(tokenizer.token_kinds.size()) + " token kinds");
  tokenizer.model = h5::read_string_attribute(g.get(), "model", where);
  tokenizer.pre_tokenizer = h5::read_string_attribute(g.get(), "pre_tokenizer", where);
  tokenizer.bos_token_id = static_cast<int>(h5::read_int_attribute(g.get(), "bos_token_id", where));
  tokenizer.eos_token_id = static_cast<int>(h5::read_int_attribute(g.get(), "eos_token_id", where));
  tokenizer.unknown_token_id =
      static_cast<int>(h5::read_int_attribute(g.get(), "unknown_token_id", where));
  tokenizer.padding_token_id =
      static_cast<int>(h5::read_int_attribute(g.get(), "padding_token_id", where));
  tokenizer.add_bos_token = h5::read_int_attribute(g.get(), "add_bos_token", where) != 0;
  tokenizer.chat_template = h5::read_string_attribute(g.get(), "chat_template", where);
}

void ModelStoreReader::Impl::load_tensor_directory() {
  ALEM_CHECK(H5Lexists(file.get(), "tensors", H5P_DEFAULT) > 0,
             "model store " + path + " has no /tensors group");
  tensors_group =
      h5::own_group(H5Gopen2(file.get(), "tensors", H5P_DEFAULT), "open " + path + ":/tensors");
  H5G_info_t info;
  h5::check_status(H5Gget_info(tensors_group.get(), &info), "list " + path + ":/tensors");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(tensors_group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i,
                                           nullptr, 0, H5P_DEFAULT);
    if (len < 0) h5::fail("read tensor name #" + std::to_string(i) + " in " + path);
    std::string name(static_cast<size_t>(len) + 1, '\0');
    H5Lget_name_by_idx(tensors_group.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(),
                       name.size(), H5P_DEFAULT);
    name.resize(static_cast<size_t>(len));
    names.push_back(std::move(name));
  }
  for (const std::string& name : names) {
    if (is_scales_name(name)) continue;
    const std::string what = "tensor " + name + " in " + path;
    h5::Handle ds = open_dataset(name);
    h5::Handle space = h5::own_space(H5Dget_space(ds.get()), "space of " + what);
    const int rank = H5Sget_simple_extent_ndims(space.get());
    ALEM_CHECK(rank == 1 || rank == 2,
               what + " has rank " + std::to_string(rank) + " (expected 1 or 2)");
    hsize_t dims[2] = {0, 0};
    H5Sget_simple_extent_dims(space.get(), dims, nullptr);
    Entry e;
    e.info.name = name;
    for (int d = 0; d < rank; ++d) e.info.shape.push_back(static_cast<int64_t>(dims[d]));
    const std::string dtype = h5::read_string_attribute(ds.get(), "dtype", what);
    try {
      e.info.dtype = parse_dtype(dtype);
    } catch (const Error&) {
      ALEM_FAIL(what + " has unknown dtype attribute '" + dtype + "'");
    }
    h5::Handle type = h5::own_type(H5Dget_type(ds.get()), "type of " + what);
    const H5T_class_t cls = H5Tget_class(type.get());
    const size_t size = H5Tget_size(type.get());
    const bool type_ok = (e.info.dtype == DType::F32 && cls == H5T_FLOAT && size == 4) ||
                         ((e.info.dtype == DType::BF16 || e.info.dtype == DType::F16) &&
                          cls == H5T_INTEGER && size == 2) ||
                         (e.info.dtype == DType::I8 && cls == H5T_INTEGER && size == 1);
    ALEM_CHECK(type_ok, what + ": stored HDF5 type does not match dtype attribute '" + dtype + "'");
    ALEM_CHECK(rank == 2 || e.info.dtype == DType::F32, what + " is 1-D but not f32");
    if (e.info.dtype == DType::I8) {
      const std::string scales = name + kScalesSuffix;
      ALEM_CHECK(rank == 2 && e.info.shape[1] % kInt8GroupSize == 0,
                 what + ": int8 tensors must be 2-D with a column count divisible by 32");
      ALEM_CHECK(H5Lexists(tensors_group.get(), scales.c_str(), H5P_DEFAULT) > 0,
                 what + " is int8 but has no " + scales + " dataset");
      h5::Handle sds = open_dataset(scales);
      h5::Handle sspace = h5::own_space(H5Dget_space(sds.get()), "space of " + scales);
      hsize_t sdims[2] = {0, 0};
      ALEM_CHECK(H5Sget_simple_extent_ndims(sspace.get()) == 2,
                 scales + " in " + path + " is not 2-D");
      H5Sget_simple_extent_dims(sspace.get(), sdims, nullptr);
      ALEM_CHECK(static_cast<int64_t>(sdims[0]) == e.info.shape[0] &&
                     static_cast<int64_t>(sdims[1]) == e.info.shape[1] / kInt8GroupSize,
                 scales + " in " + path + " has shape [" + std::to_string(sdims[0]) + ", " +
                     std::to_string(sdims[1]) + "], expected [" + std::to_string(e.info.shape[0]) +
                     ", " + std::to_string(e.info.shape[1] / kInt8GroupSize) + "]");
    }
    tensors.emplace(name, std::move(e));
  }
}

const ModelStoreReader::Impl::Entry& ModelStoreReader::Impl::entry(const std::string& name) const {
  auto it = tensors.find(name);
  ALEM_CHECK(it != tensors.end(), "model store " + path + " has no tensor '" + name + "'");
  return it->second;
}

void ModelStoreReader::Impl::read_block(const std::string& dataset, hid_t memory_type,
                                        int64_t row_begin, int64_t rows, int64_t col_begin,
                                        int64_t cols, void* out) const {
  const std::string what = "read rows [" + std::to_string(row_begin) + ", " +
                           std::to_string(row_begin + rows) + ") cols [" +
                           std::to_string(col_begin) + ", " + std::to_string(col_begin + cols) +
                           ") of " + dataset + " in " + path;
  h5::Handle ds = open_dataset(dataset);
  h5::Handle file_space = h5::own_space(H5Dget_space(ds.get()), what);
  const hsize_t start[2] = {static_cast<hsize_t>(row_begin), static_cast<hsize_t>(col_begin)};
  const hsize_t count[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(cols)};
  h5::check_status(
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), what);
  h5::Handle memory_space = h5::own_space(H5Screate_simple(2, count, nullptr), what);
  h5::check_status(
      H5Dread(ds.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, out), what);
}

std::string ModelStoreReader::Impl::compute_digest() const {
  Sha256Stream h;
  h.text("alem-model-digest-v1");
  h.text(config_json);
  const TokenizerData& t = tokenizer;
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
  h.u64(tensors.size());
  std::vector<uint8_t> buffer;
  for (const auto& [name, e] : tensors) {
    h.text(name);
    h.text(dtype_name(e.info.dtype));
    h.u64(e.info.shape.size());
    for (int64_t d : e.info.shape) h.i64(d);
    const int64_t rows = e.info.shape.size() == 2 ? e.info.shape[0] : 1;
    const int64_t cols = e.info.shape.back();
    h.u64(static_cast<uint64_t>(rows * cols) * dtype_size(e.info.dtype));
    // 1-D tensors are read as a single [1, n] block of the dataset reshaped in memory.
    for (int64_t r = 0; r < rows; r += kDigestRowsPerRead) {
      const int64_t n = std::min(kDigestRowsPerRead, rows - r);
      buffer.resize(static_cast<size_t>(n * cols) * dtype_size(e.info.dtype));
      if (e.info.shape.size() == 2) {
        read_block(name, memory_type_for(e.info.dtype), r, n, 0, cols, buffer.data());
      } else {
        h5::Handle ds = open_dataset(name);
        h5::check_status(
            H5Dread(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer.data()),
            "read tensor " + name + " in " + path);
      }
      h.bytes(buffer.data(), buffer.size());
    }
    if (e.info.dtype == DType::I8) {
      const int64_t groups = cols / kInt8GroupSize;
      h.u64(static_cast<uint64_t>(rows * groups) * sizeof(float));
      for (int64_t r = 0; r < rows; r += kDigestRowsPerRead) {
        const int64_t n = std::min(kDigestRowsPerRead, rows - r);
        buffer.resize(static_cast<size_t>(n * groups) * sizeof(float));
        read_block(name + kScalesSuffix, H5T_NATIVE_FLOAT, r, n, 0, groups, buffer.data());
        h.bytes(buffer.data(), buffer.size());
      }
    }
  }
  return h.hex();
}

ModelStoreReader::ModelStoreReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  h5::LibraryLock lock(h5::library_mutex());
  impl_->open(path, /*require_digest=*/true);
}

ModelStoreReader::~ModelStoreReader() {
  h5::LibraryLock lock(h5::library_mutex());
  impl_.reset();
}

const ModelConfig& ModelStoreReader::config() const {
  return impl_->config;
}
const TokenizerData& ModelStoreReader::tokenizer() const {
  return impl_->tokenizer;
}
const std::string& ModelStoreReader::model_digest() const {
  return impl_->digest;
}

std::vector<TensorInfo> ModelStoreReader::list_tensors() const {
  std::vector<TensorInfo> out;
  out.reserve(impl_->tensors.size());
  for (const auto& [name, e] : impl_->tensors) out.push_back(e.info);
  return out;
}

bool ModelStoreReader::has_tensor(const std::string& name) const {
  return impl_->tensors.count(name) != 0;
}

TensorInfo ModelStoreReader::tensor_info(const std::string& name) const {
  return impl_->entry(name).info;
}

WeightMatrix ModelStoreReader::read_matrix(const std::string& name, int64_t row_begin,
                                           int64_t row_count, int64_t col_begin,
                                           int64_t col_count) const {
  const TensorInfo& info = impl_->entry(name).info;
  const std::string where = "tensor " + name + " in " + impl_->path;
  ALEM_CHECK(info.shape.size() == 2, where + " is 1-D; use read_vector");
  const int64_t rows = info.shape[0];
  const int64_t cols = info.shape[1];
  if (col_count < 0) col_count = cols - col_begin;
  ALEM_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= rows,
             where + ": rows [" + std::to_string(row_begin) + ", " +
                 std::to_string(row_begin + row_count) + ") outside [0, " + std::to_string(rows) +
                 ")");
  ALEM_CHECK(col_begin >= 0 && col_count >= 0 && col_begin + col_count <= cols,
             where + ": cols [" + std::to_string(col_begin) + ", " +
                 std::to_string(col_begin + col_count) + ") outside [0, " + std::to_string(cols) +
                 ")");
  if (info.dtype == DType::I8) {
    ALEM_CHECK(col_begin % kInt8GroupSize == 0 && col_count % kInt8GroupSize == 0,
               where + ": int8 column range [" + std::to_string(col_begin) + ", " +
                   std::to_string(col_begin + col_count) + ") is not aligned to groups of " +
                   std::to_string(kInt8GroupSize));
  }
  WeightMatrix m;
  m.dtype = info.dtype;
  m.rows = row_count;
  m.cols = col_count;
  m.data.resize(static_cast<size_t>(row_count * col_count) * dtype_size(info.dtype));
  if (row_count == 0 || col_count == 0) return m;
  h5::LibraryLock lock(h5::library_mutex());
  impl_->read_block(name, memory_type_for(info.dtype), row_begin, row_count, col_begin, col_count,
                    m.data.data());
  uint64_t bytes = m.data.size();
  if (info.dtype == DType::I8) {
    m.scales.resize(static_cast<size_t>(row_count * (col_count / kInt8GroupSize)));
    impl_->read_block(name + kScalesSuffix, H5T_NATIVE_FLOAT, row_begin, row_count,
                      col_begin / kInt8GroupSize, col_count / kInt8GroupSize, m.scales.data());
    bytes += m.scales.size() * sizeof(float);
  }
  impl_->bytes_read += bytes;
  return m;
}

std::vector<float> ModelStoreReader::read_vector(const std::string& name, int64_t begin,
                                                 int64_t count) const {
  const TensorInfo& info = impl_->entry(name).info;
  const std::string where = "tensor " + name + " in " + impl_->path;
  ALEM_CHECK(info.shape.size() == 1, where + " is 2-D; use read_matrix");
  const int64_t n = info.shape[0];
  if (count < 0) count = n - begin;
  ALEM_CHECK(begin >= 0 && count >= 0 && begin + count <= n,
             where + ": range [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                 ") outside [0, " + std::to_string(n) + ")");
  std::vector<float> out(static_cast<size_t>(count));
  if (count == 0) return out;
  h5::LibraryLock lock(h5::library_mutex());
  const std::string what = "read " + where;
  h5::Handle ds = impl_->open_dataset(name);
  h5::Handle file_space = h5::own_space(H5Dget_space(ds.get()), what);
  const hsize_t start[1] = {static_cast<hsize_t>(begin)};
  const hsize_t cnt[1] = {static_cast<hsize_t>(count)};
  h5::check_status(
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, cnt, nullptr), what);
  h5::Handle memory_space = h5::own_space(H5Screate_simple(1, cnt, nullptr), what);
  h5::check_status(H5Dread(ds.get(), H5T_NATIVE_FLOAT, memory_space.get(), file_space.get(),
                           H5P_DEFAULT, out.data()),
                   what);
  impl_->bytes_read += out.size() * sizeof(float);
  return out;
}

uint64_t ModelStoreReader::bytes_read() const {
  return impl_->bytes_read.load();
}

std::string ModelStoreReader::verify() const {
  h5::LibraryLock lock(h5::library_mutex());
  std::string actual;
  try {
    actual = impl_->compute_digest();
  } catch (const Error& e) {
    return "cannot read the content of " + impl_->path + ": " + e.message();
  }
  if (actual == impl_->digest) return "";
  return "model digest mismatch in " + impl_->path + ": recorded " + impl_->digest +
         ", content hashes to " + actual;
}

std::string compute_model_store_digest(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  ModelStoreReader::Impl impl;
  impl.open(path, /*require_digest=*/false);
  return impl.compute_digest();
}

}  // namespace alem
