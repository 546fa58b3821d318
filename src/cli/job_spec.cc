// Implements reading and checking job specs (job_spec.h; rendering is in job_sbatch.cc). Reading
// with toml++ collects every structural problem before throwing, and validate() every semantic
// one, so an admin fixes a spec in one pass instead of meeting one error per submit.
#include "cli/job_spec.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdint>
#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace alem {
namespace {

// ---------------------------------------------------------------------------------------------
// Reading

// Tables each kind may use, and the keys of each table.
const std::map<std::string, std::set<std::string>>& known_keys() {
  static const std::map<std::string, std::set<std::string>> keys = {
      {"job", {"kind", "name", "alem"}},
      {"model", {"path"}},
      {"parallel", {"tp", "pp", "dp"}},
      {"slurm",
       {"nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "partition", "account",
        "mem_per_node", "exclusive", "time", "output", "grace_seconds", "requeue", "max_restarts",
        "max_parallel"}},
      {"network", {"host", "port", "metrics_port", "queue"}},
      {"limits", {"max_batch_tokens", "max_concurrent_requests", "max_context_tokens"}},
      {"sweep", {"tp", "pp", "batch", "concurrency", "requests", "output_dir"}},
      {"convert", {"input", "output", "dtype", "name", "overwrite"}},
  };
  return keys;
}

std::set<std::string> tables_for(JobKind kind) {
  switch (kind) {
    case JobKind::kServe:
      return {"job", "slurm", "model", "parallel", "network", "limits"};
    case JobKind::kSweep:
      return {"job", "slurm", "model", "sweep"};
    case JobKind::kConvert:
      return {"job", "slurm", "convert"};
  }
  return {};
}

// [slurm] keys that only one kind uses.
const std::map<std::string, JobKind>& kind_only_slurm_keys() {
  static const std::map<std::string, JobKind> keys = {{"grace_seconds", JobKind::kServe},
                                                      {"requeue", JobKind::kServe},
                                                      {"max_restarts", JobKind::kServe},
                                                      {"max_parallel", JobKind::kSweep}};
  return keys;
}

// Reads typed values out of one table, recording a sentence for each value of the wrong type.
class TableReader {
 public:
  TableReader(const toml::table* table, std::string table_name, std::vector<std::string>& problems)
      : table_(table), name_(std::move(table_name)), problems_(problems) {}

  void read(const char* key, std::string& out) {
    const toml::node* node = find(key);
    if (!node) return;
    if (auto value = node->value_exact<std::string>()) {
      out = *value;
    } else {
      wrong_type(key, "a string");
    }
  }
  void read(const char* key, bool& out) {
    const toml::node* node = find(key);
    if (!node) return;
    if (auto value = node->value_exact<bool>()) {
      out = *value;
    } else {
      wrong_type(key, "true or false");
    }
  }
  void read(const char* key, int& out) {
    const toml::node* node = find(key);
    if (!node) return;
    if (!to_int(*node, out)) wrong_type(key, "an integer");
  }
  void read(const char* key, std::vector<int>& out) {
    const toml::node* node = find(key);
    if (!node) return;
    std::vector<int> values;
    int single = 0;
    if (to_int(*node, single)) {  // a single number stands for a one-element list
      out = {single};
      return;
    }
    const toml::array* array = node->as_array();
    bool ok = array != nullptr;
    for (size_t i = 0; ok && i < array->size(); ++i) {
      ok = to_int(*array->get(i), single);
      values.push_back(single);
    }
    if (ok) {
      out = std::move(values);
    } else {
      wrong_type(key, "an integer or a list of integers");
    }
  }

 private:
  const toml::node* find(const char* key) const { return table_ ? table_->get(key) : nullptr; }
  static bool to_int(const toml::node& node, int& out) {
    auto value = node.value_exact<int64_t>();
    if (!value || *value < INT_MIN || *value > INT_MAX) return false;
    out = static_cast<int>(*value);
    return true;
  }
  void wrong_type(const char* key, const char* expected) {
    const toml::node* node = find(key);
    const auto& where = node->source().begin;
    problems_.push_back("[" + name_ + "] " + key + " must be " + expected + " (line " +
                        std::to_string(where.line) + ")");
  }

  const toml::table* table_;
  std::string name_;
  std::vector<std::string>& problems_;
};

bool parse_kind(const std::string& text, JobKind& kind) {
  for (JobKind k : {JobKind::kServe, JobKind::kSweep, JobKind::kConvert}) {
    if (text == job_kind_name(k)) {
      kind = k;
      return true;
    }
  }
  return false;
}

// Checks that every table and key is known and fits the kind.
void check_layout(const toml::table& root, JobKind kind, std::vector<std::string>& problems) {
  const std::set<std::string> allowed_tables = tables_for(kind);
  const std::string kind_name = job_kind_name(kind);
  for (const auto& [table_key, node] : root) {
    const std::string table_name(table_key.str());
    auto known = known_keys().find(table_name);
    if (!node.is_table()) {
      problems.push_back("top-level key '" + table_name + "' must be inside a table such as [job]");
      continue;
    }
    if (known == known_keys().end()) {
      problems.push_back("unknown table [" + table_name + "]");
      continue;
    }
    if (!allowed_tables.count(table_name)) {
      problems.push_back("[" + table_name + "] is not used by a " + kind_name + " job");
      continue;
    }
    for (const auto& [key, value] : *node.as_table()) {
      const std::string key_name(key.str());
      if (!known->second.count(key_name)) {
        problems.push_back("unknown key [" + table_name + "] " + key_name + " (line " +
                           std::to_string(key.source().begin.line) + ")");
        continue;
      }
      auto only = kind_only_slurm_keys().find(key_name);
      if (table_name == "slurm" && only != kind_only_slurm_keys().end() && only->second != kind) {
        problems.push_back("[slurm] " + key_name + " applies to " + job_kind_name(only->second) +
                           " jobs only, not to a " + kind_name + " job");
      }
    }
  }
}

JobSpec spec_from_table(const toml::table& root, const std::string& source_name) {
  std::vector<std::string> problems;
  JobSpec spec;
  spec.source_path = source_name;

  std::string kind_text;
  TableReader(root["job"].as_table(), "job", problems).read("kind", kind_text);
  if (kind_text.empty() && problems.empty()) {
    problems.push_back("[job] kind is required: \"serve\", \"sweep\" or \"convert\"");
  } else if (!parse_kind(kind_text, spec.kind)) {
    problems.push_back("[job] kind = \"" + kind_text +
                       "\" is not one of \"serve\", \"sweep\", \"convert\"");
  }
  if (problems.empty()) check_layout(root, spec.kind, problems);

  TableReader job(root["job"].as_table(), "job", problems);
  job.read("name", spec.name);
  job.read("alem", spec.alem_binary);
  TableReader(root["model"].as_table(), "model", problems).read("path", spec.model_path);

  TableReader parallel(root["parallel"].as_table(), "parallel", problems);
  parallel.read("tp", spec.parallel.tp);
  parallel.read("pp", spec.parallel.pp);
  parallel.read("dp", spec.parallel.dp);

  SlurmRequest& s = spec.slurm;
  TableReader slurm(root["slurm"].as_table(), "slurm", problems);
  slurm.read("nodes", s.nodes);
  slurm.read("tasks_per_node", s.tasks_per_node);
  slurm.read("gpus_per_node", s.gpus_per_node);
  slurm.read("cpus_per_task", s.cpus_per_task);
  slurm.read("partition", s.partition);
  slurm.read("account", s.account);
  slurm.read("mem_per_node", s.mem_per_node);
  slurm.read("exclusive", s.exclusive);
  slurm.read("time", s.time_limit);
  slurm.read("output", s.output);
  slurm.read("grace_seconds", s.grace_seconds);
  slurm.read("requeue", s.requeue);
  slurm.read("max_restarts", s.max_restarts);
  slurm.read("max_parallel", s.max_parallel);

  TableReader network(root["network"].as_table(), "network", problems);
  network.read("host", spec.network.host);
  network.read("port", spec.network.port);
  network.read("metrics_port", spec.network.metrics_port);
  network.read("queue", spec.network.queue);

  TableReader limits(root["limits"].as_table(), "limits", problems);
  limits.read("max_batch_tokens", spec.limits.max_batch_tokens);
  limits.read("max_concurrent_requests", spec.limits.max_concurrent_requests);
  limits.read("max_context_tokens", spec.limits.max_context_tokens);

  TableReader sweep(root["sweep"].as_table(), "sweep", problems);
  sweep.read("tp", spec.sweep.tp);
  sweep.read("pp", spec.sweep.pp);
  sweep.read("batch", spec.sweep.batch);
  sweep.read("concurrency", spec.sweep.concurrency);
  sweep.read("requests", spec.sweep.requests);
  sweep.read("output_dir", spec.sweep.output_dir);

  TableReader convert(root["convert"].as_table(), "convert", problems);
  convert.read("input", spec.convert.input);
  convert.read("output", spec.convert.output);
  convert.read("dtype", spec.convert.dtype);
  convert.read("name", spec.convert.name);
  convert.read("overwrite", spec.convert.overwrite);

  if (!problems.empty()) {
    std::string message = "job spec " + source_name + " cannot be read:";
    for (const std::string& p : problems) message += "\n  - " + p;
    ALEM_FAIL(message);
  }
  if (spec.name.empty()) spec.name = "alem-" + job_kind_name(spec.kind);
  if (spec.slurm.output.empty()) {
    spec.slurm.output = spec.kind == JobKind::kSweep ? "%x-%A_%a.out" : "%x-%j.out";
  }
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Checking

std::string str(int v) {
  return std::to_string(v);
}

bool is_safe_word(const std::string& s, const std::string& extra = "") {
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string("._-").find(c) != std::string::npos || extra.find(c) != std::string::npos;
  });
}

bool is_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c)) != 0;
  });
}

bool has_control_char(const std::string& s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return std::iscntrl(static_cast<unsigned char>(c)) != 0; });
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_positive(std::vector<std::string>& reasons, const std::string& what, int value) {
  if (value < 1) reasons.push_back(what + " = " + str(value) + " must be at least 1");
}

void check_port(std::vector<std::string>& reasons, const std::string& what, int port,
                bool zero_allowed) {
  if ((port == 0 && !zero_allowed) || port < 0 || port > 65535) {
    reasons.push_back(what + " = " + str(port) + " is not a TCP port (1-65535" +
                      (zero_allowed ? ", or 0 for none)" : ")"));
  }
}

// A path used in the script body: shell-quoted there, but one line and not empty.
void check_path(std::vector<std::string>& reasons, const std::string& what,
                const std::string& path) {
  if (path.empty()) {
    reasons.push_back(what + " is required");
  } else if (has_control_char(path)) {
    reasons.push_back(what + " contains a newline or control character");
  }
}

void check_slurm(const JobSpec& spec, std::vector<std::string>& reasons) {
  const SlurmRequest& s = spec.slurm;
  check_positive(reasons, "[slurm] nodes", s.nodes);
  check_positive(reasons, "[slurm] tasks_per_node", s.tasks_per_node);
  check_positive(reasons, "[slurm] cpus_per_task", s.cpus_per_task);
  if (s.gpus_per_node < 0) {
    reasons.push_back("[slurm] gpus_per_node = " + str(s.gpus_per_node) + " must be 0 or more");
  } else if (s.gpus_per_node > 0 && s.gpus_per_node != s.tasks_per_node &&
             spec.kind != JobKind::kConvert) {
    reasons.push_back("[slurm] gpus_per_node = " + str(s.gpus_per_node) +
                      " but tasks_per_node = " + str(s.tasks_per_node) +
                      ": alem runs one rank per GPU, so they must be equal (or gpus_per_node = 0 "
                      "for a CPU job)");
  }
  if (!is_safe_word(spec.name) || spec.name.size() > 64) {
    reasons.push_back("[job] name = \"" + spec.name +
                      "\" must be 1-64 letters, digits, '.', '_' or '-'");
  }
  if (!s.partition.empty() && !is_safe_word(s.partition, ",")) {
    reasons.push_back("[slurm] partition = \"" + s.partition +
                      "\" must be letters, digits, '.', '_', '-' (',' between several)");
  }
  if (!s.account.empty() && !is_safe_word(s.account)) {
    reasons.push_back("[slurm] account = \"" + s.account +
                      "\" must be letters, digits, '.', '_' or '-'");
  }
  if (!s.mem_per_node.empty()) {
    const std::string& m = s.mem_per_node;
    size_t digits = 0;
    while (digits < m.size() && std::isdigit(static_cast<unsigned char>(m[digits]))) ++digits;
    const std::string unit = m.substr(digits);
    if (digits == 0 ||
        !(unit.empty() || unit == "K" || unit == "M" || unit == "G" || unit == "T")) {
      reasons.push_back("[slurm] mem_per_node = \"" + m +
                        "\" must be a number with an optional unit K, M, G or T (\"0\" = all)");
    }
  }
  if (!is_safe_word(s.output, "/%")) {
    reasons.push_back("[slurm] output = \"" + s.output +
                      "\" must be a path of letters, digits, '.', '_', '-', '/' and Slurm's "
                      "%-patterns (no spaces)");
  }
  long limit_s = 0;
  try {
    limit_s = slurm_time_seconds(s.time_limit);
  } catch (const Error& e) {
    reasons.push_back("[slurm] time: " + e.message());
    limit_s = -1;
  }
  if (spec.kind == JobKind::kServe) {
    if (s.grace_seconds < 1 || s.grace_seconds > 65535) {
      reasons.push_back("[slurm] grace_seconds = " + str(s.grace_seconds) +
                        " must be between 1 and 65535 (Slurm's --signal limit)");
    } else if (limit_s > 0 && s.grace_seconds >= limit_s) {
      reasons.push_back("[slurm] grace_seconds = " + str(s.grace_seconds) +
                        " is not shorter than the time limit \"" + s.time_limit + "\" (" +
                        std::to_string(limit_s) + " s)");
    }
    if (s.max_restarts < 0) {
      reasons.push_back("[slurm] max_restarts = " + str(s.max_restarts) + " must be 0 or more");
    }
  }
  if (s.max_parallel < 0) {
    reasons.push_back("[slurm] max_parallel = " + str(s.max_parallel) +
                      " must be 0 (no limit) or more");
  }
}

void check_model(const JobSpec& spec, std::vector<std::string>& reasons) {
  check_path(reasons, "[model] path", spec.model_path);
  if (!spec.model_path.empty() && !ends_with(spec.model_path, ".h5")) {
    reasons.push_back("[model] path = \"" + spec.model_path +
                      "\" must be an HDF5 weight store (.h5); import other formats with a "
                      "convert job first");
  }
}

void check_serve(const JobSpec& spec, std::vector<std::string>& reasons) {
  const ParallelShape& p = spec.parallel;
  const SlurmRequest& s = spec.slurm;
  check_model(spec, reasons);
  check_positive(reasons, "[parallel] tp", p.tp);
  check_positive(reasons, "[parallel] pp", p.pp);
  check_positive(reasons, "[parallel] dp", p.dp);
  if (p.tp >= 1 && p.pp >= 1 && p.dp >= 1 && s.nodes >= 1 && s.tasks_per_node >= 1) {
    const long ranks = static_cast<long>(p.tp) * p.pp * p.dp;
    const long tasks = static_cast<long>(s.nodes) * s.tasks_per_node;
    if (ranks != tasks) {
      reasons.push_back("[parallel] tp*pp*dp = " + str(p.tp) + "*" + str(p.pp) + "*" + str(p.dp) +
                        " = " + std::to_string(ranks) +
                        " ranks, but [slurm] nodes*tasks_per_node = " + str(s.nodes) + "*" +
                        str(s.tasks_per_node) + " = " + std::to_string(tasks) +
                        " tasks; they must be equal");
    }
    if (s.tasks_per_node % p.tp != 0) {
      reasons.push_back("[slurm] tasks_per_node = " + str(s.tasks_per_node) +
                        " is not a multiple of [parallel] tp = " + str(p.tp) +
                        ": a tensor-parallel group must stay inside one node");
    }
  }
  const NetworkEndpoints& n = spec.network;
  if (!is_safe_word(n.host, ":")) {
    reasons.push_back("[network] host = \"" + n.host + "\" is not a host name or address");
  }
  check_port(reasons, "[network] port", n.port, false);
  check_port(reasons, "[network] metrics_port", n.metrics_port, true);
  if (n.metrics_port != 0 && n.metrics_port == n.port) {
    reasons.push_back("[network] metrics_port = " + str(n.metrics_port) +
                      " is the same as [network] port");
  }
  if (!n.queue.empty()) {
    const size_t colon = n.queue.rfind(':');
    const std::string host = colon == std::string::npos ? "" : n.queue.substr(0, colon);
    const std::string port = colon == std::string::npos ? "" : n.queue.substr(colon + 1);
    const bool port_ok =
        is_digits(port) && port.size() <= 5 && std::stoi(port) >= 1 && std::stoi(port) <= 65535;
    if (!is_safe_word(host, ":[]") || !port_ok) {
      reasons.push_back("[network] queue = \"" + n.queue +
                        "\" must be \"host:port\" (or empty for HTTP only)");
    }
  }
  check_positive(reasons, "[limits] max_batch_tokens", spec.limits.max_batch_tokens);
  check_positive(reasons, "[limits] max_concurrent_requests", spec.limits.max_concurrent_requests);
  check_positive(reasons, "[limits] max_context_tokens", spec.limits.max_context_tokens);
}

// Slurm's default MaxArraySize is 1001: indices 0..1000.
constexpr size_t kMaxArrayTasks = 1001;

void check_sweep(const JobSpec& spec, std::vector<std::string>& reasons) {
  const SweepPlan& w = spec.sweep;
  const SlurmRequest& s = spec.slurm;
  check_model(spec, reasons);
  check_path(reasons, "[sweep] output_dir", w.output_dir);
  check_positive(reasons, "[sweep] requests", w.requests);
  bool axes_ok = true;
  for (const auto& [axis, values] : {std::pair<const char*, const std::vector<int>*>{"tp", &w.tp},
                                     {"pp", &w.pp},
                                     {"batch", &w.batch},
                                     {"concurrency", &w.concurrency}}) {
    if (values->empty()) {
      reasons.push_back(std::string("[sweep] ") + axis + " is an empty list");
      axes_ok = false;
    }
    for (int v : *values) {
      if (v < 1) {
        reasons.push_back(std::string("[sweep] ") + axis + " has " + str(v) +
                          "; every value must be at least 1");
        axes_ok = false;
      }
    }
  }
  if (!axes_ok || s.nodes < 1 || s.tasks_per_node < 1) return;
  const size_t points = w.tp.size() * w.pp.size() * w.batch.size() * w.concurrency.size();
  if (points > kMaxArrayTasks) {
    reasons.push_back("[sweep] has " + std::to_string(points) +
                      " configurations; a Slurm job array holds at most " +
                      std::to_string(kMaxArrayTasks) + " by default");
  }
  const long tasks = static_cast<long>(s.nodes) * s.tasks_per_node;
  for (int tp : w.tp) {
    if (tp > s.tasks_per_node || s.tasks_per_node % tp != 0) {
      reasons.push_back("[sweep] tp = " + str(tp) +
                        " does not divide [slurm] tasks_per_node = " + str(s.tasks_per_node) +
                        ": a tensor-parallel group must stay inside one node");
    }
    for (int pp : w.pp) {
      if (static_cast<long>(tp) * pp > tasks) {
        reasons.push_back("[sweep] tp = " + str(tp) + ", pp = " + str(pp) + " needs " +
                          str(tp * pp) +
                          " ranks, but [slurm] nodes*tasks_per_node = " + std::to_string(tasks));
      }
    }
  }
}

void check_convert(const JobSpec& spec, std::vector<std::string>& reasons) {
  const ConvertPlan& c = spec.convert;
  check_path(reasons, "[convert] input", c.input);
  check_path(reasons, "[convert] output", c.output);
  if (!c.output.empty() && !ends_with(c.output, ".h5")) {
    reasons.push_back("[convert] output = \"" + c.output + "\" must end in .h5");
  }
  if (!c.input.empty() && c.input == c.output) {
    reasons.push_back("[convert] input and output are the same file");
  }
  // The weight types `alem convert --dtype` stores.
  if (c.dtype != "bf16" && c.dtype != "f32" && c.dtype != "int8") {
    reasons.push_back("[convert] dtype = \"" + c.dtype + "\" is not one of bf16, f32, int8");
  }
  if (spec.slurm.nodes != 1 || spec.slurm.tasks_per_node != 1) {
    reasons.push_back(
        "[slurm] a convert job runs one task on one node: nodes and "
        "tasks_per_node must be 1");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions

std::string job_kind_name(JobKind kind) {
  switch (kind) {
    case JobKind::kServe:
      return "serve";
    case JobKind::kSweep:
      return "sweep";
    case JobKind::kConvert:
      return "convert";
  }
  ALEM_FAIL("unknown job kind " + std::to_string(static_cast<int>(kind)));
}

std::string template_file_name(JobKind kind) {
  return job_kind_name(kind) + ".sbatch.in";
}

JobSpec parse_job_spec(std::string_view toml_text, const std::string& source_name) {
  try {
    toml::table root = toml::parse(toml_text, source_name);
    return spec_from_table(root, source_name);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    ALEM_FAIL(source_name + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
              ": not valid TOML: " + std::string(e.description()));
  }
}

JobSpec load_job_spec(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, "cannot read job spec " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_job_spec(text.str(), path);
}

long slurm_time_seconds(const std::string& text) {
  if (text == "UNLIMITED" || text == "INFINITE" || text == "unlimited" || text == "infinite") {
    return -1;
  }
  const std::string formats =
      "\"" + text + "\" is not a Slurm time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, " +
      "D-HH:MM:SS or UNLIMITED)";
  std::vector<long> fields;
  long days = -1;
  std::string rest = text;
  const size_t dash = text.find('-');
  auto parse_number = [&](const std::string& s) {
    ALEM_CHECK(is_digits(s) && s.size() <= 9, formats);
    return std::stol(s);
  };
  if (dash != std::string::npos) {
    days = parse_number(text.substr(0, dash));
    rest = text.substr(dash + 1);
  }
  std::stringstream parts(rest);
  std::string part;
  while (std::getline(parts, part, ':')) fields.push_back(parse_number(part));
  ALEM_CHECK(!rest.empty() && rest.back() != ':' && !fields.empty() && fields.size() <= 3, formats);
  long seconds = 0;
  if (days >= 0) {  // D-HH, D-HH:MM, D-HH:MM:SS
    const long hours = fields[0];
    const long minutes = fields.size() > 1 ? fields[1] : 0;
    const long secs = fields.size() > 2 ? fields[2] : 0;
    seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs;
  } else if (fields.size() == 1) {  // minutes
    seconds = fields[0] * 60;
  } else if (fields.size() == 2) {  // MM:SS
    seconds = fields[0] * 60 + fields[1];
  } else {  // HH:MM:SS
    seconds = (fields[0] * 60 + fields[1]) * 60 + fields[2];
  }
  ALEM_CHECK(seconds > 0, formats + ": it must be longer than 0");
  return seconds;
}

std::vector<std::string> validate(const JobSpec& spec) {
  std::vector<std::string> reasons;
  check_path(reasons, "[job] alem", spec.alem_binary);
  check_slurm(spec, reasons);
  switch (spec.kind) {
    case JobKind::kServe:
      check_serve(spec, reasons);
      break;
    case JobKind::kSweep:
      check_sweep(spec, reasons);
      break;
    case JobKind::kConvert:
      check_convert(spec, reasons);
      break;
  }
  return reasons;
}

std::vector<SweepPoint> sweep_points(const SweepPlan& plan) {
  std::vector<SweepPoint> points;
  for (int tp : plan.tp) {
    for (int pp : plan.pp) {
      for (int batch : plan.batch) {
        for (int concurrency : plan.concurrency) points.push_back({tp, pp, batch, concurrency});
      }
    }
  }
  return points;
}

}  // namespace alem
