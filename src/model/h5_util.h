// Internal helpers around the HDF5 C API shared by the model store reader and writer: an RAII
// handle, failure checks that turn HDF5's error stack into an alem::Error naming the file and
// object, and scalar string/integer attributes. Not part of the public model store API.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

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

// Variable-length UTF-8 string type.
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

inline void write_string_attribute(hid_t object, const std::string& name, const std::string& value,
                                   const std::string& where) {
  const std::string what = "write attribute '" + name + "' of " + where;
  ALEM_CHECK(value.find('\0') == std::string::npos, what + ": value contains a NUL byte");
  Handle type = vlen_string_type();
  Handle space = own_space(H5Screate(H5S_SCALAR), what);
  if (has_attribute(object, name)) check_status(H5Adelete(object, name.c_str()), what);
  Handle attr = own_attribute(
      H5Acreate2(object, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what);
  const char* data = value.c_str();
  check_status(H5Awrite(attr.get(), type.get(), &data), what);
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

}  // namespace alem::h5
