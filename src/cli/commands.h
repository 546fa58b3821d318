// The `alem` subcommands. Each lives in its own cmd_*.cc file and registers itself on the
// CLI11 app; main.cc only parses, dispatches, and turns errors into exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <stdexcept>
#include <string>

namespace alem::cli {

// Thrown by a command that has printed its own verdict and must end with `code` (not an error
// to report): main() finalizes MPI and returns it.
class CommandExit : public std::runtime_error {
 public:
  explicit CommandExit(int code)
      : std::runtime_error("exit " + std::to_string(code)), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

// Each adds one subcommand whose callback does the work and throws alem::Error on failure.
void add_generate_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_bench_batch_command(CLI::App& bench);      // `alem bench batch`, under add_bench_command
void add_bench_calibrate_command(CLI::App& bench);  // `alem bench calibrate`
void add_bench_sweep_command(CLI::App& bench);      // `alem bench sweep`
void add_info_command(CLI::App& app);
void add_submit_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_netsim_command(CLI::App& app);  // the reference network (cmd_netsim.cc)
void add_status_command(CLI::App& app);
void add_cvm_command(CLI::App& app);             // `alem cvm render` (cmd_cvm.cc)
void add_verify_bundle_command(CLI::App& app);   // `alem verify-bundle` (cmd_verify_bundle.cc)
void add_attest_command(CLI::App& app);          // `alem attest verify` (cmd_attest.cc)
void add_plan_command(CLI::App& app);            // `alem plan` (cmd_plan.cc)
void add_plan_simulate_command(CLI::App& plan);  // `alem plan simulate` (cmd_plan_simulate.cc)

}  // namespace alem::cli
