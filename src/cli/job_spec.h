// Job specs: the TOML files under jobs/ that describe a Slurm job (what to run, the parallel
// layout, the nodes it needs, network endpoints, limits), and their rendering into an sbatch
// script from a template in slurm/templates/. `alem submit SPEC` is load -> validate -> render
// -> sbatch; keeping these steps as plain functions lets tests check every refusal reason and
// every rendered line without Slurm.
//
// A spec, with every table and key (values shown are the defaults where one exists):
//   [job]      kind = "serve" | "sweep" | "convert" (required), name = "alem-<kind>",
//              alem = "alem" (the alem command on the compute nodes)
//   [model]    path = "m.h5"                       (serve, sweep; required)
//   [parallel] tp = 1, pp = 1, dp = 1              (serve)
//   [slurm]    nodes = 1, tasks_per_node = 1, gpus_per_node = 0, cpus_per_task = 1,
//              partition = "", account = "", mem_per_node = "", exclusive = false,
//              time = "01:00:00", output = "%x-%j.out" (sweep: "%x-%A_%a.out"),
//              grace_seconds = 300, requeue = true, max_restarts = 20   (serve only)
//              max_parallel = 0                                         (sweep only)
//   [network]  host = "127.0.0.1", port = 8000, metrics_port = 0, queue = "" (serve)
//   [limits]   max_batch_tokens = 8192, max_concurrent_requests = 256,
//              max_context_tokens = 8192                                     (serve)
//   [sweep]    tp = [1], pp = [1], batch = [1], concurrency = [1], requests = 256,
//              output_dir = "results/sweep"                                  (sweep)
//   [convert]  input = "m.gguf", output = "m.h5" (both required), dtype = "bf16" (convert)
// Relative paths are used as written: Slurm runs the script in the directory sbatch ran in.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace alem {

enum class JobKind { kServe, kSweep, kConvert };

// "serve", "sweep", "convert".
std::string job_kind_name(JobKind kind);
// File name of the kind's template in slurm/templates/: "serve.sbatch.in", ...
std::string template_file_name(JobKind kind);

// What the job asks Slurm for ([slurm]).
struct SlurmRequest {
  int nodes = 1;
  int tasks_per_node = 1;
  int gpus_per_node = 0;  // 0: a CPU job; otherwise one rank per GPU
  int cpus_per_task = 1;
  std::string partition;     // empty: the cluster's default partition
  std::string account;       // empty: the user's default account
  std::string mem_per_node;  // Slurm --mem ("64G", "0" = all of it); empty: not requested
  bool exclusive = false;
  std::string time_limit = "01:00:00";  // any Slurm --time format, or "UNLIMITED"
  std::string output;                   // empty until loaded: then the kind's default
  int grace_seconds = 300;              // serve: SIGUSR1 this long before the time limit
  bool requeue = true;                  // serve: requeue after a drain or node failure
  int max_restarts = 20;                // serve: stop requeueing after this many restarts
  int max_parallel = 0;                 // sweep: array tasks at once; 0 = no limit
};

// Ranks: world = dp x pp x tp ([parallel]).
struct ParallelShape {
  int tp = 1;
  int pp = 1;
  int dp = 1;
};

// Where the served model is reached ([network]).
struct NetworkEndpoints {
  std::string host = "127.0.0.1";  // HTTP bind address on the node of world rank 0 (loopback)
  int port = 8000;                 // OpenAI-compatible HTTP API
  int metrics_port = 0;            // Prometheus metrics; 0 = none
  std::string queue;               // "host:port" of the network's pull queue; empty = HTTP only
};

// Server limits ([limits]).
struct ServeLimits {
  int max_batch_tokens = 8192;
  int max_concurrent_requests = 256;
  int max_context_tokens = 8192;
};

// Axes of a benchmark sweep ([sweep]); one array task per point of their product.
struct SweepPlan {
  std::vector<int> tp{1};
  std::vector<int> pp{1};
  std::vector<int> batch{1};
  std::vector<int> concurrency{1};
  int requests = 256;
  std::string output_dir = "results/sweep";
};

struct SweepPoint {
  int tp = 1;
  int pp = 1;
  int batch = 1;
  int concurrency = 1;
};

// A model import ([convert]).
struct ConvertPlan {
  std::string input;
  std::string output;
  std::string dtype = "bf16";
  std::string name;        // the served model name stored with it (--name); empty: from the file
  bool overwrite = false;  // replace an existing store at `output` (off: the job refuses)
};

struct JobSpec {
  std::string source_path;  // the file it was loaded from (named in the rendered script)
  JobKind kind = JobKind::kServe;
  std::string name;  // Slurm job name
  std::string alem_binary = "alem";
  std::string model_path;
  SlurmRequest slurm;
  ParallelShape parallel;
  NetworkEndpoints network;
  ServeLimits limits;
  SweepPlan sweep;
  ConvertPlan convert;
};

// Reads a spec file. Throws alem::Error when the file cannot be read, is not TOML (the message
// names file:line:column), or has keys that are unknown, of the wrong type, or in a table the
// job's kind does not use (all such problems in one message). Semantic checks are validate()'s.
JobSpec load_job_spec(const std::string& path);
// The same from TOML text; source_name stands for the file in messages.
JobSpec parse_job_spec(std::string_view toml_text, const std::string& source_name);

// Every reason the spec cannot run, one sentence each naming the keys involved (for example
// "[parallel] tp*pp*dp = 2*2*2 = 8 ranks, but [slurm] nodes*tasks_per_node = 1*4 = 4 tasks").
// Empty means valid.
std::vector<std::string> validate(const JobSpec& spec);

// The points of a sweep in array-task order (tp outermost, concurrency innermost).
std::vector<SweepPoint> sweep_points(const SweepPlan& plan);

// Parses a Slurm time limit ("30", "30:00", "1:00:00", "2-0", "2-12:00", "1-00:00:00") into
// seconds; -1 for "UNLIMITED"/"INFINITE"; throws alem::Error on anything else.
long slurm_time_seconds(const std::string& text);

// The value of every {{placeholder}} the templates may use, for this spec. Values bound for the
// script body are shell-quoted when they need it; slurm/templates/README.md lists them all.
std::map<std::string, std::string> template_values(const JobSpec& spec);

// Renders template_text by replacing each {{name}} with template_values(spec)[name]. Throws
// alem::Error listing validate()'s reasons if the spec is invalid, and naming the placeholder
// and line when the template uses an unknown or unterminated placeholder.
std::string render_sbatch(const JobSpec& spec, const std::string& template_text);

}  // namespace alem
