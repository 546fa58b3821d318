// ranks: 1
// Fail-fast, checked for real: each test launches its own 3-rank job (a nested mpirun running
// this binary's RankFailureChild test), makes rank 1 fail in the middle of a loop of all-reduces
// (killed by SIGKILL, an exception, an exception escaping a thread, an exit without
// MPI_Finalize, or stuck in a sleep), and checks that the whole job ends non-zero within 30 s of
// the failure, that its output names the failed rank and host, and that no rank outlives it.
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_context.h"
#include "mpi_test.h"

extern char** environ;

namespace alem {
namespace {

constexpr int kFailingRank = 1;
constexpr int kFailAtIteration = 200;
constexpr double kDeadlineSeconds = 30;  // the promise: the job is gone this soon after a failure

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---- The child job: every rank loops over all-reduces; rank 1 fails as told. ----

[[noreturn]] void fail_as(const std::string& mode) {
  std::printf("ALEM_FAILING_AT_MS %lld\n", static_cast<long long>(now_ms()));
  std::fflush(stdout);
  if (mode == "kill") raise(SIGKILL);
  if (mode == "exit") std::_Exit(0);  // gone without MPI_Finalize
  if (mode == "stuck")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(100));
  if (mode == "thread") {
    // An exception escaping a thread reaches std::terminate, which install_failure_handling
    // routes to abort_job.
    std::thread([] { ALEM_FAIL("simulated failure in a worker thread"); }).join();
  }
  // "throw": what the command-line front end does with an exception that reaches main().
  try {
    ALEM_FAIL("simulated failure in layer 7");
  } catch (const std::exception& e) {
    abort_job(e.what());
  }
}

TEST(RankFailureChild, AllReduceLoop) {
  const char* mode = std::getenv("ALEM_RANK_FAILURE_MODE");
  if (!mode) GTEST_SKIP() << "runs only inside the job that a RankFailure test launches";
  ParallelContext ctx = make_mpi_context(ParallelLayout(test::world_size(), 1, 1));
  auto watchdog = install_failure_handling(ctx);  // timeout from ALEM_COLLECTIVE_TIMEOUT_S
  std::printf("ALEM_CHILD_PID %d\n", static_cast<int>(getpid()));
  std::fflush(stdout);
  std::vector<float> data(1024, 1.f);
  for (int i = 0;; ++i) {
    if (i == kFailAtIteration && test::world_rank() == kFailingRank) fail_as(mode);
    ctx.tp->all_reduce(data.data(), data.size(), ReduceOp::Max);
  }
}

// ---- The parent: launches the child job and judges how it ended. ----

struct JobOutcome {
  int exit_status = -1;  // of mpirun; -1 when it had to be killed
  bool hung = false;     // still running at the parent's limit
  double seconds_after_failure = -1;
  std::string output;  // stdout and stderr together
};

std::string self_path() {
  char path[4096] = {0};
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, static_cast<size_t>(n)) : std::string();
}

// The environment without the variables of the MPI job this test itself runs in, so the nested
// mpirun starts a job of its own.
std::vector<std::string> child_environment(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string var = *e;
    bool inherited_from_launcher = false;
    for (const char* prefix : {"OMPI_", "PMIX_", "OPAL_", "ORTE_", "PRTE_", "PMI_", "HYDRA_"})
      if (var.rfind(prefix, 0) == 0) inherited_from_launcher = true;
    if (!inherited_from_launcher) env.push_back(var);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

JobOutcome run_failing_job(const std::string& mode, std::vector<std::string> extra_env = {}) {
  extra_env.push_back("ALEM_RANK_FAILURE_MODE=" + mode);
  std::vector<std::string> args = {"mpirun", "--oversubscribe", "--allow-run-as-root", "-np", "3"};
  for (const std::string& var : extra_env) {
    args.push_back("-x");
    args.push_back(var.substr(0, var.find('=')));
  }
  args.insert(args.end(),
              {self_path(), "--gtest_filter=RankFailureChild.AllReduceLoop", "--gtest_color=no"});
  const std::vector<std::string> env = child_environment(extra_env);
  std::vector<char*> argv, envp;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  argv.push_back(nullptr);
  envp.push_back(nullptr);

  int pipe_fds[2];
  EXPECT_EQ(pipe(pipe_fds), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attributes, 0);  // own process group, to kill it all if it hangs
  pid_t pid = -1;
  const int spawned = posix_spawnp(&pid, "mpirun", &actions, &attributes, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attributes);
  close(pipe_fds[1]);
  JobOutcome outcome;
  if (spawned != 0) {
    ADD_FAILURE() << "cannot start mpirun: " << std::strerror(spawned);
    close(pipe_fds[0]);
    return outcome;
  }

  // Read until mpirun's output ends, at most 2 x the deadline plus start-up time.
  const int64_t give_up_at = now_ms() + static_cast<int64_t>(2 * kDeadlineSeconds * 1000) + 30000;
  char buffer[4096];
  for (;;) {
    pollfd p{pipe_fds[0], POLLIN, 0};
    const int64_t left = give_up_at - now_ms();
    if (left <= 0) {
      outcome.hung = true;
      break;
    }
    if (poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000))) <= 0) continue;
    const ssize_t n = read(pipe_fds[0], buffer, sizeof(buffer));
    if (n <= 0) break;
    outcome.output.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  if (outcome.hung) kill(-pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  const int64_t ended_at = now_ms();
  if (!outcome.hung && WIFEXITED(status)) outcome.exit_status = WEXITSTATUS(status);

  std::smatch match;
  if (std::regex_search(outcome.output, match, std::regex("ALEM_FAILING_AT_MS (\\d+)")))
    outcome.seconds_after_failure = static_cast<double>(ended_at - std::stoll(match[1])) / 1000.0;
  // No rank may outlive the job (a hung one would hold its GPU and node).
  const std::regex pid_line("ALEM_CHILD_PID (\\d+)");
  for (auto it = std::sregex_iterator(outcome.output.begin(), outcome.output.end(), pid_line);
       it != std::sregex_iterator(); ++it) {
    const pid_t rank_pid = static_cast<pid_t>(std::stoi((*it)[1]));
    bool gone = false;
    for (int tries = 0; tries < 50 && !gone; ++tries) {
      gone = kill(rank_pid, 0) != 0;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_TRUE(gone) << "rank process " << rank_pid << " outlived the job";
    if (!gone) kill(rank_pid, SIGKILL);
  }
  std::printf("[ %s ] mpirun exit %d, %.2f s after the failure\n", mode.c_str(),
              outcome.exit_status, outcome.seconds_after_failure);
  return outcome;
}

void expect_fast_named_failure(const JobOutcome& outcome, const std::string& must_name) {
  EXPECT_FALSE(outcome.hung) << "the job hung after rank " << kFailingRank << " failed:\n"
                             << outcome.output;
  EXPECT_NE(outcome.exit_status, 0) << outcome.output;
  EXPECT_GE(outcome.seconds_after_failure, 0) << "the failing rank never got to fail:\n"
                                              << outcome.output;
  EXPECT_LT(outcome.seconds_after_failure, kDeadlineSeconds) << outcome.output;
  EXPECT_TRUE(std::regex_search(outcome.output, std::regex(must_name)))
      << "the output does not match '" << must_name << "':\n"
      << outcome.output;
}

// Runs only from the ctest entry (one rank); the child jobs make their own ranks.
#define ALEM_PARENT_ONLY()                                                      \
  do {                                                                          \
    if (std::getenv("ALEM_RANK_FAILURE_MODE")) GTEST_SKIP() << "child job";     \
    if (test::world_size() != 1) GTEST_SKIP() << "launches its own 3-rank job"; \
  } while (0)

TEST(RankFailure, KilledRankEndsTheJob) {
  ALEM_PARENT_ONLY();
  // mpirun's own report: "process rank 1 with PID N on node HOST exited on signal 9 (Killed)".
  expect_fast_named_failure(run_failing_job("kill"),
                            "rank 1 with PID \\d+ on\\s+node " + process_identity().host);
}

TEST(RankFailure, ThrowingRankAbortsTheJob) {
  ALEM_PARENT_ONLY();
  expect_fast_named_failure(
      run_failing_job("throw"),
      "alem: rank 1 on " + process_identity().host + " failed: .*simulated failure in layer 7");
}

TEST(RankFailure, ExceptionEscapingAThreadAbortsTheJob) {
  ALEM_PARENT_ONLY();
  expect_fast_named_failure(
      run_failing_job("thread"),
      "alem: rank 1 on " + process_identity().host +
          " failed: uncaught exception: .*simulated failure in a worker thread");
}

TEST(RankFailure, RankExitingWithoutFinalizeEndsTheJob) {
  ALEM_PARENT_ONLY();
  expect_fast_named_failure(run_failing_job("exit"),
                            "rank 1 with PID \\d+ on\\s+node " + process_identity().host);
}

TEST(RankFailure, StuckRankTripsTheCollectiveTimeout) {
  ALEM_PARENT_ONLY();
  // Rank 1 sleeps; the others wait in the all-reduce until their watchdog gives up after 3 s.
  expect_fast_named_failure(run_failing_job("stuck", {"ALEM_COLLECTIVE_TIMEOUT_S=3"}),
                            "alem: rank [02] on " + process_identity().host +
                                " failed: no progress for [0-9.]+ s .*in all_reduce");
}

}  // namespace
}  // namespace alem
