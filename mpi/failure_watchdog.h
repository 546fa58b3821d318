// Failing fast: a rank that dies, throws or gets stuck must bring the whole job down within
// seconds, naming itself, never leave the other ranks waiting forever in a collective.
//
// - A rank that dies (signal, exit without MPI_Finalize): the launcher kills the rest. mpirun does
//   this by default; under Slurm use `srun --kill-on-bad-exit=1` (see docs/parallelism.md).
// - A rank that throws: the front end calls abort_job(), which names the rank and host and calls
//   MPI_Abort; install_failure_handling() also routes std::terminate (an exception that escapes a
//   thread, say) to abort_job().
// - A rank that is stuck (alive, not dead): the collective timeout. A watchdog thread aborts the
//   job when one blocking call on an MPI process group has waited longer than the timeout. Off
//   for plain library use (an idle worker may wait for the next step plan for hours); `alem
//   serve` arms it (30 s by default) once every rank has loaded, because its leader sends a
//   heartbeat step every second when idle (engine/serving_engine.h), so no rank legitimately
//   waits that long.
#pragma once

#include <atomic>
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

  double timeout_s() const { return timeout_s_.load(std::memory_order_relaxed); }
  // Sets the timeout (> 0) after construction and starts the watching thread if needed; calls
  // already in progress are then measured from their start. Thread-safe.
  void arm(double timeout_s);
  // How long the oldest blocking call in progress has waited, in seconds (0 when none, or when
  // the watchdog is off and watches nothing). For health checks (engine/engine_liveness.h).
  double oldest_wait_s() const;

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
  // `timeout_s` > 0 gives this call its own, usually shorter, limit (a heartbeat answer that
  // names the peer it waits for); 0 uses the watchdog's timeout. Free when the watchdog is off.
  Watch watch(std::string what, double timeout_s = 0);

 private:
  void run();
  void finish(uint64_t call_id);

  struct State;
  std::atomic<double> timeout_s_;
  std::unique_ptr<State> state_;
};

// ALEM_COLLECTIVE_TIMEOUT_S from the environment when set (throws when it is not a number >= 0),
// else `fallback`.
double collective_timeout_from_environment(double fallback);

// Routes std::terminate to abort_job(), makes a watchdog (started when a collective timeout is
// configured: options or ALEM_COLLECTIVE_TIMEOUT_S), attaches it to the context's MPI process
// groups and stores it in ctx.watchdog, so that it can be armed later (FailureWatchdog::arm).
// Keep the returned watchdog alive while the groups are used (the groups also hold it).
std::shared_ptr<FailureWatchdog> install_failure_handling(ParallelContext& ctx,
                                                          const FailureOptions& options = {});

}  // namespace alem
