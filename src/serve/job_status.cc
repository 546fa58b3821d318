// The job status document behind GET /v1/status and `alem status`, and the gateway file that
// tells `alem status --job ID` where a Slurm job's gateway listens (see job_status.h).
#include "serve/job_status.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"

namespace alem::serve {

using nlohmann::json;

void read_slurm_environment(JobInfo& info) {
  if (const char* v = std::getenv("SLURM_JOB_ID")) info.job_id = v;
  if (const char* v = std::getenv("SLURM_JOB_NODELIST")) info.node_list = v;
  if (const char* v = std::getenv("SLURM_RESTART_COUNT")) {
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    info.restart_count =
        (end != v && *end == '\0' && n >= 0 && n < 1000000) ? static_cast<int>(n) : 0;
  }
}

json status_document(const JobInfo& info, const std::string& state,
                     const std::vector<ReplicaStats>& replicas,
                     const std::vector<double>& tokens_per_second, double uptime_s) {
  json ranks = json::array();
  std::map<std::string, int> ranks_per_host;
  for (const RankPlacement& r : info.ranks) {
    ranks.push_back(
        {{"world_rank", r.world_rank}, {"dp", r.dp}, {"pp", r.pp}, {"tp", r.tp}, {"host", r.host}});
    ++ranks_per_host[r.host];
  }
  json hosts = json::array();
  for (const auto& [host, count] : ranks_per_host)
    hosts.push_back({{"host", host}, {"ranks", count}});

  json replica_list = json::array();
  int64_t waiting = 0, running = 0;
  double total_rate = 0;
  for (size_t i = 0; i < replicas.size(); ++i) {
    const ReplicaStats& s = replicas[i];
    const double rate = i < tokens_per_second.size() ? tokens_per_second[i] : 0.0;
    replica_list.push_back({{"replica", s.replica},
                            {"alive", s.alive},
                            {"running", s.running},
                            {"waiting", s.waiting},
                            {"kv_blocks_used", s.kv_blocks_used},
                            {"kv_blocks_cached", s.kv_blocks_cached},
                            {"kv_blocks_total", s.kv_blocks_total},
                            {"steps", s.steps},
                            {"generation_tokens_per_second", rate}});
    waiting += s.waiting;
    running += s.running;
    total_rate += rate;
  }
  return {{"job",
           {{"id", info.job_id},
            {"node_list", info.node_list},
            {"restart_count", info.restart_count},
            {"started_unix", info.started_unix},
            {"uptime_seconds", uptime_s}}},
          {"model", {{"name", info.model}, {"digest", info.model_digest}}},
          {"layout",
           {{"tp", info.tp}, {"pp", info.pp}, {"dp", info.dp}, {"world_size", info.ranks.size()}}},
          {"state", state},
          {"load_seconds", info.load_seconds},
          {"ranks", ranks},
          {"hosts", hosts},
          {"replicas", replica_list},
          {"queue_depth", waiting},
          {"running", running},
          {"generation_tokens_per_second", total_rate}};
}

namespace {

template <typename T>
T field(const json& j, const char* key, const char* where) {
  ALEM_CHECK(j.is_object() && j.contains(key), std::string("status document has no '") + key +
                                                   "' in " + where +
                                                   " (is the server an alem of another version?)");
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    ALEM_FAIL(std::string("status document: '") + key + "' in " + where + " has the wrong type");
  }
}

}  // namespace

std::string format_status(const json& s) {
  std::ostringstream out;
  const json& job = s.at("job");
  const json& layout = s.at("layout");
  const std::string job_id = field<std::string>(job, "id", "job");
  out << "job         " << (job_id.empty() ? "(not under Slurm)" : job_id) << "  restarts "
      << field<int>(job, "restart_count", "job") << "  up "
      << static_cast<int64_t>(field<double>(job, "uptime_seconds", "job")) << " s\n";
  const std::string nodes = field<std::string>(job, "node_list", "job");
  if (!nodes.empty()) out << "nodes       " << nodes << "\n";
  out << "model       " << field<std::string>(s.at("model"), "name", "model") << "\n";
  out << "layout      tp " << field<int>(layout, "tp", "layout") << " x pp "
      << field<int>(layout, "pp", "layout") << " x dp " << field<int>(layout, "dp", "layout")
      << " = " << field<int>(layout, "world_size", "layout") << " ranks\n";
  out << "state       " << field<std::string>(s, "state", "the document") << "  (loaded in "
      << field<double>(s, "load_seconds", "the document") << " s)\n";
  char line[256];
  std::snprintf(line, sizeof line, "queue       %lld waiting, %lld running, %.1f tokens/s\n",
                static_cast<long long>(field<int64_t>(s, "queue_depth", "the document")),
                static_cast<long long>(field<int64_t>(s, "running", "the document")),
                field<double>(s, "generation_tokens_per_second", "the document"));
  out << line;
  out << "\nreplica  alive  running  waiting  kv blocks used/total  tokens/s\n";
  for (const json& r : s.at("replicas")) {
    std::snprintf(line, sizeof line, "%7d  %5s  %7lld  %7lld  %9lld/%-10lld  %8.1f\n",
                  field<int>(r, "replica", "replica"),
                  field<bool>(r, "alive", "replica") ? "yes" : "NO",
                  static_cast<long long>(field<int64_t>(r, "running", "replica")),
                  static_cast<long long>(field<int64_t>(r, "waiting", "replica")),
                  static_cast<long long>(field<int64_t>(r, "kv_blocks_used", "replica")),
                  static_cast<long long>(field<int64_t>(r, "kv_blocks_total", "replica")),
                  field<double>(r, "generation_tokens_per_second", "replica"));
    out << line;
  }
  out << "\nrank  dp  pp  tp  host\n";
  for (const json& r : s.at("ranks")) {
    std::snprintf(line, sizeof line, "%4d  %2d  %2d  %2d  %s\n",
                  field<int>(r, "world_rank", "rank"), field<int>(r, "dp", "rank"),
                  field<int>(r, "pp", "rank"), field<int>(r, "tp", "rank"),
                  field<std::string>(r, "host", "rank").c_str());
    out << line;
  }
  return out.str();
}

std::string default_gateway_file(const std::string& job_id) {
  return "alem-gateway-" + job_id + ".json";
}

void write_gateway_file(const std::string& path, const std::string& url,
                        const std::string& job_id) {
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const json doc = {
      {"url", url}, {"job_id", job_id}, {"pid", static_cast<int64_t>(getpid())}, {"host", host}};
  // Written under a temporary name and renamed, so a reader never sees half a file.
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    ALEM_CHECK(f.good(), "cannot write the gateway file " + tmp);
    f << doc.dump() << "\n";
    ALEM_CHECK(f.good(), "cannot write the gateway file " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  ALEM_CHECK(!ec, "cannot rename " + tmp + " to " + path + ": " + ec.message());
}

std::string read_gateway_url(const std::string& path) {
  std::ifstream f(path);
  ALEM_CHECK(f.good(), "no gateway file " + path +
                           " (run alem status in the folder the job runs in, or pass --url)");
  json doc;
  try {
    f >> doc;
  } catch (const json::exception& e) {
    ALEM_FAIL("gateway file " + path + " is not valid JSON: " + e.what());
  }
  ALEM_CHECK(doc.is_object() && doc.contains("url") && doc["url"].is_string(),
             "gateway file " + path + " has no \"url\" string");
  return doc["url"].get<std::string>();
}

}  // namespace alem::serve
