// The rendered sbatch scripts run for real under bash, with `srun`, `scontrol` and `hostname`
// replaced by small recording scripts on PATH: a drain requeues only when the spec asks for it,
// every job kind sets OMP_NUM_THREADS from Slurm's CPUs per task, a convert job never replaces an
// existing store unless told, and passes the spec's model name. The shipped local specs name the
// alem binary the build actually makes.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/job_spec.h"

namespace alem {
namespace {

namespace fs = std::filesystem;

fs::path source_root() {
  if (const char* root = std::getenv("ALEM_SOURCE_DIR"); root && *root) return root;
  return fs::path(__FILE__).parent_path().parent_path().parent_path();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_text(const fs::path& path, const std::string& text, bool executable = false) {
  std::ofstream(path) << text;
  if (executable) fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
}

// A scratch folder with fake Slurm commands that append their arguments (and OMP_NUM_THREADS)
// to calls.log. `srun` exits with the code in srun_exit.
class ScriptRun {
 public:
  explicit ScriptRun(int srun_exit) {
    dir_ = fs::temp_directory_path() /
           ("alem-job-script-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "bin");
    write_text(dir_ / "bin" / "srun",
               "#!/bin/sh\necho \"srun OMP_NUM_THREADS=$OMP_NUM_THREADS $*\" >> \"" +
                   (dir_ / "calls.log").string() + "\"\nexit " + std::to_string(srun_exit) + "\n",
               true);
    write_text(dir_ / "bin" / "scontrol",
               "#!/bin/sh\necho \"scontrol $*\" >> \"" + (dir_ / "calls.log").string() +
                   "\"\nkill -TERM $PPID\nexit 0\n",
               true);
    write_text(dir_ / "bin" / "hostname", "#!/bin/sh\necho node1\n", true);
  }
  ~ScriptRun() { fs::remove_all(dir_); }

  // Runs the script in the scratch folder as Slurm would (job 42, 4 tasks on 1 node, 3 CPUs per
  // task); returns bash's exit status.
  int run(const std::string& script) {
    write_text(dir_ / "job.sbatch", script);
    const std::string command = "cd '" + dir_.string() + "' && PATH='" + (dir_ / "bin").string() +
                                ":'\"$PATH\" SLURM_JOB_ID=42 SLURM_NTASKS=4 SLURM_JOB_NUM_NODES=1 "
                                "SLURM_CPUS_PER_TASK=3 SLURM_JOB_NODELIST=node1 "
                                "SLURM_ARRAY_TASK_ID=0 bash job.sbatch > out.log 2>&1";
    const int status = std::system(command.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string calls() const { return read_text(dir_ / "calls.log"); }
  std::string output() const { return read_text(dir_ / "out.log"); }
  const fs::path& dir() const { return dir_; }

 private:
  static inline int counter_ = 0;
  fs::path dir_;
};

JobSpec spec_from(const std::string& toml) {
  return parse_job_spec(toml, "test.toml");
}

std::string rendered(const JobSpec& spec) {
  return render_sbatch(
      spec, read_text(source_root() / "slurm" / "templates" / template_file_name(spec.kind)));
}

const char* kServe = R"(
[job]
kind = "serve"
[model]
path = "m.h5"
[parallel]
tp = 2
pp = 2
[slurm]
nodes = 1
tasks_per_node = 4
)";

TEST(JobScripts, DrainRequeuesOnlyWhenTheSpecAsksForIt) {
  {
    ScriptRun job(75);  // every rank drained
    EXPECT_EQ(job.run(rendered(spec_from(std::string(kServe) + "requeue = false\n"))), 0)
        << job.output();
    EXPECT_EQ(job.calls().find("scontrol requeue"), std::string::npos) << job.calls();
    EXPECT_NE(job.output().find("requeue is off"), std::string::npos) << job.output();
  }
  {
    ScriptRun job(75);
    job.run(rendered(spec_from(std::string(kServe) + "requeue = true\n")));
    EXPECT_NE(job.calls().find("scontrol requeue 42"), std::string::npos) << job.output();
  }
}

TEST(JobScripts, ServeAndSweepSetOmpThreadsFromTheirCpus) {
  {
    ScriptRun job(0);
    job.run(rendered(spec_from(kServe)));
    EXPECT_NE(job.calls().find("srun OMP_NUM_THREADS=3 "), std::string::npos) << job.calls();
  }
  {
    ScriptRun job(0);
    const JobSpec sweep = spec_from(R"(
[job]
kind = "sweep"
[model]
path = "m.h5"
[slurm]
nodes = 1
tasks_per_node = 4
[sweep]
tp = [1]
pp = [1]
batch = [1]
concurrency = [1]
)");
    job.run(rendered(sweep));
    EXPECT_NE(job.calls().find("srun OMP_NUM_THREADS=3 "), std::string::npos)
        << job.calls() << job.output();
  }
}

std::string convert_spec(const std::string& output, const std::string& extra) {
  return R"(
[job]
kind = "convert"
[convert]
input = "in.gguf"
output = ")" +
         output + "\"\n" + extra;
}

TEST(JobScripts, ConvertNeverReplacesAStoreUnlessTold) {
  ScriptRun job(0);
  write_text(job.dir() / "in.gguf", "GGUF");
  write_text(job.dir() / "served.h5", "the served store");
  EXPECT_NE(job.run(rendered(spec_from(convert_spec("served.h5", "")))), 0);
  EXPECT_EQ(read_text(job.dir() / "served.h5"), "the served store");
  EXPECT_NE(job.output().find("exists"), std::string::npos) << job.output();
  EXPECT_EQ(job.calls().find("convert"), std::string::npos) << job.calls();

  // Allowed: srun "converts" (the fake writes nothing) and the script moves the partial file.
  write_text(job.dir() / "bin" / "srun",
             "#!/bin/sh\necho \"srun $*\" >> calls.log\nfor a; do last=$a; done\n"
             "for a; do case $a in *.partial-*) echo new > \"$a\";; esac; done\n",
             true);
  EXPECT_EQ(job.run(rendered(spec_from(convert_spec(
                "served.h5", "name = \"SmolLM2-135M-Instruct\"\noverwrite = true\n")))),
            0)
      << job.output();
  EXPECT_EQ(read_text(job.dir() / "served.h5"), "new\n");
  EXPECT_NE(job.calls().find("--name SmolLM2-135M-Instruct"), std::string::npos) << job.calls();
}

TEST(JobScripts, ShippedLocalSpecsNameTheBuiltBinaryAndDoNotTouchTheServedStore) {
  const JobSpec serve = load_job_spec((source_root() / "jobs" / "serve-local.toml").string());
  for (const char* name : {"serve-local.toml", "sweep-local.toml", "convert-local.toml"}) {
    SCOPED_TRACE(name);
    const JobSpec spec = load_job_spec((source_root() / "jobs" / name).string());
    EXPECT_EQ(spec.alem_binary, "build/alem");  // scripts/build.sh puts the binary there
  }
  const JobSpec convert = load_job_spec((source_root() / "jobs" / "convert-local.toml").string());
  EXPECT_NE(convert.convert.output, serve.model_path);
  EXPECT_FALSE(convert.convert.name.empty());
  EXPECT_FALSE(convert.convert.overwrite);
}

}  // namespace
}  // namespace alem
