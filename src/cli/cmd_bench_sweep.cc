// `alem bench sweep`: a grid of layouts x batch x concurrency, each point one `alem bench
// batch` run (started through --launcher, mpirun by default, when it needs several ranks),
// gathered into one HDF5 results file (src/plan/results_file.h) plus a CSV. Every run is
// written as soon as it ends, so a killed sweep keeps its finished runs and a rerun with the
// same --output measures only the missing ones. With --cluster, the planner's prediction for
// each point is stored beside the measurement (predicted_* values). `--merge` gathers results
// written side by side (the bench batch JSON of each task of slurm/alem-sweep.sbatch's array,
// or results files) into one.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/error.h"
#include "core/log.h"
#include "model/model_store.h"
#include "plan/build_info.h"
#include "plan/cost_model.h"
#include "plan/results_file.h"

namespace alem::cli {
namespace {

struct SweepOptions {
  std::string model;
  std::vector<std::string> layouts = {"1,1,1"};  // TP,PP,DP
  std::vector<int> batches = {8};
  std::vector<int> concurrencies = {1, 8};
  int requests_per_slot = 2;
  int prompt_tokens = 32;
  int max_tokens = 16;
  std::string output = "sweep.h5";
  std::string csv;
  std::string launcher = "mpirun --oversubscribe";
  std::string cluster, calibration;
  std::vector<std::string> merge;  // results files to gather into --output instead of measuring
};

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Runs argv, waits, returns its exit status (output goes to this process's stdout/stderr).
int run_child(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  ALEM_CHECK(pid >= 0, "cannot start " + argv[0]);
  if (pid == 0) {
    execvp(args[0], args.data());
    std::perror(args[0]);
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string self_path() {
  std::error_code ec;
  const auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string("alem") : p.string();
}

std::string utc_now() {
  char text[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return text;
}

std::string run_key(int tp, int pp, int dp, int batch, int concurrency) {
  return "tp" + std::to_string(tp) + "-pp" + std::to_string(pp) + "-dp" + std::to_string(dp) +
         "-b" + std::to_string(batch) + "-c" + std::to_string(concurrency);
}

// One `alem bench batch` result (its JSON) as a run of the results file.
plan::RunRecord record_from_batch(const nlohmann::json& m) {
  const auto& layout = m.at("layout");
  plan::RunRecord r;
  const int tp = layout.at("tp"), pp = layout.at("pp"), dp = layout.at("dp");
  r.params = {{"tp", tp},
              {"pp", pp},
              {"dp", dp},
              {"batch", m.at("batch")},
              {"concurrency", m.at("concurrency")},
              {"requests", m.at("requests")},
              {"prompt_tokens", m.at("prompt_tokens")},
              {"max_tokens", m.at("max_tokens")},
              {"ranks", tp * pp * dp}};
  r.key = run_key(tp, pp, dp, r.params["batch"], r.params["concurrency"]);
  const auto& r0 = m.at("replicas").at(0);
  r.values = {{"tokens_per_s", {m.at("generated_tokens_per_second"), "tokens/s"}},
              {"requests_per_s", {m.at("requests_per_second"), "requests/s"}},
              {"wall_seconds", {m.at("wall_seconds"), "s"}},
              {"load_seconds", {m.at("load_seconds"), "s"}},
              {"failed", {m.at("failed"), "requests"}},
              {"ttft_p50", {r0.at("ttft_p50_s"), "s"}},
              {"ttft_p95", {r0.at("ttft_p95_s"), "s"}},
              {"itl_p50", {r0.at("itl_p50_s"), "s"}},
              {"itl_p95", {r0.at("itl_p95_s"), "s"}}};
  r.replica_columns = {"replica",    "requests",   "generated_tokens", "wall_seconds",
                       "ttft_p50_s", "ttft_p95_s", "itl_p50_s",        "itl_p95_s"};
  r.replica_units = {"1", "requests", "tokens", "s", "s", "s", "s", "s"};
  for (const auto& rep : m.at("replicas")) {
    r.replicas.push_back({rep.at("replica").get<double>(), rep.at("requests").get<double>(),
                          rep.at("generated_tokens").get<double>(),
                          rep.at("wall_seconds").get<double>(), rep.at("ttft_p50_s").get<double>(),
                          rep.at("ttft_p95_s").get<double>(), rep.at("itl_p50_s").get<double>(),
                          rep.at("itl_p95_s").get<double>()});
  }
  return r;
}

// One line per finished point; on a terminal a bar that redraws in place.
void progress(int done, int total, const std::string& what) {
  show_progress("sweep", done, total, what);
}

void write_csv(const SweepOptions& o, const plan::ResultsFile& results) {
  const std::string csv_path =
      o.csv.empty() ? o.output.substr(0, o.output.rfind('.')) + ".csv" : o.csv;
  std::ofstream csv(csv_path, std::ios::trunc);
  ALEM_CHECK(csv.good(), "cannot write " + csv_path);
  csv << plan::runs_to_csv(results.runs());
  std::printf("%s: %zu runs (CSV: %s)\n", o.output.c_str(), results.runs().size(),
              csv_path.c_str());
}

bool is_json(const std::string& path) {
  return path.size() > 5 && path.substr(path.size() - 5) == ".json";
}

// One file to merge: an HDF5 results file (runs and provenance) or one `alem bench batch` JSON.
struct MergePart {
  std::map<std::string, std::string> provenance;
  std::vector<plan::RunRecord> runs;
};

MergePart read_part(const std::string& path) {
  MergePart part;
  if (is_json(path)) {
    std::ifstream in(path);
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(in);
      part.runs.push_back(record_from_batch(m));
    } catch (const nlohmann::json::exception& e) {
      ALEM_FAIL(path + ": not an `alem bench batch` result (" + e.what() + ")");
    }
    part.provenance = {{"model", m.value("model", "")},
                       {"model_digest", m.value("model_digest", "")}};
  } else {
    plan::ResultsFile file(path, {});
    part.provenance = file.provenance();
    part.runs = file.runs();
  }
  ALEM_CHECK(!part.provenance["model_digest"].empty(),
             path + " records no model digest: not a sweep or bench batch result");
  return part;
}

// --merge: the runs of results written side by side (the tasks of a Slurm array: each an
// `alem bench batch` JSON or a results file of its own) gathered into --output. Runs already
// there are kept, so merging again after more tasks finished adds only the new ones; a file of
// another model (than --model, the output, or the first file) is refused before anything is
// written.
void merge_results(const SweepOptions& o) {
  std::string digest, digest_source;
  if (!o.model.empty()) {
    ModelStoreReader store(o.model);
    digest = store.model_digest();
    digest_source = o.model;
  }
  std::map<std::string, std::string> provenance;
  std::vector<MergePart> parts;
  for (const std::string& path : o.merge) {
    ALEM_CHECK(std::filesystem::absolute(path) != std::filesystem::absolute(o.output),
               "--merge: " + path + " is the --output itself");
    MergePart part = read_part(path);
    const std::string d = part.provenance["model_digest"];
    ALEM_CHECK(digest.empty() || d == digest,
               "--merge: " + path + " holds results of another model (" + part.provenance["model"] +
                   ", digest " + d.substr(0, 12) + "...) than " + digest_source + " (digest " +
                   digest.substr(0, 12) + "...)");
    if (digest.empty()) {
      digest = d;
      digest_source = path;
    }
    if (provenance.empty()) provenance = part.provenance;
    parts.push_back(std::move(part));
  }
  provenance["model_digest"] = digest;
  provenance.erase("format");  // written by ResultsFile itself
  std::erase_if(provenance, [](const auto& kv) { return kv.second.empty(); });
  provenance["created_utc"] = utc_now();
  plan::ResultsFile results(o.output, provenance);  // refuses an output of another model
  int added = 0, kept = 0;
  for (const MergePart& part : parts) {
    for (const plan::RunRecord& run : part.runs) {
      if (results.has(run.key)) {
        ++kept;
        continue;
      }
      results.add(run);
      ++added;
    }
  }
  std::printf("merged %zu file(s) into %s: %d run(s) added, %d already there\n", o.merge.size(),
              o.output.c_str(), added, kept);
  write_csv(o, results);
}

void run_sweep(const SweepOptions& o) {
  if (!o.merge.empty()) return merge_results(o);
  ALEM_CHECK(!o.model.empty(), "--model is required (unless --merge)");
  ALEM_CHECK(o.requests_per_slot >= 1 && o.prompt_tokens >= 1 && o.max_tokens >= 1,
             "--requests-per-slot, --prompt-tokens and --max-tokens must be >= 1");
  struct Point {
    int tp, pp, dp, batch, concurrency;
  };
  std::vector<Point> grid;
  for (const std::string& l : o.layouts) {
    int tp = 0, pp = 0, dp = 0;
    ALEM_CHECK(
        std::sscanf(l.c_str(), "%d,%d,%d", &tp, &pp, &dp) == 3 && tp >= 1 && pp >= 1 && dp >= 1,
        "--layouts: each is TP,PP,DP (separated by ';'), got '" + l + "'");
    for (int b : o.batches) {
      ALEM_CHECK(b >= 1, "--batch: each must be >= 1");
      for (int c : o.concurrencies) {
        ALEM_CHECK(c >= 1, "--concurrency: each must be >= 1");
        grid.push_back({tp, pp, dp, b, c});
      }
    }
  }
  std::string model_name, digest;
  {
    ModelStoreReader store(o.model);
    model_name = store.config().name;
    digest = store.model_digest();
  }
  std::map<std::string, std::string> provenance = {{"model", model_name},
                                                   {"model_digest", digest},
                                                   {"git_revision", plan::git_revision()},
                                                   {"created_utc", utc_now()},
                                                   {"model_path", o.model}};
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  provenance["host"] = host;
  std::optional<plan::ClusterSpec> cluster;
  plan::ModelShape shape;
  if (!o.cluster.empty()) {
    cluster = plan::load_cluster_spec(o.cluster);
    provenance["cluster"] = o.cluster;
    if (!o.calibration.empty()) {
      std::ifstream in(o.calibration);
      std::ostringstream text;
      text << in.rdbuf();
      plan::apply_calibration(*cluster, plan::calibration_from_json(text.str(), o.calibration),
                              o.calibration);
      provenance["calibration"] = text.str();
    }
    ModelStoreReader store(o.model);
    shape = plan::shape_from_config(
        store.config(),
        dtype_name(store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype));
  }
  plan::ResultsFile results(o.output, provenance);
  const std::string tmp = o.output + ".run.json";
  int done = 0, failed = 0;
  for (const Point& p : grid) {
    const std::string key = run_key(p.tp, p.pp, p.dp, p.batch, p.concurrency);
    ++done;
    if (results.has(key)) {
      progress(done, int(grid.size()), key + " (already in " + o.output + ")");
      continue;
    }
    const int ranks = p.tp * p.pp * p.dp;
    const int requests = p.concurrency * p.dp * o.requests_per_slot;
    std::vector<std::string> argv;
    if (ranks > 1) {
      argv = words(o.launcher);
      ALEM_CHECK(!argv.empty(), "--launcher is empty");
      argv.insert(argv.end(), {"-n", std::to_string(ranks)});
    }
    argv.insert(argv.end(), {self_path(),
                             "bench",
                             "batch",
                             "-m",
                             o.model,
                             "--tp",
                             std::to_string(p.tp),
                             "--pp",
                             std::to_string(p.pp),
                             "--dp",
                             std::to_string(p.dp),
                             "--batch",
                             std::to_string(p.batch),
                             "--concurrency",
                             std::to_string(p.concurrency),
                             "--requests",
                             std::to_string(requests),
                             "--prompt-tokens",
                             std::to_string(o.prompt_tokens),
                             "--max-tokens",
                             std::to_string(o.max_tokens),
                             "-o",
                             tmp});
    std::filesystem::remove(tmp);
    const auto start = std::chrono::steady_clock::now();
    const int status = run_child(argv);
    if (status != 0 || !std::filesystem::exists(tmp)) {
      log_warn("sweep point failed", {{"run", key}, {"status", std::to_string(status)}});
      progress(done, int(grid.size()), key + " FAILED (exit " + std::to_string(status) + ")");
      ++failed;
      continue;
    }
    std::ifstream in(tmp);
    plan::RunRecord r = record_from_batch(nlohmann::json::parse(in));
    r.params["requests"] = requests;
    r.values["run_seconds"] = {
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), "s"};
    if (cluster) {
      plan::Workload w;
      w.prompt_tokens = o.prompt_tokens;
      w.output_tokens = o.max_tokens;
      w.concurrency = p.concurrency * p.dp;
      w.requests = requests;
      w.max_batch = p.batch;
      const plan::Prediction pr = plan::predict(shape, *cluster, w, {p.tp, p.pp, 1, p.dp});
      if (pr.fits) {
        r.values["predicted_tokens_per_s"] = {pr.tokens_per_s, "tokens/s"};
        r.values["predicted_ttft"] = {pr.ttft_s, "s"};
        r.values["predicted_itl"] = {pr.itl_s, "s"};
      }
    }
    results.add(r);
    std::filesystem::remove(tmp);
    char what[160];
    std::snprintf(what, sizeof what, "%s: %.1f tok/s, TTFT p50 %.0f ms, ITL p50 %.1f ms",
                  key.c_str(), r.values["tokens_per_s"].value, r.values["ttft_p50"].value * 1e3,
                  r.values["itl_p50"].value * 1e3);
    progress(done, int(grid.size()), what);
  }
  write_csv(o, results);
  ALEM_CHECK(failed == 0, std::to_string(failed) + " of " + std::to_string(grid.size()) +
                              " point(s) failed (see above); run the same command again to "
                              "measure only those");
}

}  // namespace

void add_bench_sweep_command(CLI::App& bench) {
  auto o = std::make_shared<SweepOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "sweep", "Layouts x batch x concurrency of bench batch -> one HDF5 results file + CSV");
  cmd->add_option("--model,-m", o->model,
                  "HDF5 model store (with --merge: optional, the parts must be of this model)");
  cmd->add_option("--merge", o->merge,
                  "Measure nothing: gather these results files or `alem bench batch` JSON "
                  "results (e.g. one per Slurm array task) into --output; runs already there "
                  "are kept, files of another model refused")
      ->check(CLI::ExistingFile);
  cmd->add_option("--layouts", o->layouts, "TP,PP,DP per layout, separated by ';'")
      ->delimiter(';')
      ->capture_default_str();
  cmd->add_option("--batch", o->batches, "Engine batch sizes (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--concurrency", o->concurrencies, "Requests in flight per replica")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--requests-per-slot", o->requests_per_slot,
                  "Requests per run = concurrency x replicas x this")
      ->capture_default_str();
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length")->capture_default_str();
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens generated per request")
      ->capture_default_str();
  cmd->add_option("--output,-o", o->output, "HDF5 results file (a rerun fills what is missing)")
      ->capture_default_str();
  cmd->add_option("--csv", o->csv, "CSV of all runs (default: the output's name with .csv)");
  cmd->add_option("--launcher", o->launcher,
                  "Command that starts a multi-rank run (gets -n N appended); under Slurm: "
                  "\"srun --mpi=pmix\"")
      ->capture_default_str();
  cmd->add_option("--cluster", o->cluster, "Also store alem plan's prediction for each run");
  cmd->add_option("--calibration", o->calibration, "Calibration file for those predictions");
  cmd->callback([o] { run_sweep(*o); });
}

}  // namespace alem::cli
