// ModelStoreReader and the canonical model digest. Opening a store reads only metadata (config,
// tokenizer, the tensor directory); tensor data is read on demand with hyperslab selections of
// exactly the requested rows and columns, so each rank touches only the chunks of its shard.
#include "model/model_store.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <map>

#include "model/h5_util.h"
#include "model/model_store_writer.h"
#include "model/store_integrity.h"

namespace alem {
namespace {

using integrity::Block;
using integrity::Hash;
using integrity::TileGrid;

constexpr int kFormatVersion = 2;
constexpr const char* kScalesSuffix = ".scales";
constexpr int64_t kDigestRowsPerRead = 1024;  // a multiple of the tile edge
// Verified reads go in stripes of about this many bytes, hashed while the next is read.
constexpr size_t kVerifyStripeBytes = size_t{1} << 20;

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
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q8_0:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::IQ4_NL:
    case DType::IQ4_XS:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q3_K:
      return H5T_NATIVE_UINT8;
  }
  return H5T_NATIVE_FLOAT;
}

// Bytes per stored element: the block types are stored as raw bytes.
size_t stored_element_size(DType dtype) {
  return dtype_is_block(dtype) ? 1 : dtype_size(dtype);
}

}  // namespace

struct ModelStoreReader::Impl {
  struct Entry {
    TensorInfo info;
    TileGrid grid, scale_grid;  // scale_grid: int8 only
    Hash root{};                // recorded tensor root (format 2, after open)
  };
  // What the file's content hashes to, recomputed from every byte of every tensor.
  struct Recomputed {
    std::map<std::string, std::vector<Hash>> leaves;  // dataset name (incl. .scales) -> leaves
    std::vector<std::pair<std::string, Hash>> roots;  // sorted by tensor name
    std::string digest;
  };
  std::string path;
  h5::Handle file;
  h5::Handle tensors_group;
  std::string config_json;
  ModelConfig config;
  TokenizerData tokenizer;
  std::string digest;
  std::map<std::string, Entry> tensors;  // sorted by name: the digest order
  bool verify_reads = true;
  mutable std::atomic<uint64_t> bytes_read{0};
  // Leaves of datasets already read, checked against their tensor's recorded root. Nodes are
  // never erased, so pointers into the map stay valid without the lock.
  mutable std::map<std::string, std::vector<Hash>> checked_leaves;

  // require_integrity: the store is finished (digest and hash tree recorded), and the tree's
  // root (config, tokenizer, tensor roots) is checked against the recorded digest. The writer
  // opens its own unfinished file without it, to compute the tree.
  void open(const std::string& file_path, bool require_integrity);
  void load_tokenizer();
  void load_tensor_directory();
  void load_and_check_roots();
  const Entry& entry(const std::string& name) const;
  h5::Handle open_dataset(const std::string& name) const {
    return h5::own_dataset(H5Dopen2(tensors_group.get(), name.c_str(), H5P_DEFAULT),
                           "open tensor " + name + " in " + path);
  }
  // Reads a block of a dataset (1-D datasets: cols only) into `out`. Library lock held.
  void read_raw(const std::string& dataset, bool one_d, hid_t memory_type, const Block& b,
                void* out) const;
  // Reads `want` of a tensor (or of its scales) and, when verify_reads, checks every tile that
  // covers it against the recorded leaves. Takes the library lock itself.
  void read_checked(const Entry& e, bool scales, const Block& want, void* out) const;
  const std::vector<Hash>& leaves_for(const Entry& e, bool scales) const;  // lock held
  std::vector<Hash> read_stored_leaves(const std::string& dataset, const TileGrid& g) const;
  std::vector<Hash> recompute_leaves(const Entry& e, bool scales) const;
  Recomputed recompute() const;
};

void ModelStoreReader::Impl::open(const std::string& file_path, bool require_integrity) {
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
  ALEM_CHECK(version != 1, where +
                               " has format_version 1, which has no per-tile hashes and cannot "
                               "be verified at load; this build reads version 2: reconvert it "
                               "with `alem convert <gguf or HF folder> " +
                               path + "`");
  ALEM_CHECK(version == kFormatVersion, where + " has format_version " + std::to_string(version) +
                                            ", this build reads version " +
                                            std::to_string(kFormatVersion));
  config_json = h5::read_string_attribute(root, "config_json", where);
  try {
    config = ModelConfig::from_json(config_json);
  } catch (const Error& e) {
    ALEM_FAIL(where + ": invalid config_json: " + e.message());
  }
  if (require_integrity) {
    ALEM_CHECK(h5::has_attribute(root, "model_digest"),
               where + " has no model_digest attribute (the conversion did not finish)");
    digest = h5::read_string_attribute(root, "model_digest", where);
  }
  load_tokenizer();
  load_tensor_directory();
  if (require_integrity) load_and_check_roots();
}

void ModelStoreReader::Impl::load_tokenizer() {
  const std::string where = path + ":/tokenizer";
  ALEM_CHECK(H5Lexists(file.get(), "tokenizer", H5P_DEFAULT) > 0,
             "model store " + path + " has no /tokenizer group");
  h5::Handle g = h5::own_group(H5Gopen2(file.get(), "tokenizer", H5P_DEFAULT), "open " + where);
  tokenizer.tokens = h5::read_string_table(g.get(), "tokens", where);
  tokenizer.token_kinds = h5::read_int_dataset<int32_t>(g.get(), "token_kinds", H5T_NATIVE_INT32, 0,
                                                        hsize_t{1} << 26, where);
  tokenizer.merges = h5::read_string_table(g.get(), "merges", where);
  ALEM_CHECK(tokenizer.token_kinds.size() == tokenizer.tokens.size(),
             where + ": " + std::to_string(tokenizer.tokens.size()) + " tokens but " +
                 std::to_string(tokenizer.token_kinds.size()) + " token kinds");
  tokenizer.chat_template = h5::read_text_dataset(g.get(), "chat_template", where);
  tokenizer.model = h5::read_string_attribute(g.get(), "model", where);
  tokenizer.pre_tokenizer = h5::read_string_attribute(g.get(), "pre_tokenizer", where);
  tokenizer.bos_token_id = static_cast<int>(h5::read_int_attribute(g.get(), "bos_token_id", where));
  tokenizer.eos_token_id = static_cast<int>(h5::read_int_attribute(g.get(), "eos_token_id", where));
  tokenizer.unknown_token_id =
      static_cast<int>(h5::read_int_attribute(g.get(), "unknown_token_id", where));
  tokenizer.padding_token_id =
      static_cast<int>(h5::read_int_attribute(g.get(), "padding_token_id", where));
  tokenizer.add_bos_token = h5::read_int_attribute(g.get(), "add_bos_token", where) != 0;
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
  ALEM_CHECK(names.size() <= (size_t{1} << 24), path + ": impossible tensor count");
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
                         (e.info.dtype == DType::I8 && cls == H5T_INTEGER && size == 1) ||
                         (dtype_is_block(e.info.dtype) && cls == H5T_INTEGER && size == 1);
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
    e.grid = integrity::tile_grid(e.info.shape);
    if (dtype_is_block(e.info.dtype)) {
      // Stored as [rows, row bytes]: the logical shape has cols = blocks * block elements.
      const int64_t block_bytes = dtype_block_bytes(e.info.dtype);
      ALEM_CHECK(rank == 2 && e.info.shape[1] % block_bytes == 0,
                 what + ": a " + dtype + " tensor must be 2-D with rows of whole " +
                     std::to_string(block_bytes) + "-byte blocks");
      e.info.shape[1] = e.info.shape[1] / block_bytes * dtype_block_elements(e.info.dtype);
    }
    if (e.info.dtype == DType::I8) {
      e.scale_grid = integrity::tile_grid({e.info.shape[0], e.info.shape[1] / kInt8GroupSize});
    }
    tensors.emplace(name, std::move(e));
  }
}

// Reads the recorded tensor roots and checks that they, the config and the tokenizer fold to
// the recorded model digest: after this, model_digest() is the root of the tree that every
// later read is checked against.
void ModelStoreReader::Impl::load_and_check_roots() {
  const std::string where = path + ":/integrity";
  const htri_t exists = H5Lexists(file.get(), "integrity", H5P_DEFAULT);
  if (exists < 0) H5Eclear2(H5E_DEFAULT);
  ALEM_CHECK(exists > 0, "model store " + path + " has no /integrity group (hash tree)");
  h5::Handle g = h5::own_group(H5Gopen2(file.get(), "integrity", H5P_DEFAULT), "open " + where);
  const std::vector<uint8_t> roots = h5::read_int_dataset<uint8_t>(
      g.get(), "tensor_roots", H5T_NATIVE_UINT8, 32, hsize_t{32} << 24, where);
  ALEM_CHECK(roots.size() == tensors.size() * 32,
             where + "/tensor_roots has " + std::to_string(roots.size() / 32) + " roots for " +
                 std::to_string(tensors.size()) + " tensors");
  std::vector<std::pair<std::string, Hash>> named;
  size_t i = 0;
  for (auto& [name, e] : tensors) {
    std::memcpy(e.root.data(), roots.data() + 32 * i++, 32);
    named.emplace_back(name, e.root);
  }
  const std::string computed = integrity::model_digest(config_json, tokenizer, named);
  ALEM_CHECK(computed == digest,
             "model digest mismatch in " + path + ": the recorded digest " + digest +
                 " is not the root of the store's config, tokenizer and tensor hashes (" +
                 computed + "); the store was modified or is corrupt, refusing to load it");
}

const ModelStoreReader::Impl::Entry& ModelStoreReader::Impl::entry(const std::string& name) const {
  auto it = tensors.find(name);
  ALEM_CHECK(it != tensors.end(), "model store " + path + " has no tensor '" + name + "'");
  return it->second;
}

void ModelStoreReader::Impl::read_raw(const std::string& dataset, bool one_d, hid_t memory_type,
                                      const Block& b, void* out) const {
  const std::string what = "read rows [" + std::to_string(b.row_begin) + ", " +
                           std::to_string(b.row_begin + b.rows) + ") cols [" +
                           std::to_string(b.col_begin) + ", " +
                           std::to_string(b.col_begin + b.cols) + ") of " + dataset + " in " + path;
  h5::Handle ds = open_dataset(dataset);
  h5::Handle file_space = h5::own_space(H5Dget_space(ds.get()), what);
  const int rank = one_d ? 1 : 2;
  const hsize_t start2[2] = {static_cast<hsize_t>(b.row_begin), static_cast<hsize_t>(b.col_begin)};
  const hsize_t count2[2] = {static_cast<hsize_t>(b.rows), static_cast<hsize_t>(b.cols)};
  const hsize_t* start = one_d ? start2 + 1 : start2;
  const hsize_t* count = one_d ? count2 + 1 : count2;
  h5::check_status(
      H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr), what);
  h5::Handle memory_space = h5::own_space(H5Screate_simple(rank, count, nullptr), what);
  h5::check_status(
      H5Dread(ds.get(), memory_type, memory_space.get(), file_space.get(), H5P_DEFAULT, out), what);
}

std::vector<Hash> ModelStoreReader::Impl::read_stored_leaves(const std::string& dataset,
                                                             const TileGrid& g) const {
  const std::string where = path + ":/integrity/leaves";
  h5::Handle group =
      h5::own_group(H5Gopen2(file.get(), "integrity/leaves", H5P_DEFAULT), "open " + where);
  const std::vector<uint8_t> bytes = h5::read_int_dataset<uint8_t>(
      group.get(), dataset, H5T_NATIVE_UINT8, 32, static_cast<hsize_t>(g.leaf_count()) * 32, where);
  ALEM_CHECK(bytes.size() == static_cast<size_t>(g.leaf_count()) * 32,
             where + "/" + dataset + " has " + std::to_string(bytes.size() / 32) +
                 " tile hashes, expected " + std::to_string(g.leaf_count()));
  std::vector<Hash> leaves(static_cast<size_t>(g.leaf_count()));
  if (!leaves.empty()) std::memcpy(leaves.data(), bytes.data(), bytes.size());
  return leaves;
}

const std::vector<Hash>& ModelStoreReader::Impl::leaves_for(const Entry& e, bool scales) const {
  const std::string& name = e.info.name;
  const std::string dataset = scales ? name + kScalesSuffix : name;
  if (auto it = checked_leaves.find(dataset); it != checked_leaves.end()) return it->second;
  std::vector<Hash> leaves = read_stored_leaves(name, e.grid);
  std::vector<Hash> scale_leaves;
  if (e.info.dtype == DType::I8)
    scale_leaves = read_stored_leaves(name + kScalesSuffix, e.scale_grid);
  const Hash root = integrity::tensor_root(name, dtype_name(e.info.dtype), e.info.shape, leaves,
                                           e.info.dtype == DType::I8 ? &scale_leaves : nullptr);
  ALEM_CHECK(root == e.root, "model store " + path + ": the tile hashes recorded for tensor '" +
                                 name +
                                 "' do not fold to its recorded root; the store was modified or "
                                 "is corrupt, refusing to load it");
  checked_leaves.emplace(name, std::move(leaves));
  if (e.info.dtype == DType::I8)
    checked_leaves.emplace(name + kScalesSuffix, std::move(scale_leaves));
  return checked_leaves.at(dataset);
}

void ModelStoreReader::Impl::read_checked(const Entry& e, bool scales, const Block& want,
                                          void* out) const {
  const std::string dataset = scales ? e.info.name + kScalesSuffix : e.info.name;
  const DType stored = scales ? DType::F32 : e.info.dtype;
  const hid_t memory_type = memory_type_for(stored);
  const bool one_d = e.info.shape.size() == 1;
  if (!verify_reads) {
    h5::LibraryLock lock(h5::library_mutex());
    read_raw(dataset, one_d, memory_type, want, out);
    return;
  }
  const TileGrid& g = scales ? e.scale_grid : e.grid;
  const Block cover = integrity::covering_block(g, want);
  const size_t element = stored_element_size(stored);
  std::vector<uint8_t> wider;
  uint8_t* data = static_cast<uint8_t*>(out);
  if (!(cover == want)) {
    wider.resize(static_cast<size_t>(cover.rows * cover.cols) * element);
    data = wider.data();
  }
  // Read in stripes of whole tile rows and hash stripe k on another thread while HDF5 reads
  // stripe k+1, so the check costs little more than the read (docs/model-store.md, "Cost").
  // Every stripe is checked before this returns; the future joins before `wider` is freed.
  const size_t row_bytes = static_cast<size_t>(cover.cols) * element;
  const int64_t stripe_rows = std::max<int64_t>(
      g.tile_rows, static_cast<int64_t>(kVerifyStripeBytes / std::max<size_t>(1, row_bytes)) /
                       g.tile_rows * g.tile_rows);
  const std::vector<Hash>* leaves = nullptr;
  auto check_stripe = [&g, element](Block stripe, const uint8_t* bytes,
                                    const std::vector<Hash>* recorded) -> Block {
    const std::vector<Hash> hashes = integrity::hash_block(g, stripe, bytes, element);
    const int64_t bad = integrity::first_mismatch(g, stripe, hashes, *recorded);
    if (bad < 0) return Block{};
    const int64_t tiles_per_row = (stripe.cols + g.tile_cols - 1) / g.tile_cols;
    const int64_t r0 = stripe.row_begin + bad / tiles_per_row * g.tile_rows;
    const int64_t c0 = stripe.col_begin + bad % tiles_per_row * g.tile_cols;
    return Block{r0, std::min(g.rows, r0 + g.tile_rows) - r0, c0,
                 std::min(g.cols, c0 + g.tile_cols) - c0};
  };
  auto fail_on = [&](const Block& bad) {
    if (bad.rows == 0) return;
    ALEM_FAIL("model store " + path + ": tensor '" + dataset + "' rows [" +
              std::to_string(bad.row_begin) + ", " + std::to_string(bad.row_begin + bad.rows) +
              ") cols [" + std::to_string(bad.col_begin) + ", " +
              std::to_string(bad.col_begin + bad.cols) +
              ") do not match the hash recorded under model digest " + digest +
              "; the store was modified or is corrupt, refusing to load it");
  };
  std::future<Block> pending;
  for (int64_t r = 0; r < cover.rows; r += stripe_rows) {
    const Block stripe{cover.row_begin + r, std::min(stripe_rows, cover.rows - r), cover.col_begin,
                       cover.cols};
    uint8_t* bytes = data + static_cast<size_t>(r) * row_bytes;
    {
      h5::LibraryLock lock(h5::library_mutex());
      read_raw(dataset, one_d, memory_type, stripe, bytes);
      if (!leaves) leaves = &leaves_for(e, scales);
    }
    if (pending.valid()) fail_on(pending.get());
    if (r + stripe_rows >= cover.rows) {
      fail_on(check_stripe(stripe, bytes, leaves));  // the last stripe: nothing left to overlap
    } else {
      pending = std::async(std::launch::async, check_stripe, stripe, bytes, leaves);
    }
  }
  if (!wider.empty()) {
    const size_t want_bytes = static_cast<size_t>(want.cols) * element;
    for (int64_t r = 0; r < want.rows; ++r) {
      const size_t from = (static_cast<size_t>(want.row_begin - cover.row_begin + r) * cover.cols +
                           static_cast<size_t>(want.col_begin - cover.col_begin)) *
                          element;
      std::memcpy(static_cast<uint8_t*>(out) + static_cast<size_t>(r) * want_bytes,
                  wider.data() + from, want_bytes);
    }
  }
}

std::vector<Hash> ModelStoreReader::Impl::recompute_leaves(const Entry& e, bool scales) const {
  const TileGrid& g = scales ? e.scale_grid : e.grid;
  const DType stored = scales ? DType::F32 : e.info.dtype;
  const std::string dataset = scales ? e.info.name + kScalesSuffix : e.info.name;
  std::vector<Hash> leaves;
  leaves.reserve(static_cast<size_t>(g.leaf_count()));
  std::vector<uint8_t> buffer;
  for (int64_t r = 0; r < g.rows; r += kDigestRowsPerRead) {
    const Block b{r, std::min(kDigestRowsPerRead, g.rows - r), 0, g.cols};
    buffer.resize(static_cast<size_t>(b.rows * b.cols) * stored_element_size(stored));
    read_raw(dataset, e.info.shape.size() == 1, memory_type_for(stored), b, buffer.data());
    const std::vector<Hash> part =
        integrity::hash_block(g, b, buffer.data(), stored_element_size(stored));
    leaves.insert(leaves.end(), part.begin(), part.end());
  }
  return leaves;
}

ModelStoreReader::Impl::Recomputed ModelStoreReader::Impl::recompute() const {
  Recomputed out;
  for (const auto& [name, e] : tensors) {
    std::vector<Hash> leaves = recompute_leaves(e, false);
    std::vector<Hash> scale_leaves;
    if (e.info.dtype == DType::I8) scale_leaves = recompute_leaves(e, true);
    out.roots.emplace_back(
        name, integrity::tensor_root(name, dtype_name(e.info.dtype), e.info.shape, leaves,
                                     e.info.dtype == DType::I8 ? &scale_leaves : nullptr));
    out.leaves.emplace(name, std::move(leaves));
    if (e.info.dtype == DType::I8)
      out.leaves.emplace(name + kScalesSuffix, std::move(scale_leaves));
  }
  out.digest = integrity::model_digest(config_json, tokenizer, out.roots);
  return out;
}

ModelStoreReader::ModelStoreReader(const std::string& path, const ModelStoreReadOptions& options)
    : impl_(std::make_unique<Impl>()) {
  h5::LibraryLock lock(h5::library_mutex());
  impl_->verify_reads = options.verify_reads;
  impl_->open(path, /*require_integrity=*/true);
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
  const Impl::Entry& e = impl_->entry(name);
  const TensorInfo& info = e.info;
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
  Block stored{row_begin, row_count, col_begin, col_count};
  if (dtype_is_block(info.dtype)) {
    // A tensor-parallel shard of a block type must cut between blocks, never through one.
    const int64_t block = dtype_block_elements(info.dtype);
    ALEM_CHECK(col_begin % block == 0 && col_count % block == 0,
               where + ": " + dtype_name(info.dtype) + " column range [" +
                   std::to_string(col_begin) + ", " + std::to_string(col_begin + col_count) +
                   ") does not fall on its " + std::to_string(block) +
                   "-element block boundaries; choose a tensor-parallel size that splits this "
                   "matrix into whole blocks, or convert the model to another dtype");
    stored.col_begin = col_begin / block * dtype_block_bytes(info.dtype);
    stored.cols = col_count / block * dtype_block_bytes(info.dtype);
  }
  WeightMatrix m;
  m.dtype = info.dtype;
  m.rows = row_count;
  m.cols = col_count;
  m.data.resize(static_cast<size_t>(row_count) * dtype_row_bytes(info.dtype, col_count));
  if (row_count == 0 || col_count == 0) return m;
  impl_->read_checked(e, false, stored, m.data.data());
  uint64_t bytes = m.data.size();
  if (info.dtype == DType::I8) {
    m.scales.resize(static_cast<size_t>(row_count * (col_count / kInt8GroupSize)));
    impl_->read_checked(
        e, true,
        Block{row_begin, row_count, col_begin / kInt8GroupSize, col_count / kInt8GroupSize},
        m.scales.data());
    bytes += m.scales.size() * sizeof(float);
  }
  impl_->bytes_read += bytes;
  return m;
}

std::vector<float> ModelStoreReader::read_vector(const std::string& name, int64_t begin,
                                                 int64_t count) const {
  const Impl::Entry& e = impl_->entry(name);
  const std::string where = "tensor " + name + " in " + impl_->path;
  ALEM_CHECK(e.info.shape.size() == 1, where + " is 2-D; use read_matrix");
  const int64_t n = e.info.shape[0];
  if (count < 0) count = n - begin;
  ALEM_CHECK(begin >= 0 && count >= 0 && begin + count <= n,
             where + ": range [" + std::to_string(begin) + ", " + std::to_string(begin + count) +
                 ") outside [0, " + std::to_string(n) + ")");
  std::vector<float> out(static_cast<size_t>(count));
  if (count == 0) return out;
  impl_->read_checked(e, false, Block{0, 1, begin, count}, out.data());
  impl_->bytes_read += out.size() * sizeof(float);
  return out;
}

uint64_t ModelStoreReader::bytes_read() const {
  return impl_->bytes_read.load();
}

std::string ModelStoreReader::verify() const {
  h5::LibraryLock lock(h5::library_mutex());
  Impl::Recomputed actual;
  try {
    actual = impl_->recompute();
  } catch (const Error& e) {
    return "cannot read the content of " + impl_->path + ": " + e.message();
  }
  std::string problems;
  auto add = [&](const std::string& p) { problems += (problems.empty() ? "" : "; ") + p; };
  for (const auto& [name, e] : impl_->tensors) {
    for (bool scales : {false, true}) {
      if (scales && e.info.dtype != DType::I8) continue;
      const std::string dataset = scales ? name + kScalesSuffix : name;
      const TileGrid& g = scales ? e.scale_grid : e.grid;
      std::vector<Hash> stored;
      try {
        stored = impl_->read_stored_leaves(dataset, g);
      } catch (const Error& err) {
        add(err.message());
        continue;
      }
      const std::vector<Hash>& computed = actual.leaves.at(dataset);
      for (size_t i = 0; i < computed.size(); ++i) {
        if (computed[i] == stored[i]) continue;
        const int64_t r0 = static_cast<int64_t>(i) / g.grid_cols() * g.tile_rows;
        const int64_t c0 = static_cast<int64_t>(i) % g.grid_cols() * g.tile_cols;
        add("tensor '" + dataset + "' rows [" + std::to_string(r0) + ", " +
            std::to_string(std::min(g.rows, r0 + g.tile_rows)) + ") cols [" + std::to_string(c0) +
            ", " + std::to_string(std::min(g.cols, c0 + g.tile_cols)) +
            ") do not match their recorded hash");
        break;
      }
    }
  }
  for (const auto& [name, root] : actual.roots) {
    if (root != impl_->tensors.at(name).root) {
      add("tensor '" + name + "' hashes to root " + integrity::to_hex(root) + ", recorded " +
          integrity::to_hex(impl_->tensors.at(name).root));
    }
  }
  if (actual.digest != impl_->digest) {
    add("content hashes to model digest " + actual.digest + ", recorded " + impl_->digest);
  }
  if (problems.empty()) return "";
  return "model digest mismatch in " + impl_->path + ": " + problems;
}

std::string compute_model_store_digest(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  ModelStoreReader::Impl impl;
  impl.open(path, /*require_integrity=*/false);
  return impl.recompute().digest;
}

std::string record_model_store_integrity(const std::string& path) {
  h5::LibraryLock lock(h5::library_mutex());
  ModelStoreReader::Impl::Recomputed tree;
  {
    ModelStoreReader::Impl impl;
    impl.open(path, /*require_integrity=*/false);
    tree = impl.recompute();
  }
  const std::string what = "record the hash tree of " + path;
  h5::Handle fapl = h5::checksummed_file_access(what);
  h5::Handle file = h5::own_file(H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl.get()), what);
  h5::Handle group = h5::own_group(
      H5Gcreate2(file.get(), "integrity", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  h5::Handle leaves =
      h5::own_group(H5Gcreate2(group.get(), "leaves", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what);
  for (const auto& [dataset, hashes] : tree.leaves) {
    h5::write_dataset(leaves.get(), dataset, H5T_STD_U8LE, H5T_NATIVE_UINT8, {hashes.size(), 32},
                      hashes.data(), path + ":/integrity/leaves");
  }
  std::vector<Hash> roots;
  for (const auto& [name, root] : tree.roots) roots.push_back(root);
  h5::write_dataset(group.get(), "tensor_roots", H5T_STD_U8LE, H5T_NATIVE_UINT8, {roots.size(), 32},
                    roots.data(), path + ":/integrity");
  h5::write_string_attribute(file.get(), "model_digest", tree.digest, "model store " + path);
  h5::check_status(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "flush " + path);
  return tree.digest;
}

}  // namespace alem
