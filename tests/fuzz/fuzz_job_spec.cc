// Fuzzes the job spec parser (src/cli/job_spec): the TOML files `alem submit` reads, then
// validation, the sweep's points, Slurm time limits and the template values, as submit does
// before it renders an sbatch script. Any input must give alem::Error, reasons, or a spec.
#include <exception>
#include <string_view>

#include "cli/job_spec.h"
#include "core/error.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    alem::JobSpec spec = alem::parse_job_spec(text, "fuzz.toml");
    try {
      (void)alem::slurm_time_seconds(spec.slurm.time_limit);
    } catch (const alem::Error&) {
    }
    if (alem::validate(spec).empty()) {
      if (spec.kind == alem::JobKind::kSweep) (void)alem::sweep_points(spec.sweep);
      (void)alem::template_values(spec);
      (void)alem::render_sbatch(spec, "#!/bin/bash\n#SBATCH --job-name={{job_name}}\n{{alem}}\n");
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("job_spec", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("job_spec", e.what());
  }
  return 0;
}
