// HDF5 results of `alem bench sweep` (see results_file.h for the layout).
#include "plan/results_file.h"

#include <hdf5.h>

#include <filesystem>
#include <set>
#include <sstream>

#include "core/error.h"
#include "model/h5_util.h"

namespace alem::plan {

using h5::Handle;

namespace {

void check(herr_t status, const std::string& what) {
  ALEM_CHECK(status >= 0, what + ": " + h5::error_stack_text());
}

void write_string_attr(hid_t obj, const std::string& name, const std::string& value) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  ALEM_CHECK(attr.valid(), "cannot write attribute " + name);
  check(H5Awrite(attr.get(), type.get(), value.data()), "attribute " + name);
}

std::string read_string_attr(hid_t obj, const std::string& name) {
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  if (!attr.valid()) return "";
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  std::string value(H5Tget_size(type.get()), '\0');
  Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mem.get(), value.size());
  check(H5Aread(attr.get(), mem.get(), value.data()), "attribute " + name);
  while (!value.empty() && value.back() == '\0') value.pop_back();
  return value;
}

void write_int_attr(hid_t obj, const std::string& name, int value) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name.c_str(), H5T_NATIVE_INT, space.get(), H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  check(H5Awrite(attr.get(), H5T_NATIVE_INT, &value), "attribute " + name);
}

std::vector<std::string> names_in(hid_t group, H5O_type_t kind) {
  std::vector<std::string> names;
  H5G_info_t info;
  check(H5Gget_info(group, &info), "group info");
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    char name[256];
    if (H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name,
                           H5P_DEFAULT) < 0)
      continue;
    H5O_info_t oinfo;
    if (H5Oget_info_by_name2(group, name, &oinfo, H5O_INFO_BASIC, H5P_DEFAULT) >= 0 &&
        oinfo.type == kind)
      names.push_back(name);
  }
  return names;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream in(text);
  for (std::string p; std::getline(in, p, ',');) parts.push_back(p);
  return parts;
}

}  // namespace

struct ResultsFile::Impl {
  std::string path;
  Handle file;
  Handle runs;
};

ResultsFile::ResultsFile(const std::string& path,
                         const std::map<std::string, std::string>& provenance)
    : impl_(std::make_unique<Impl>()) {
  h5::LibraryLock lock(h5::library_mutex());
  h5::silence_errors();
  impl_->path = path;
  if (std::filesystem::exists(path)) {
    impl_->file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    ALEM_CHECK(impl_->file.valid(), "cannot open results file " + path + " (" +
                                        h5::error_stack_text() +
                                        "); move it away to start a new sweep");
    const std::string digest = read_string_attr(impl_->file.get(), "model_digest");
    const auto want = provenance.find("model_digest");
    ALEM_CHECK(want == provenance.end() || digest.empty() || digest == want->second,
               path + " holds results of another model (digest " + digest.substr(0, 12) +
                   "...); use another --output");
    impl_->runs = Handle(H5Gopen2(impl_->file.get(), "runs", H5P_DEFAULT), H5Gclose);
  } else {
    impl_->file = Handle(H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    ALEM_CHECK(impl_->file.valid(),
               "cannot create results file " + path + ": " + h5::error_stack_text());
    write_string_attr(impl_->file.get(), "format", "alem-sweep-v1");
    for (const auto& [k, v] : provenance) write_string_attr(impl_->file.get(), k, v);
    impl_->runs = Handle(
        H5Gcreate2(impl_->file.get(), "runs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    check(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL), "flush " + path);
  }
  ALEM_CHECK(impl_->runs.valid(), path + " has no /runs group: not a sweep results file");
}

ResultsFile::~ResultsFile() {
  h5::LibraryLock lock(h5::library_mutex());
  impl_->runs.reset();
  impl_->file.reset();
}

bool ResultsFile::has(const std::string& key) const {
  h5::LibraryLock lock(h5::library_mutex());
  return H5Lexists(impl_->runs.get(), key.c_str(), H5P_DEFAULT) > 0;
}

void ResultsFile::add(const RunRecord& run) {
  h5::LibraryLock lock(h5::library_mutex());
  // Written under a temporary name and renamed when complete, so a run killed while being
  // written is not taken for a finished one.
  const std::string partial = run.key + ".partial";
  if (H5Lexists(impl_->runs.get(), partial.c_str(), H5P_DEFAULT) > 0)
    H5Ldelete(impl_->runs.get(), partial.c_str(), H5P_DEFAULT);
  {
    Handle g(H5Gcreate2(impl_->runs.get(), partial.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
             H5Gclose);
    ALEM_CHECK(g.valid(), "cannot write run " + run.key + ": " + h5::error_stack_text());
    for (const auto& [name, value] : run.params) write_int_attr(g.get(), name, value);
    for (const auto& [name, v] : run.values) {
      Handle space(H5Screate(H5S_SCALAR), H5Sclose);
      Handle d(H5Dcreate2(g.get(), name.c_str(), H5T_NATIVE_DOUBLE, space.get(), H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT),
               H5Dclose);
      check(H5Dwrite(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v.value),
            "value " + name);
      write_string_attr(d.get(), "units", v.units);
    }
    if (!run.replicas.empty()) {
      const hsize_t dims[2] = {run.replicas.size(), run.replica_columns.size()};
      std::vector<double> flat;
      for (const auto& row : run.replicas) flat.insert(flat.end(), row.begin(), row.end());
      Handle space(H5Screate_simple(2, dims, nullptr), H5Sclose);
      Handle d(H5Dcreate2(g.get(), "replicas", H5T_NATIVE_DOUBLE, space.get(), H5P_DEFAULT,
                          H5P_DEFAULT, H5P_DEFAULT),
               H5Dclose);
      check(H5Dwrite(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, flat.data()),
            "replicas");
      write_string_attr(d.get(), "columns", joined(run.replica_columns));
      write_string_attr(d.get(), "units", joined(run.replica_units));
    }
  }
  check(H5Lmove(impl_->runs.get(), partial.c_str(), impl_->runs.get(), run.key.c_str(), H5P_DEFAULT,
                H5P_DEFAULT),
        "finish run " + run.key);
  check(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL), "flush " + impl_->path);
}

std::vector<RunRecord> ResultsFile::runs() const {
  h5::LibraryLock lock(h5::library_mutex());
  std::vector<RunRecord> out;
  for (const std::string& key : names_in(impl_->runs.get(), H5O_TYPE_GROUP)) {
    if (key.size() > 8 && key.substr(key.size() - 8) == ".partial") continue;
    Handle g(H5Gopen2(impl_->runs.get(), key.c_str(), H5P_DEFAULT), H5Gclose);
    RunRecord r;
    r.key = key;
    H5O_info_t info;
    check(H5Oget_info2(g.get(), &info, H5O_INFO_NUM_ATTRS), "run " + key);
    for (hsize_t i = 0; i < info.num_attrs; ++i) {
      Handle a(
          H5Aopen_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, H5P_DEFAULT, H5P_DEFAULT),
          H5Aclose);
      char name[128];
      H5Aget_name(a.get(), sizeof name, name);
      int value = 0;
      check(H5Aread(a.get(), H5T_NATIVE_INT, &value), "attribute " + std::string(name));
      r.params[name] = value;
    }
    for (const std::string& name : names_in(g.get(), H5O_TYPE_DATASET)) {
      Handle d(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
      Handle space(H5Dget_space(d.get()), H5Sclose);
      if (H5Sget_simple_extent_ndims(space.get()) == 0) {
        RunValue v;
        check(H5Dread(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v.value), name);
        v.units = read_string_attr(d.get(), "units");
        r.values[name] = v;
      } else if (name == "replicas") {
        hsize_t dims[2];
        H5Sget_simple_extent_dims(space.get(), dims, nullptr);
        std::vector<double> flat(dims[0] * dims[1]);
        check(H5Dread(d.get(), H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, flat.data()),
              name);
        for (hsize_t i = 0; i < dims[0]; ++i)
          r.replicas.emplace_back(flat.begin() + i * dims[1], flat.begin() + (i + 1) * dims[1]);
        r.replica_columns = split(read_string_attr(d.get(), "columns"));
        r.replica_units = split(read_string_attr(d.get(), "units"));
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::map<std::string, std::string> ResultsFile::provenance() const {
  h5::LibraryLock lock(h5::library_mutex());
  std::map<std::string, std::string> out;
  for (const char* k : {"format", "model", "model_digest", "git_revision", "host", "created_utc",
                        "calibration", "cluster"})
    out[k] = read_string_attr(impl_->file.get(), k);
  return out;
}

std::string runs_to_csv(const std::vector<RunRecord>& runs) {
  std::set<std::string> params, values;
  std::map<std::string, std::string> units;
  for (const auto& r : runs) {
    for (const auto& [k, v] : r.params) params.insert(k);
    for (const auto& [k, v] : r.values) {
      values.insert(k);
      units[k] = v.units;
    }
  }
  std::ostringstream out;
  out << "run";
  for (const auto& p : params) out << ',' << p;
  for (const auto& v : values) out << ',' << v << " [" << units[v] << ']';
  out << '\n';
  out.precision(9);
  for (const auto& r : runs) {
    out << r.key;
    for (const auto& p : params) {
      const auto it = r.params.find(p);
      out << ',';
      if (it != r.params.end()) out << it->second;
    }
    for (const auto& v : values) {
      const auto it = r.values.find(v);
      out << ',';
      if (it != r.values.end()) out << it->second.value;
    }
    out << '\n';
  }
  return out.str();
}

}  // namespace alem::plan
