// Chooses between the one-rank context and the MPI context, and makes a failure on any rank end
// the whole job (see mpi/failure_watchdog.h).
#include "cli/runtime.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_context.h"

namespace alem::cli {

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"}) {
    if (std::getenv(var)) return true;
  }
  return false;
}

ParallelContext make_context(const ParallelOptions& o) {
  const ParallelLayout layout(o.tp, o.pp, o.dp, o.ep);
  log_debug("parallel context",
            {{"layout", layout.describe()}, {"mpi", launched_by_mpi() ? "yes" : "no"}});
  if (layout.world_size() == 1 && !launched_by_mpi()) return make_solo_context();
  ParallelContext ctx = make_mpi_context(layout);
  // An exception escaping any thread, or (when configured) a stuck collective, ends the job.
  install_failure_handling(ctx);
  return ctx;
}

void fail_job(ParallelContext* ctx, const std::string& why) {
  if (ctx && ctx->world && ctx->world->size() > 1) abort_job(why);
}

std::string read_chat_template_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot read chat template " + path);
  std::stringstream text;
  text << in.rdbuf();
  ALEM_CHECK(!in.bad(), "cannot read chat template " + path);
  return text.str();
}

void add_parallel_flags(CLI::App& cmd, ParallelOptions& o) {
  cmd.add_option("--tp", o.tp, "Tensor-parallel size (ranks per replica stage)")
      ->capture_default_str();
  cmd.add_option("--pp", o.pp, "Pipeline-parallel size (stages)")->capture_default_str();
  cmd.add_option("--dp", o.dp, "Data-parallel size (replicas)")->capture_default_str();
  cmd.add_option("--ep", o.ep,
                 "Expert-parallel size for mixture-of-experts models: with --tp > 1 the tp group's "
                 "ranks form ep slices, each holding 1/ep of every MoE layer's experts (must "
                 "divide --tp); with --tp 1, groups of ep replicas share the experts and send "
                 "tokens to them by all-to-all (must divide --dp; --pp 1)")
      ->capture_default_str();
}

}  // namespace alem::cli
