// Entry point of the `alem` command: parses the subcommand and reports failures. Library code
// throws alem::Error; this is the one place that prints it and chooses the exit status.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"
#include "mpi/mpi_context.h"

int main(int argc, char** argv) {
  CLI::App app{"alem: sharded, confidential LLM inference on Slurm clusters"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "alem 0.1.0");
  alem::cli::add_generate_command(app);
  alem::cli::add_convert_command(app);
  alem::cli::add_bench_command(app);
  alem::cli::add_info_command(app);
  alem::cli::add_submit_command(app);
  alem::cli::add_serve_command(app);
  alem::cli::add_netsim_command(app);
  alem::cli::add_status_command(app);
  alem::cli::add_cvm_command(app);
  alem::cli::add_verify_bundle_command(app);
  int status = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    status = app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alem: error: %s\n", e.what());
    status = 1;
  }
  // Multi-rank commands have destroyed their contexts by now; a no-op when MPI never started.
  alem::finalize_mpi();
  return status;
}
