// Renders a job spec into an sbatch script (declared in job_spec.h): computes the value of every
// {{placeholder}} the templates in slurm/templates/ use, then substitutes them. Only specs that
// pass validate() are rendered, so a rendered script never carries a value Slurm or bash would
// misread.
#include "cli/job_spec.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <sstream>

#include "core/error.h"

namespace alem {
namespace {

std::string str(int v) {
  return std::to_string(v);
}

bool is_plain_word(const std::string& s) {
  const std::string punctuation = "._-/:=@%+,";
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || punctuation.find(c) != std::string::npos;
  });
}

// Leaves plain words as they are and single-quotes anything else for bash.
std::string shell_quote(const std::string& s) {
  if (is_plain_word(s)) return s;
  std::string quoted = "'";
  for (char c : s) {
    if (c == '\'') {
      quoted += "'\\''";
    } else {
      quoted += c;
    }
  }
  return quoted + "'";
}

// A TOML basic string ("..."), escaping what TOML requires.
std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (std::iscntrl(static_cast<unsigned char>(c))) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned char>(c));
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// An #SBATCH line when the option is set, otherwise a comment saying what Slurm does instead.
std::string sbatch_line(bool set, const std::string& option, const std::string& otherwise) {
  return set ? "#SBATCH " + option : "# " + otherwise;
}

// The server's own settings, passed with `alem serve --config`. The server drains in 90% of the
// grace period, keeping the rest for the requeue itself.
std::string server_config_toml(const JobSpec& spec) {
  const NetworkEndpoints& n = spec.network;
  const ServeLimits& l = spec.limits;
  std::ostringstream out;
  out << "[network]\n"
      << "host = " << toml_string(n.host) << "\n"
      << "port = " << n.port << "\n"
      << "metrics_port = " << n.metrics_port << "\n"
      << "queue = " << toml_string(n.queue) << "\n\n"
      << "[limits]\n"
      << "max_batch_tokens = " << l.max_batch_tokens << "\n"
      << "max_concurrent_requests = " << l.max_concurrent_requests << "\n"
      << "max_context_tokens = " << l.max_context_tokens << "\n"
      << "drain_seconds = " << spec.slurm.grace_seconds * 9 / 10;
  return out.str();
}

std::string one_line(const std::string& s) {
  std::string out = s;
  for (char& c : out) {
    if (std::iscntrl(static_cast<unsigned char>(c))) c = '?';
  }
  return out;
}

}  // namespace

std::map<std::string, std::string> template_values(const JobSpec& spec) {
  const SlurmRequest& s = spec.slurm;
  std::map<std::string, std::string> v;
  v["spec_path"] = one_line(spec.source_path.empty() ? "(no file)" : spec.source_path);
  v["job_kind"] = job_kind_name(spec.kind);
  v["job_name"] = spec.name;
  v["alem_binary"] = shell_quote(spec.alem_binary);
  v["model_path"] = shell_quote(spec.model_path);
  v["nodes"] = str(s.nodes);
  v["tasks_per_node"] = str(s.tasks_per_node);
  v["cpus_per_task"] = str(s.cpus_per_task);
  v["time_limit"] = s.time_limit;
  v["output"] = s.output;
  v["grace_seconds"] = str(s.grace_seconds);
  v["max_restarts"] = str(s.max_restarts);
  v["requeue"] = s.requeue ? "1" : "0";
  v["sbatch_gpus"] = sbatch_line(s.gpus_per_node > 0, "--gpus-per-node=" + str(s.gpus_per_node),
                                 "no GPUs requested (gpus_per_node = 0)");
  v["sbatch_exclusive"] = sbatch_line(s.exclusive, "--exclusive",
                                      "nodes may be shared with other jobs (exclusive = false)");
  v["sbatch_mem"] = sbatch_line(!s.mem_per_node.empty(), "--mem=" + s.mem_per_node,
                                "memory: the partition's default (mem_per_node not set)");
  v["sbatch_partition"] = sbatch_line(!s.partition.empty(), "--partition=" + s.partition,
                                      "partition: the cluster's default");
  v["sbatch_account"] =
      sbatch_line(!s.account.empty(), "--account=" + s.account, "account: the user's default");
  v["sbatch_requeue"] = s.requeue ? "#SBATCH --requeue" : "#SBATCH --no-requeue";
  v["tp"] = str(spec.parallel.tp);
  v["pp"] = str(spec.parallel.pp);
  v["dp"] = str(spec.parallel.dp);
  v["http_port"] = str(spec.network.port);
  v["server_config_toml"] = server_config_toml(spec);

  const std::vector<SweepPoint> points = sweep_points(spec.sweep);
  std::string configs;
  for (const SweepPoint& p : points) {
    if (!configs.empty()) configs += "\n";
    configs +=
        "  \"" + str(p.tp) + " " + str(p.pp) + " " + str(p.batch) + " " + str(p.concurrency) + "\"";
  }
  v["sweep_configs"] = configs;
  v["array_spec"] = "0-" + std::to_string(points.empty() ? 0 : points.size() - 1) +
                    (s.max_parallel > 0 ? "%" + str(s.max_parallel) : "");
  v["requests"] = str(spec.sweep.requests);
  v["output_dir"] = shell_quote(spec.sweep.output_dir);

  v["convert_input"] = shell_quote(spec.convert.input);
  v["convert_output"] = shell_quote(spec.convert.output);
  v["convert_name"] = shell_quote(spec.convert.name);
  v["convert_overwrite"] = spec.convert.overwrite ? "1" : "0";
  v["convert_dtype"] = shell_quote(spec.convert.dtype);
  return v;
}

std::string render_sbatch(const JobSpec& spec, const std::string& template_text) {
  const std::vector<std::string> reasons = validate(spec);
  if (!reasons.empty()) {
    std::string message = "job spec " + spec.source_path + " is not valid:";
    for (const std::string& r : reasons) message += "\n  - " + r;
    ALEM_FAIL(message);
  }
  const std::map<std::string, std::string> values = template_values(spec);
  std::string out;
  out.reserve(template_text.size() + 1024);
  size_t pos = 0;
  while (true) {
    const size_t open = template_text.find("{{", pos);
    if (open == std::string::npos) break;
    out.append(template_text, pos, open - pos);
    const int line =
        1 + static_cast<int>(std::count(template_text.begin(), template_text.begin() + open, '\n'));
    const size_t close = template_text.find("}}", open + 2);
    const size_t newline = template_text.find('\n', open);
    ALEM_CHECK(close != std::string::npos && close < newline,
               "template line " + std::to_string(line) + ": '{{' without '}}' on the same line");
    const std::string name = template_text.substr(open + 2, close - open - 2);
    auto value = values.find(name);
    ALEM_CHECK(value != values.end(),
               "template line " + std::to_string(line) + ": unknown placeholder {{" + name + "}}");
    out += value->second;
    pos = close + 2;
  }
  out.append(template_text, pos, std::string::npos);
  return out;
}

}  // namespace alem
