// Entry point of the `alem` command: parses the subcommand and reports failures. Library code
// throws alem::Error; this is the one place that prints it and chooses the exit status:
//   0  success (or --help, --version)
//   1  a runtime failure: "alem: error: <message>" (host, rank, file and line go to the debug
//      log; a multi-rank job's abort report carries them, see cli/runtime.h)
//   2  a usage error: "alem: unknown command 'foo'; see alem --help", a bad or missing option
//   other  a command's own verdict (CommandExit), e.g. `alem status` 3/4
// The global --log-level (trace, debug, info, warn, error; else ALEM_LOG_LEVEL) is applied
// before any command runs.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "mpi/mpi_context.h"

namespace {

constexpr int kUsageError = 2;
constexpr int kRuntimeError = 1;

// Where a command line leads: the chain of known subcommands it names ("bench generate"), and
// the first word that names no subcommand where one was expected ("" when none).
struct CommandPath {
  std::string known;
  std::string unknown;
  const CLI::App* app = nullptr;
};

const CLI::Option* find_option(CLI::App* app, const std::string& name) {
  for (CLI::App* a = app; a != nullptr; a = a->get_parent()) {
    if (const CLI::Option* opt = a->get_option_no_throw(name)) return opt;
  }
  return nullptr;
}

CommandPath command_path(CLI::App& root, int argc, char** argv) {
  CommandPath path;
  CLI::App* current = &root;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--") break;
    if (arg.size() > 1 && arg[0] == '-') {
      // Skip an option's value ("--log-level debug"), so the value is not taken for a command.
      const size_t eq = arg.find('=');
      const CLI::Option* opt = find_option(current, arg.substr(0, eq));
      const bool bare = eq == std::string::npos && (arg.rfind("--", 0) == 0 || arg.size() == 2);
      if (opt && bare && opt->get_expected_min() > 0) ++i;
      continue;
    }
    const std::vector<CLI::App*> subs = current->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) break;  // a leaf command: positional arguments follow
    CLI::App* next = nullptr;
    for (CLI::App* s : subs) {
      if (s->check_name(arg)) next = s;
    }
    if (next == nullptr) {
      path.unknown = arg;
      break;
    }
    path.known += (path.known.empty() ? "" : " ") + next->get_name();
    current = next;
  }
  path.app = current;
  return path;
}

// Applies --log-level before parsing, so that anything logged while commands are set up and
// parsed already honours it. (CLI11 checks the value again and reports a bad one as a usage
// error.)
void apply_log_level_early(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const char* arg = argv[i];
    if (std::strcmp(arg, "--") == 0) return;
    const char* value = nullptr;
    if (std::strcmp(arg, "--log-level") == 0 && i + 1 < argc) value = argv[i + 1];
    if (std::strncmp(arg, "--log-level=", 12) == 0) value = arg + 12;
    if (value == nullptr) continue;
    if (auto level = alem::parse_log_level(value)) alem::set_log_level(*level);
  }
}

std::string usage_message(const CLI::ParseError& e) {
  std::string what = e.what();
  if (what == "A subcommand is required") return "a command is required";
  if (!what.empty()) what[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(what[0])));
  return what;
}

}  // namespace

int main(int argc, char** argv) {
  apply_log_level_early(argc, argv);
  CLI::App app{"alem: sharded, confidential LLM inference on Slurm clusters"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--log-level) are accepted after the command too
  app.set_version_flag("--version", "alem 0.1.0");
  app.add_option_function<std::string>(
         "--log-level",
         [](const std::string& value) {
           const auto level = alem::parse_log_level(value);
           if (!level) {
             throw CLI::ValidationError("--log-level",
                                        "'" + value +
                                            "' is not one of trace, debug, info, warn, "
                                            "error");
           }
           alem::set_log_level(*level);
         },
         "Log floor: trace, debug, info, warn or error (default: ALEM_LOG_LEVEL, else info)")
      ->trigger_on_parse();
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
  alem::cli::add_attest_command(app);
  alem::cli::add_plan_command(app);

  const CommandPath path = command_path(app, argc, argv);
  alem::log_debug("alem command", {{"command", path.known.empty() ? "(none)" : path.known},
                                   {"log_level", alem::log_level_name(alem::log_level())}});
  const std::string help_hint = "alem" + (path.known.empty() ? "" : " " + path.known) + " --help";
  int status = 0;
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    status = app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    status = app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    status = app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (!path.unknown.empty()) {
      std::fprintf(stderr, "alem: unknown command '%s'; see %s\n",
                   (path.known.empty() ? path.unknown : path.known + " " + path.unknown).c_str(),
                   help_hint.c_str());
    } else {
      std::fprintf(stderr, "alem: %s; see %s\n", usage_message(e).c_str(), help_hint.c_str());
    }
    status = kUsageError;
  } catch (const alem::cli::CommandExit& e) {
    status = e.code();
  } catch (const alem::Error& e) {
    // The user gets the message; where it was thrown is for whoever debugs it.
    alem::log_debug("command failed", {{"where", e.location()}});
    std::fprintf(stderr, "alem: error: %s\n", e.message().c_str());
    status = kRuntimeError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alem: error: %s\n", e.what());
    status = kRuntimeError;
  }
  // Multi-rank commands have destroyed their contexts by now; a no-op when MPI never started.
  alem::finalize_mpi();
  return status;
}
