// `alem submit SPEC`: checks a TOML job spec (jobs/*.toml), renders its sbatch script from
// slurm/templates/, and hands it to `sbatch --parsable` on standard input; `--dry-run` prints
// the script instead. A spec that cannot run is refused with every reason at once.
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/job_spec.h"
#include "core/error.h"

namespace alem::cli {
namespace {

struct SubmitOptions {
  std::string spec;
  std::string templates = "slurm/templates";
  bool dry_run = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot read " + path + " (use --templates to point at slurm/templates)");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void run_submit(const SubmitOptions& o) {
  const JobSpec spec = load_job_spec(o.spec);
  const std::vector<std::string> problems = validate(spec);
  if (!problems.empty()) {
    std::string all;
    for (const std::string& p : problems) all += "\n  - " + p;
    ALEM_FAIL(o.spec + " cannot run:" + all);
  }
  const std::string script =
      render_sbatch(spec, read_text(o.templates + "/" + template_file_name(spec.kind)));
  if (o.dry_run) {
    std::fwrite(script.data(), 1, script.size(), stdout);
    return;
  }
  FILE* sbatch = ::popen("sbatch --parsable", "w");
  ALEM_CHECK(sbatch != nullptr, "cannot start sbatch (is Slurm installed and SLURM_CONF set?)");
  std::fwrite(script.data(), 1, script.size(), sbatch);
  const int status = ::pclose(sbatch);
  ALEM_CHECK(status == 0, "sbatch refused the job (exit status " + std::to_string(status) + ")");
}

}  // namespace

void add_submit_command(CLI::App& app) {
  auto o = std::make_shared<SubmitOptions>();
  CLI::App* cmd =
      app.add_subcommand("submit", "Check a job spec, render its sbatch script, submit it");
  cmd->add_option("spec", o->spec, "Job spec (jobs/*.toml)")->required();
  cmd->add_option("--templates", o->templates, "Folder of sbatch templates")->capture_default_str();
  cmd->add_flag("--dry-run", o->dry_run, "Print the rendered script instead of submitting it");
  cmd->callback([o] { run_submit(*o); });
}

}  // namespace alem::cli
