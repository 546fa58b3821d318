// Failing fast: a rank that dies, throws or gets stuck must bring the whole job down within
// seconds, naming itself, never leave the other ranks waiting forever in a collective.
//
// - A rank that dies (signal, exit without MPI_Finalize): the launcher kills the rest. mpirun does
//   this by default; under Slurm use `srun --kill-on-bad-exit=1` (see docs/parallelism.md).
// - A rank that throws: the front end calls abort_job(), which names the rank and host and calls
//   MPI_Abort; install_failure_handling() also routes std::terminate (an exception that escapes a
//   thread, say) to abort_job().
// - A rank that is stuck (alive, not dead): the optional collective timeout. A watchdog thread
//   aborts the job when one blocking call on an MPI process group has waited longer than the
//   timeout. Off by default: an idle worker may wait for the next step plan for hours, so turn it
//   on only where the engine never blocks that long (e.g. the leader broadcasts an empty plan
//   every second when idle).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace alem {

struct ParallelContext;

// Prints "alem: rank R on HOST failed: WHY" to stderr and ends the whole job: MPI_Abort on
// MPI_COMM_WORLD when MPI is running, otherwise this process alone exits with status 1. Safe to
// call from any thread; concurrent callers after the first just wait to be killed.
[[noreturn]] void abort_job(const std::string& why);

struct FailureOptions {
  // Seconds one blocking call on an MPI process group may wait before the job is aborted;
  // 0 turns the watchdog off. ALEM_COLLECTIVE_TIMEOUT_S in the environment overrides it.
  double collective_timeout_s = 0;
};

// Watches blocking calls and aborts the job when one of them lasts longer than the timeout.
// Process groups mark each call with a Watch; a thread checks the oldest one a few times per
// timeout. With a timeout of 0 no thread runs and watch() costs nothing.
class FailureWatchdog {
 public:
  explicit FailureWatchdog(double timeout_s);
  ~FailureWatchdog();
  FailureWatchdog(const FailureWatchdog&) = delete;
  FailureWatchdog& operator=(const FailureWatchdog&) = delete;

  double timeout_s() const { return timeout_s_; }

  // Marks one blocking call from construction to destruction. Movable, not copyable.
  class Watch {
   public:
    Watch() = default;
    Watch(Watch&& other) noexcept;
    Watch& operator=(Watch&& other) noexcept;
    ~Watch();

   private:
    friend class FailureWatchdog;
    FailureWatchdog* owner_ = nullptr;
    uint64_t call_id_ = 0;
  };
  // `what` names the call for the abort message: "all_reduce of 4096 floats on tp group {0,1}".
  Watch watch(std::string what);

 private:
  void run();
  void finish(uint64_t call_id);

  struct State;
  double timeout_s_;
  std::unique_ptr<State> state_;
};

// Routes std::terminate to abort_job() and, when a collective timeout is configured (options or
// ALEM_COLLECTIVE_TIMEOUT_S), starts a watchdog and attaches it to the context's MPI process
// groups. Keep the returned watchdog alive while the groups are used (the groups also hold it).
std::shared_ptr<FailureWatchdog> install_failure_handling(ParallelContext& ctx,
                                                          const FailureOptions& options = {});

}  // namespace alem
