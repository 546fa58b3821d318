// Job specs and sbatch rendering (src/cli/job_spec.h): the shipped jobs/*.toml load, validate and
// render into bash that parses; each kind of mistake is refused with a reason naming its keys;
// the templates keep the same body as the hand-edited scripts in slurm/.
#include "cli/job_spec.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace alem {
namespace {

namespace fs = std::filesystem;

fs::path source_root() {
  if (const char* root = std::getenv("ALEM_SOURCE_DIR"); root && *root) return root;
  return fs::path(__FILE__).parent_path().parent_path().parent_path();  // tests/unit/ -> root
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << "cannot read " << path;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string template_for(const JobSpec& spec) {
  return read_text(source_root() / "slurm" / "templates" / template_file_name(spec.kind));
}

// All reasons joined, for substring checks with readable failure output.
std::string reasons_of(const JobSpec& spec) {
  std::string all;
  for (const std::string& r : validate(spec)) all += r + "\n";
  return all;
}

JobSpec serve_spec(const std::string& extra_tables = "") {
  return parse_job_spec(R"(
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
)" + extra_tables,
                        "test.toml");
}

// Runs `bash -n` on a script; true when bash finds no syntax error.
bool bash_parses(const std::string& script, const std::string& name) {
  const fs::path file = fs::temp_directory_path() / ("alem-test-" + name + ".sh");
  std::ofstream(file) << script;
  const int status = std::system(("bash -n '" + file.string() + "'").c_str());
  fs::remove(file);
  return status == 0;
}

TEST(JobSpec, ShippedSpecsLoadValidateAndRender) {
  int rendered = 0;
  for (const auto& entry : fs::directory_iterator(source_root() / "jobs")) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    const JobSpec spec = load_job_spec(entry.path().string());
    EXPECT_EQ(validate(spec), std::vector<std::string>{});
    const std::string script = render_sbatch(spec, template_for(spec));
    EXPECT_EQ(script.find("{{"), std::string::npos);
    EXPECT_EQ(script.rfind("#!/usr/bin/env bash\n", 0), 0u);
    EXPECT_NE(script.find("#SBATCH --job-name=" + spec.name + "\n"), std::string::npos);
    EXPECT_TRUE(bash_parses(script, entry.path().stem().string()));
    ++rendered;
  }
  EXPECT_GE(rendered, 3);
}

TEST(JobSpec, ServeRendersTheSlurmLinesOfTheIssue) {
  const JobSpec spec = load_job_spec((source_root() / "jobs/serve-2node-example.toml").string());
  const std::string script = render_sbatch(spec, template_for(spec));
  for (const char* line :
       {"#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=8\n", "#SBATCH --gpus-per-node=8\n",
        "#SBATCH --signal=B:USR1@300\n", "#SBATCH --requeue\n", "#SBATCH --open-mode=append\n",
        "#SBATCH --partition=gpu\n", "#SBATCH --account=inference\n", "#SBATCH --mem=0\n",
        "#SBATCH --exclusive\n", "#SBATCH --time=2-00:00:00\n", "TP=8\nPP=2\nDP=1\n",
        "MODEL=/shared/models/llama-70b-instruct.h5\n",
        "queue = \"cocoon-proxy.example.org:7400\"\n", "drain_seconds = 270\n",
        "srun --mpi=pmix"}) {
    EXPECT_NE(script.find(line), std::string::npos) << "missing: " << line;
  }
}

TEST(JobSpec, LocalServeLeavesOptionalLinesAsComments) {
  const JobSpec spec = load_job_spec((source_root() / "jobs/serve-local.toml").string());
  const std::string script = render_sbatch(spec, template_for(spec));
  EXPECT_EQ(script.find("--gpus-per-node"), std::string::npos);
  EXPECT_EQ(script.find("#SBATCH --account"), std::string::npos);
  EXPECT_NE(script.find("# no GPUs requested"), std::string::npos);
  EXPECT_NE(script.find("#SBATCH --signal=B:USR1@60\n"), std::string::npos);
  EXPECT_NE(script.find("#SBATCH --output=alem-serve-local-%j.out\n"), std::string::npos);
}

TEST(JobSpec, SweepBecomesOneArrayTaskPerConfiguration) {
  const JobSpec spec = load_job_spec((source_root() / "jobs/sweep-local.toml").string());
  const std::vector<SweepPoint> points = sweep_points(spec.sweep);
  ASSERT_EQ(points.size(), 8u);
  EXPECT_EQ(points.front().tp, 1);
  EXPECT_EQ(points.back().tp, 2);
  EXPECT_EQ(points.back().pp, 2);
  EXPECT_EQ(points.back().batch, 8);
  const std::string script = render_sbatch(spec, template_for(spec));
  EXPECT_NE(script.find("#SBATCH --array=0-7%2\n"), std::string::npos);
  EXPECT_NE(script.find("  \"1 1 1 8\"\n  \"1 1 8 8\"\n"), std::string::npos);
  EXPECT_NE(script.find("  \"2 2 8 8\"\n)"), std::string::npos);
}

TEST(JobSpec, LayoutThatDoesNotMatchTheTasksIsRefused) {
  JobSpec spec = serve_spec();
  EXPECT_EQ(validate(spec), std::vector<std::string>{});
  spec.parallel.dp = 2;
  const std::string reasons = reasons_of(spec);
  EXPECT_NE(reasons.find("[parallel] tp*pp*dp = 2*2*2 = 8 ranks, but [slurm] "
                         "nodes*tasks_per_node = 1*4 = 4 tasks"),
            std::string::npos)
      << reasons;
  try {
    render_sbatch(spec, template_for(spec));
    FAIL() << "an invalid spec was rendered";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("8 ranks"), std::string::npos) << e.message();
  }
}

TEST(JobSpec, EachMistakeHasItsOwnReason) {
  struct Case {
    const char* extra;
    const char* reason;
  };
  const Case cases[] = {
      {"[network]\nport = 70000\n", "[network] port = 70000 is not a TCP port"},
      {"[network]\nport = 9000\nmetrics_port = 9000\n", "is the same as [network] port"},
      {"[network]\nqueue = \"proxy\"\n", "[network] queue = \"proxy\" must be \"host:port\""},
      {"[limits]\nmax_batch_tokens = 0\n", "[limits] max_batch_tokens = 0 must be at least 1"},
  };
  for (const Case& c : cases) {
    const std::string reasons = reasons_of(serve_spec(c.extra));
    EXPECT_NE(reasons.find(c.reason), std::string::npos) << c.extra << " gave:\n" << reasons;
  }

  JobSpec spec = serve_spec();
  spec.parallel = {8, 1, 1};  // 8 ranks on 2 nodes of 4: the tp group would span both
  spec.slurm.nodes = 2;
  EXPECT_NE(reasons_of(spec).find("tasks_per_node = 4 is not a multiple of [parallel] tp = 8"),
            std::string::npos);

  spec = serve_spec();
  spec.slurm.gpus_per_node = 8;
  EXPECT_NE(reasons_of(spec).find("gpus_per_node = 8 but tasks_per_node = 4"), std::string::npos);

  spec = serve_spec();
  spec.slurm.time_limit = "30";  // 30 minutes
  spec.slurm.grace_seconds = 1800;
  EXPECT_NE(reasons_of(spec).find("grace_seconds = 1800 is not shorter than the time limit"),
            std::string::npos);

  spec = serve_spec();
  spec.slurm.time_limit = "1h";
  EXPECT_NE(reasons_of(spec).find("\"1h\" is not a Slurm time limit"), std::string::npos);

  spec = serve_spec();
  spec.model_path = "m.gguf";
  EXPECT_NE(reasons_of(spec).find("must be an HDF5 weight store (.h5)"), std::string::npos);

  spec = serve_spec();
  spec.name = "my job";
  spec.slurm.output = "log dir/%j.out";
  const std::string reasons = reasons_of(spec);
  EXPECT_NE(reasons.find("[job] name = \"my job\""), std::string::npos) << reasons;
  EXPECT_NE(reasons.find("[slurm] output = \"log dir/%j.out\""), std::string::npos) << reasons;
}

TEST(JobSpec, SweepAndConvertMistakes) {
  JobSpec sweep = load_job_spec((source_root() / "jobs/sweep-local.toml").string());
  sweep.sweep.tp = {4};
  sweep.sweep.pp = {2};
  EXPECT_NE(reasons_of(sweep).find("[sweep] tp = 4, pp = 2 needs 8 ranks, but [slurm] "
                                   "nodes*tasks_per_node = 4"),
            std::string::npos)
      << reasons_of(sweep);
  sweep.sweep.batch = {};
  EXPECT_NE(reasons_of(sweep).find("[sweep] batch is an empty list"), std::string::npos);

  JobSpec convert = load_job_spec((source_root() / "jobs/convert-local.toml").string());
  convert.convert.dtype = "fp8";
  convert.convert.output = "out.safetensors";
  convert.slurm.nodes = 2;
  const std::string reasons = reasons_of(convert);
  EXPECT_NE(reasons.find("dtype = \"fp8\" is not one of bf16, f32, int8"), std::string::npos);
  EXPECT_NE(reasons.find("[convert] output = \"out.safetensors\" must end in .h5"),
            std::string::npos);
  EXPECT_NE(reasons.find("a convert job runs one task on one node"), std::string::npos);
}

TEST(JobSpec, StructuralProblemsAreAllReportedWhenLoading) {
  try {
    parse_job_spec(R"(
[job]
kind = "serve"
[slurm]
nodez = 2
tasks_per_node = "4"
max_parallel = 2
[sweep]
tp = [1]
[extras]
x = 1
)",
                   "bad.toml");
    FAIL() << "loaded a spec with unknown keys";
  } catch (const Error& e) {
    const std::string& m = e.message();
    EXPECT_NE(m.find("unknown key [slurm] nodez (line 5)"), std::string::npos) << m;
    EXPECT_NE(m.find("[slurm] tasks_per_node must be an integer (line 6)"), std::string::npos) << m;
    EXPECT_NE(m.find("[slurm] max_parallel applies to sweep jobs only"), std::string::npos) << m;
    EXPECT_NE(m.find("[sweep] is not used by a serve job"), std::string::npos) << m;
    EXPECT_NE(m.find("unknown table [extras]"), std::string::npos) << m;
  }
}

TEST(JobSpec, SyntaxErrorsAndMissingKindNameTheirPlace) {
  try {
    parse_job_spec("[job]\nkind = \"serve\"\nname = \n", "broken.toml");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message().rfind("broken.toml:3:", 0), 0u) << e.message();
  }
  EXPECT_THROW(parse_job_spec("[job]\nname = \"x\"\n", "t.toml"), Error);
  EXPECT_THROW(parse_job_spec("[job]\nkind = \"train\"\n", "t.toml"), Error);
  EXPECT_THROW(load_job_spec("/nonexistent/spec.toml"), Error);
}

TEST(JobSpec, DefaultsFollowTheKind) {
  const JobSpec serve = parse_job_spec("[job]\nkind = \"serve\"\n", "s.toml");
  EXPECT_EQ(serve.name, "alem-serve");
  EXPECT_EQ(serve.slurm.output, "%x-%j.out");
  const JobSpec sweep = parse_job_spec("[job]\nkind = \"sweep\"\n[sweep]\ntp = 2\n", "w.toml");
  EXPECT_EQ(sweep.slurm.output, "%x-%A_%a.out");
  EXPECT_EQ(sweep.sweep.tp, std::vector<int>{2});
}

TEST(JobSpec, SlurmTimeFormats) {
  EXPECT_EQ(slurm_time_seconds("30"), 30 * 60);
  EXPECT_EQ(slurm_time_seconds("30:15"), 30 * 60 + 15);
  EXPECT_EQ(slurm_time_seconds("01:00:00"), 3600);
  EXPECT_EQ(slurm_time_seconds("2-0"), 2 * 86400);
  EXPECT_EQ(slurm_time_seconds("1-12:30"), 86400 + 12 * 3600 + 30 * 60);
  EXPECT_EQ(slurm_time_seconds("1-00:00:10"), 86400 + 10);
  EXPECT_EQ(slurm_time_seconds("UNLIMITED"), -1);
  for (const char* bad : {"", "1h", "1:2:3:4", "-5", "1-", "10:", "0", "1:x"}) {
    EXPECT_THROW(slurm_time_seconds(bad), Error) << bad;
  }
}

TEST(JobSpec, PathsWithSpacesAreShellQuoted) {
  JobSpec spec = serve_spec();
  spec.model_path = "/shared/my models/it's.h5";
  EXPECT_EQ(template_values(spec).at("model_path"), "'/shared/my models/it'\\''s.h5'");
  EXPECT_EQ(template_values(serve_spec()).at("model_path"), "m.h5");
}

TEST(JobSpec, TemplateMistakesNameThePlaceholderAndLine) {
  const JobSpec spec = serve_spec();
  EXPECT_EQ(render_sbatch(spec, "a {{tp}} b {{pp}}\n"), "a 2 b 2\n");
  try {
    render_sbatch(spec, "line one\n#SBATCH --x={{no_such_value}}\n");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("template line 2: unknown placeholder {{no_such_value}}"),
              std::string::npos)
        << e.message();
  }
  EXPECT_THROW(render_sbatch(spec, "{{tp\n}}"), Error);
}

// The part of a script below its "no edits needed" line.
std::string body_of(const std::string& script) {
  const size_t marker = script.find("# ---- below this line: no edits needed");
  EXPECT_NE(marker, std::string::npos);
  return marker == std::string::npos ? "" : script.substr(script.find('\n', marker) + 1);
}

TEST(JobSpec, TemplatesShareTheirBodyWithTheHandEditedScripts) {
  for (const char* kind : {"serve", "sweep", "convert"}) {
    SCOPED_TRACE(kind);
    const std::string script =
        read_text(source_root() / "slurm" / ("alem-" + std::string(kind) + ".sbatch"));
    const std::string templ =
        read_text(source_root() / "slurm" / "templates" / (std::string(kind) + ".sbatch.in"));
    EXPECT_EQ(body_of(script), body_of(templ));
    EXPECT_EQ(body_of(templ).find("{{"), std::string::npos);
  }
}

}  // namespace
}  // namespace alem
