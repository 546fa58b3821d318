// Entry point of the `alem` command: parses the subcommand and reports failures. Library code
// throws alem::Error; this is the one place that prints it and chooses the exit status.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"alem: sharded, confidential LLM inference on Slurm clusters"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "alem 0.1.0");
  alem::cli::add_generate_command(app);
  alem::cli::add_convert_command(app);
  alem::cli::add_bench_command(app);
  alem::cli::add_info_command(app);
  alem::cli::add_serve_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const alem::Error& e) {
    std::fprintf(stderr, "alem: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alem: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
