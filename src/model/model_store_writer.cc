// ModelStoreWriter: creates the HDF5 layout documented in model_store.h. Matrices are chunked
// in 64x64 tiles so that a tensor-parallel rank's row or column range maps onto whole chunks;
// nothing is compressed, so a hyperslab read is a plain pread of the chunks it touches. The
// tiles are also the leaves of the hash tree that finish() records (store_integrity.h).
#include "model/model_store_writer.h"

#include <algorithm>
#include <vector>

#include "model/h5_util.h"

namespace alem {
namespace {

constexpr hsize_t kTileEdge = 64;

hid_t file_type_for(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return H5T_IEEE_F32LE;
    case DType::BF16:
    case DType::F16:
      return H5T_STD_U16LE;
    case DType::I8:
      return H5T_STD_I8LE;
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
      return H5T_STD_U8LE;  // raw ggml blocks
  }
  return H5T_IEEE_F32LE;
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

}  // namespace

struct ModelStoreWriter::Impl {
  std::string path;
  h5::Handle file;
  h5::Handle tensors;
  int64_t tensor_count = 0;
  int64_t element_count = 0;
  bool finished = false;

  void check_open(const std::string& name) const {
    ALEM_CHECK(!finished, "model store " + path + ": cannot add '" + name + "' after finish()");
    ALEM_CHECK(!name.empty() && name.find('/') == std::string::npos &&
                   name.find('\0') == std::string::npos,
               "model store " + path + ": invalid tensor name '" + name + "'");
    ALEM_CHECK(name.size() < 7 || name.compare(name.size() - 7, 7, ".scales") != 0,
               "model store " + path + ": tensor name '" + name +
                   "' ends in .scales, which is reserved for int8 scales");
    const htri_t exists = H5Lexists(tensors.get(), name.c_str(), H5P_DEFAULT);
    ALEM_CHECK(exists == 0, "model store " + path + ": tensor '" + name + "' added twice");
  }

  // Creates a chunked 2-D dataset and writes `data` (row-major, memory type of `dtype`).
  void write_2d(const std::string& name, DType dtype, int64_t rows, int64_t cols, const void* data,
                const std::string& dtype_attribute) {
    const std::string what = "write tensor " + name + " to " + path;
    const hsize_t dims[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(cols)};
    h5::Handle space = h5::own_space(H5Screate_simple(2, dims, nullptr), what);
    h5::Handle dcpl = h5::own_plist(H5Pcreate(H5P_DATASET_CREATE), what);
    const hsize_t chunk[2] = {std::min(kTileEdge, dims[0]), std::min(kTileEdge, dims[1])};
    h5::check_status(H5Pset_chunk(dcpl.get(), 2, chunk), what + " (chunking)");
    h5::check_status(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), what);
    h5::Handle ds = h5::own_dataset(H5Dcreate2(tensors.get(), name.c_str(), file_type_for(dtype),
                                               space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                                    what);
    h5::check_status(
        H5Dwrite(ds.get(), memory_type_for(dtype), H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
    h5::write_string_attribute(ds.get(), "dtype", dtype_attribute, "tensor " + name);
  }
};

ModelStoreWriter::ModelStoreWriter(const std::string& path, const ModelConfig& config,
                                   const TokenizerData& tokenizer, const std::string& source)
    : impl_(std::make_unique<Impl>()) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::silence_errors();
  config.validate();
  ALEM_CHECK(tokenizer.token_kinds.size() == tokenizer.tokens.size(),
             "model store " + path + ": tokenizer has " + std::to_string(tokenizer.tokens.size()) +
                 " tokens but " + std::to_string(tokenizer.token_kinds.size()) + " token kinds");
  impl_->path = path;
  const h5::Handle fapl = h5::checksummed_file_access("create model store " + path);
  impl_->file = h5::own_file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()),
                             "create model store " + path);
  const hid_t root = impl_->file.get();
  const std::string where = "model store " + path;
  h5::write_string_attribute(root, "format", "alem-model", where);
  h5::write_int_attribute(root, "format_version", 2, where);
  h5::write_string_attribute(root, "config_json", config.to_json(), where);
  h5::write_string_attribute(root, "source", source, where);

  // Strings as fixed-size byte datasets (blob + offsets), never HDF5 variable-length strings:
  // those live in the global heap, and libhdf5 crashes on a corrupt one.
  h5::Handle tok =
      h5::own_group(H5Gcreate2(root, "tokenizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                    "create /tokenizer in " + path);
  const std::string tok_where = path + ":/tokenizer";
  h5::write_string_table(tok.get(), "tokens", tokenizer.tokens, tok_where);
  h5::write_dataset(tok.get(), "token_kinds", H5T_STD_I32LE, H5T_NATIVE_INT32,
                    {tokenizer.token_kinds.size()}, tokenizer.token_kinds.data(), tok_where);
  h5::write_string_table(tok.get(), "merges", tokenizer.merges, tok_where);
  h5::write_text_dataset(tok.get(), "chat_template", tokenizer.chat_template, tok_where);
  h5::write_string_attribute(tok.get(), "model", tokenizer.model, tok_where);
  h5::write_string_attribute(tok.get(), "pre_tokenizer", tokenizer.pre_tokenizer, tok_where);
  h5::write_int_attribute(tok.get(), "bos_token_id", tokenizer.bos_token_id, tok_where);
  h5::write_int_attribute(tok.get(), "eos_token_id", tokenizer.eos_token_id, tok_where);
  h5::write_int_attribute(tok.get(), "unknown_token_id", tokenizer.unknown_token_id, tok_where);
  h5::write_int_attribute(tok.get(), "padding_token_id", tokenizer.padding_token_id, tok_where);
  h5::write_int_attribute(tok.get(), "add_bos_token", tokenizer.add_bos_token ? 1 : 0, tok_where);

  impl_->tensors = h5::own_group(H5Gcreate2(root, "tensors", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                 "create /tensors in " + path);
}

ModelStoreWriter::~ModelStoreWriter() {
  h5::LibraryLock lock(h5::library_mutex());
  impl_.reset();
}

void ModelStoreWriter::add_matrix(const std::string& name, const float* values, int64_t rows,
                                  int64_t cols, DType dtype) {
  ALEM_CHECK(rows > 0 && cols > 0, "model store " + impl_->path + ": tensor '" + name +
                                       "' has an empty shape [" + std::to_string(rows) + ", " +
                                       std::to_string(cols) + "]");
  if (dtype == DType::F32) {  // no copy needed
    h5::LibraryLock lock(h5::library_mutex());
    impl_->check_open(name);
    impl_->write_2d(name, DType::F32, rows, cols, values, dtype_name(DType::F32));
    ++impl_->tensor_count;
    impl_->element_count += rows * cols;
    return;
  }
  ALEM_CHECK(dtype != DType::I8 || cols % kInt8GroupSize == 0,
             "model store " + impl_->path + ": tensor '" + name + "' has " + std::to_string(cols) +
                 " columns, not a multiple of the int8 group size " +
                 std::to_string(kInt8GroupSize));
  add_matrix(name, make_weight_matrix(values, rows, cols, dtype));
}

void ModelStoreWriter::add_matrix(const std::string& name, const WeightMatrix& m) {
  h5::LibraryLock lock(h5::library_mutex());
  impl_->check_open(name);
  ALEM_CHECK(dtype_is_block(m.dtype) == false || m.cols % dtype_block_elements(m.dtype) == 0,
             "model store " + impl_->path + ": " + dtype_name(m.dtype) + " matrix '" + name +
                 "' has " + std::to_string(m.cols) + " columns, not a whole number of blocks");
  ALEM_CHECK(
      m.rows > 0 && m.cols > 0 && m.data.size() == static_cast<size_t>(m.rows) * m.row_bytes(),
      "model store " + impl_->path + ": matrix '" + name + "' has " +
          std::to_string(m.data.size()) + " data bytes for shape [" + std::to_string(m.rows) +
          ", " + std::to_string(m.cols) + "] of " + dtype_name(m.dtype));
  if (m.dtype == DType::I8) {
    ALEM_CHECK(m.cols % kInt8GroupSize == 0 &&
                   m.scales.size() == static_cast<size_t>(m.rows * m.groups_per_row()),
               "model store " + impl_->path + ": int8 matrix '" + name +
                   "' needs cols % 32 == 0 and rows*cols/32 scales, got " +
                   std::to_string(m.scales.size()) + " scales");
  }
  // Block types are stored as their raw bytes, [rows, row_bytes] of uint8: a row range is a
  // hyperslab of whole rows and a block-aligned column range one of whole blocks.
  const int64_t stored_cols =
      dtype_is_block(m.dtype) ? static_cast<int64_t>(m.row_bytes()) : m.cols;
  impl_->write_2d(name, m.dtype, m.rows, stored_cols, m.data.data(), dtype_name(m.dtype));
  if (m.dtype == DType::I8) {
    impl_->write_2d(name + ".scales", DType::F32, m.rows, m.groups_per_row(), m.scales.data(),
                    dtype_name(DType::F32));
  }
  ++impl_->tensor_count;
  impl_->element_count += m.rows * m.cols;
}

void ModelStoreWriter::add_vector(const std::string& name, const float* values, int64_t count) {
  h5::LibraryLock lock(h5::library_mutex());
  impl_->check_open(name);
  ALEM_CHECK(count > 0, "model store " + impl_->path + ": vector '" + name + "' is empty");
  const std::string what = "write tensor " + name + " to " + impl_->path;
  const hsize_t dims[1] = {static_cast<hsize_t>(count)};
  h5::Handle space = h5::own_space(H5Screate_simple(1, dims, nullptr), what);
  h5::Handle ds = h5::own_dataset(H5Dcreate2(impl_->tensors.get(), name.c_str(), H5T_IEEE_F32LE,
                                             space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                                  what);
  h5::check_status(H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values),
                   what);
  h5::write_string_attribute(ds.get(), "dtype", dtype_name(DType::F32), "tensor " + name);
  ++impl_->tensor_count;
  impl_->element_count += count;
}

int64_t ModelStoreWriter::tensor_count() const {
  return impl_->tensor_count;
}
int64_t ModelStoreWriter::element_count() const {
  return impl_->element_count;
}

std::string ModelStoreWriter::finish() {
  h5::LibraryLock lock(h5::library_mutex());
  ALEM_CHECK(!impl_->finished, "model store " + impl_->path + ": finish() called twice");
  impl_->finished = true;
  impl_->tensors.reset();
  h5::check_status(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL), "flush " + impl_->path);
  impl_->file.reset();
  const std::string digest = record_model_store_integrity(impl_->path);
  return digest;
}

}  // namespace alem
