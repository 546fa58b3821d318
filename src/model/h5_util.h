// Internal helpers around the HDF5 C API shared by the model store reader and writer: an RAII
// handle, failure checks that turn HDF5's error stack into an alem::Error naming the file and
// object, and scalar string/integer attributes. Not part of the public model store API.
#pragma once

#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace alem::h5 {

// The HDF5 library alem links (the MPI-parallel build) is not thread-safe, so every model store
// call that touches HDF5 holds this process-wide lock. Recursive: the writer's finish() computes
// the digest through the reader code.
inline std::recursive_mutex& library_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}
using LibraryLock = std::lock_guard<std::recursive_mutex>;

// Owns one HDF5 identifier and closes it with the matching H5?close function.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept
      : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Turns off HDF5's automatic printing of error stacks to stderr; alem reports errors itself.
inline void silence_errors() {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

// The descriptions on HDF5's current error stack (innermost last), then clears it.
inline std::string error_stack_text() {
  std::string text;
  auto walker = [](unsigned n, const H5E_error2_t* err, void* data) -> herr_t {
    auto* out = static_cast<std::string*>(data);
    if (n < 4 && err && err->desc && *err->desc) {
      if (!out->empty()) *out += "; ";
      *out += err->desc;
    }
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walker, &text);
  H5Eclear2(H5E_DEFAULT);
  return text.empty() ? "HDF5 call failed" : text;
}

[[noreturn]] inline void fail(const std::string& what) {
  ALEM_FAIL(what + " (HDF5: " + error_stack_text() + ")");
}

inline hid_t check_id(hid_t id, const std::string& what) {
  if (id < 0) fail(what);
  return id;
}
inline void check_status(herr_t status, const std::string& what) {
  if (status < 0) fail(what);
}

inline Handle own_file(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Fclose};
}
inline Handle own_group(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Gclose};
}
inline Handle own_dataset(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Dclose};
}
inline Handle own_space(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Sclose};
}
inline Handle own_type(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Tclose};
}
inline Handle own_attribute(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Aclose};
}
inline Handle own_plist(hid_t id, const std::string& what) {
  return {check_id(id, what), H5Pclose};
}

// File access for stores of format version 2: the HDF5 1.10 file format, whose superblock,
// object headers, heaps and chunk indexes carry checksums, so corrupt metadata is an HDF5 error
// rather than a wild read.
inline Handle checksummed_file_access(const std::string& what) {
  Handle fapl = own_plist(H5Pcreate(H5P_FILE_ACCESS), what);
  check_status(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_LATEST), what);
  return fapl;
}

// Variable-length UTF-8 string type (read only for version 1 stores).
inline Handle vlen_string_type() {
  Handle t = own_type(H5Tcopy(H5T_C_S1), "copy string type");
  check_status(H5Tset_size(t.get(), H5T_VARIABLE), "set variable string size");
  check_status(H5Tset_cset(t.get(), H5T_CSET_UTF8), "set UTF-8 string encoding");
  return t;
}

inline bool has_attribute(hid_t object, const std::string& name) {
  const htri_t r = H5Aexists(object, name.c_str());
  if (r < 0) H5Eclear2(H5E_DEFAULT);
  return r > 0;
}

// Scalar string attributes are fixed-length (NUL-padded, stored inline in the object header,
// which format version 2 files checksum): no variable-length data in HDF5's global heap, whose
// corruption libhdf5 does not survive.
inline void write_string_attribute(hid_t object, const std::string& name, const std::string& value,
                                   const std::string& where) {
  const std::string what = "write attribute '" + name + "' of " + where;
  ALEM_CHECK(value.find('\0') == std::string::npos, what + ": value contains a NUL byte");
  Handle type = own_type(H5Tcopy(H5T_C_S1), what);
  check_status(H5Tset_size(type.get(), std::max<size_t>(1, value.size())), what);
  check_status(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what);
  check_status(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  Handle space = own_space(H5Screate(H5S_SCALAR), what);
  if (has_attribute(object, name)) check_status(H5Adelete(object, name.c_str()), what);
  Handle attr = own_attribute(
      H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  std::string padded = value;
  padded.resize(std::max<size_t>(1, value.size()), '\0');
  check_status(H5Awrite(attr.get(), type.get(), padded.data()), what);
}

inline void write_int_attribute(hid_t object, const std::string& name, int64_t value,
                                const std::string& where) {
  const std::string what = "write attribute '" + name + "' of " + where;
  Handle space = own_space(H5Screate(H5S_SCALAR), what);
  if (has_attribute(object, name)) check_status(H5Adelete(object, name.c_str()), what);
  Handle attr = own_attribute(
      H5Acreate2(object, name.c_str(), H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  check_status(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), what);
}

inline std::string read_string_attribute(hid_t object, const std::string& name,
                                         const std::string& where) {
  const std::string what = "attribute '" + name + "' of " + where;
  ALEM_CHECK(has_attribute(object, name), where + " has no attribute '" + name + "'");
  Handle attr = own_attribute(H5Aopen(object, name.c_str(), H5P_DEFAULT), "open " + what);
  Handle file_type = own_type(H5Aget_type(attr.get()), "type of " + what);
  ALEM_CHECK(H5Tget_class(file_type.get()) == H5T_STRING, what + " is not a string");
  Handle space = own_space(H5Aget_space(attr.get()), "space of " + what);
  ALEM_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, what + " is not a scalar");
  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle type = vlen_string_type();
    char* data = nullptr;
    check_status(H5Aread(attr.get(), type.get(), &data), "read " + what);
    std::string value = data ? data : "";
    H5free_memory(data);
    return value;
  }
  const size_t size = H5Tget_size(file_type.get());
  ALEM_CHECK(size > 0 && size < (1u << 30), what + " has an impossible string size");
  std::string value(size, '\0');
  check_status(H5Aread(attr.get(), file_type.get(), value.data()), "read " + what);
  value.resize(std::strlen(value.c_str()));
  return value;
}

inline int64_t read_int_attribute(hid_t object, const std::string& name, const std::string& where) {
  const std::string what = "attribute '" + name + "' of " + where;
  ALEM_CHECK(has_attribute(object, name), where + " has no attribute '" + name + "'");
  Handle attr = own_attribute(H5Aopen(object, name.c_str(), H5P_DEFAULT), "open " + what);
  Handle file_type = own_type(H5Aget_type(attr.get()), "type of " + what);
  ALEM_CHECK(H5Tget_class(file_type.get()) == H5T_INTEGER, what + " is not an integer");
  Handle space = own_space(H5Aget_space(attr.get()), "space of " + what);
  ALEM_CHECK(H5Sget_simple_extent_npoints(space.get()) == 1, what + " is not a scalar");
  int64_t value = 0;
  check_status(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), "read " + what);
  return value;
}

// Writes a 1-D or 2-D contiguous dataset of `count` elements (dims[0] * dims[1]).
inline void write_dataset(hid_t group, const std::string& name, hid_t file_type, hid_t memory_type,
                          const std::vector<hsize_t>& dims, const void* data,
                          const std::string& where) {
  const std::string what = "write " + where + "/" + name;
  Handle space =
      own_space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what);
  Handle ds = own_dataset(H5Dcreate2(group, name.c_str(), file_type, space.get(), H5P_DEFAULT,
                                     H5P_DEFAULT, H5P_DEFAULT),
                          what);
  if (H5Sget_simple_extent_npoints(space.get()) > 0) {
    check_status(H5Dwrite(ds.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
  }
}

// Reads a whole dataset of integers of `element_size` bytes whose shape must be `inner` columns
// wide (1-D when inner == 0) and hold at most `max_elements` elements; its size is checked
// before anything is allocated, so a corrupt extent is an error rather than a huge allocation.
template <typename T>
std::vector<T> read_int_dataset(hid_t group, const std::string& name, hid_t memory_type,
                                hsize_t inner, hsize_t max_elements, const std::string& where) {
  const std::string what = where + "/" + name;
  const htri_t exists = H5Lexists(group, name.c_str(), H5P_DEFAULT);
  if (exists < 0) H5Eclear2(H5E_DEFAULT);
  ALEM_CHECK(exists > 0, where + " has no dataset '" + name + "'");
  Handle ds = own_dataset(H5Dopen2(group, name.c_str(), H5P_DEFAULT), "open " + what);
  Handle type = own_type(H5Dget_type(ds.get()), "type of " + what);
  ALEM_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_size(type.get()) == sizeof(T),
             what + " is not a dataset of " + std::to_string(sizeof(T)) + "-byte integers");
  Handle space = own_space(H5Dget_space(ds.get()), "space of " + what);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  ALEM_CHECK(rank == (inner == 0 ? 1 : 2), what + " has rank " + std::to_string(rank));
  hsize_t dims[2] = {0, 0};
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  ALEM_CHECK(inner == 0 || dims[1] == inner,
             what + " does not have " + std::to_string(inner) + " columns");
  const hsize_t n = dims[0] * (inner == 0 ? 1 : inner);
  ALEM_CHECK(dims[0] <= max_elements && n <= max_elements,
             what + " has an impossible size " + std::to_string(dims[0]));
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0) {
    check_status(H5Dread(ds.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
                 "read " + what);
  }
  return out;
}

// A list of strings stored as `<name>_bytes` (uint8, the strings back to back) and
// `<name>_offsets` (uint64, count + 1 entries, starting at 0, ending at the byte count). Fixed-size
// datasets: a corrupt offset is caught by the bounds checks below (and the digest), never
// dereferenced.
inline void write_string_table(hid_t group, const std::string& name,
                               const std::vector<std::string>& values, const std::string& where) {
  std::string bytes;
  std::vector<uint64_t> offsets{0};
  for (const std::string& v : values) {
    bytes += v;
    offsets.push_back(bytes.size());
  }
  write_dataset(group, name + "_bytes", H5T_STD_U8LE, H5T_NATIVE_UINT8, {bytes.size()},
                bytes.data(), where);
  write_dataset(group, name + "_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, {offsets.size()},
                offsets.data(), where);
}

inline std::vector<std::string> read_string_table(hid_t group, const std::string& name,
                                                  const std::string& where) {
  constexpr hsize_t kMaxBytes = hsize_t{1} << 31, kMaxStrings = hsize_t{1} << 26;
  const std::vector<uint8_t> bytes =
      read_int_dataset<uint8_t>(group, name + "_bytes", H5T_NATIVE_UINT8, 0, kMaxBytes, where);
  const std::vector<uint64_t> offsets = read_int_dataset<uint64_t>(
      group, name + "_offsets", H5T_NATIVE_UINT64, 0, kMaxStrings + 1, where);
  const std::string what = where + "/" + name;
  ALEM_CHECK(!offsets.empty() && offsets.front() == 0 && offsets.back() == bytes.size(),
             what + ": the offsets do not span the " + std::to_string(bytes.size()) +
                 " string bytes (corrupt store)");
  std::vector<std::string> out;
  out.reserve(offsets.size() - 1);
  for (size_t i = 0; i + 1 < offsets.size(); ++i) {
    ALEM_CHECK(offsets[i] <= offsets[i + 1] && offsets[i + 1] <= bytes.size(),
               what + ": offset " + std::to_string(i + 1) +
                   " is out of order or past the end (corrupt store)");
    out.emplace_back(reinterpret_cast<const char*>(bytes.data()) + offsets[i],
                     offsets[i + 1] - offsets[i]);
  }
  return out;
}

// One string stored as a uint8 dataset (chat templates can exceed what an attribute holds).
inline void write_text_dataset(hid_t group, const std::string& name, const std::string& text,
                               const std::string& where) {
  write_dataset(group, name, H5T_STD_U8LE, H5T_NATIVE_UINT8, {text.size()}, text.data(), where);
}
inline std::string read_text_dataset(hid_t group, const std::string& name,
                                     const std::string& where) {
  const std::vector<uint8_t> bytes =
      read_int_dataset<uint8_t>(group, name, H5T_NATIVE_UINT8, 0, hsize_t{1} << 28, where);
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace alem::h5
