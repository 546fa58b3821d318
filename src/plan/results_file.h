// The HDF5 results file of `alem bench sweep`: one group per run under /runs (its parameters
// as attributes, each measured or predicted figure as a scalar dataset with a "units"
// attribute, the per-replica table as a 2-D dataset with column names and units), and the
// sweep's provenance as root attributes (model and digest, git revision, host, calibration).
// Each run is written and flushed as it finishes, so a killed sweep keeps what it measured and
// a rerun measures only the runs that are missing.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace alem::plan {

struct RunValue {
  double value = 0;
  std::string units;
};

struct RunRecord {
  std::string key;                    // "tp1-pp1-dp1-b8-c8"
  std::map<std::string, int> params;  // tp, pp, dp, batch, concurrency, requests, ...
  std::map<std::string, RunValue> values;
  std::vector<std::string> replica_columns, replica_units;
  std::vector<std::vector<double>> replicas;  // one row per replica
};

class ResultsFile {
 public:
  // Opens `path` for appending runs, creating it with `provenance` as root attributes when it
  // does not exist. Throws alem::Error naming the file when it cannot be opened or created, or
  // when an existing file holds another model (provenance "model_digest" differs).
  ResultsFile(const std::string& path, const std::map<std::string, std::string>& provenance);
  ~ResultsFile();
  ResultsFile(const ResultsFile&) = delete;
  ResultsFile& operator=(const ResultsFile&) = delete;

  bool has(const std::string& key) const;
  void add(const RunRecord& run);  // written and flushed at once
  std::vector<RunRecord> runs() const;
  std::map<std::string, std::string> provenance() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// All runs as CSV: parameters, then every value (column names carry the units).
std::string runs_to_csv(const std::vector<RunRecord>& runs);

}  // namespace alem::plan
