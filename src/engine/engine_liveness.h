// EngineLiveness: whether a replica's engine is making progress now, not merely whether its HTTP
// thread is alive. COCOON's worker polls GET /v1/models every 1-2 s and stops routing when it
// fails, so /health and /v1/models must turn 503 within seconds when the engine loop is stuck or
// a rank of the replica has stopped answering (docs/operations.md, "a stuck or silent rank").
//
// The engine thread reports rounds: a step (forward + sample, every rank of the replica takes
// part in its collectives) or a heartbeat (the leader's empty step when idle, which every rank
// answers). The verdict, from any thread:
//   - not started, or stopped                          -> not live
//   - no round in progress: the last one ended less than idle_stale_s ago (the idle leader
//     sends a heartbeat every second, so an idle healthy replica is never older than ~1 s)
//   - a heartbeat in progress: the same rule (a heartbeat takes milliseconds; one that hangs
//     means a rank did not answer)
//   - a step in progress: live while the engine's current blocking call on a process group
//     (measured by the collective-timeout watchdog) has waited less than busy_stall_s. Long
//     compute is not a stall; waiting that long for a peer is. Without the watchdog the wait is
//     unknown and a step in progress counts as live (the collective timeout then is off too).
// Pure logic over times given by the caller, so tests/unit/test_engine_liveness.cc can drive it.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace alem {

struct LivenessLimits {
  double idle_stale_s = 3.0;   // idle or heartbeat: the last round ended at most this long ago
  double busy_stall_s = 10.0;  // in a step: one blocking peer call may wait at most this long
};

class EngineLiveness {
 public:
  using Clock = std::chrono::steady_clock;

  explicit EngineLiveness(LivenessLimits limits = {});

  enum class Round : uint8_t { kStep = 1, kHeartbeat = 2 };

  // The engine loop starts (counts as a finished round) or stops (never live again).
  void start(Clock::time_point now);
  void stop();
  // The engine thread begins a round, and ends it when every rank has taken part.
  void begin(Round round);
  void end(Clock::time_point now);

  struct Verdict {
    bool live = false;
    std::string why;  // when not live: for the log and the operator
  };
  // `blocked_s`: how long the engine's current blocking peer call has waited (0: none/unknown).
  Verdict check(Clock::time_point now, double blocked_s) const;

  // Seconds since the last round ended (0 before start).
  double seconds_since_progress(Clock::time_point now) const;
  // When the last round ended (the epoch before start).
  Clock::time_point last_progress() const;
  const LivenessLimits& limits() const { return limits_; }

 private:
  static int64_t ticks(Clock::time_point t) { return t.time_since_epoch().count(); }
  LivenessLimits limits_;
  std::atomic<int> state_{0};  // 0 not started, 1 running, 2 stopped
  std::atomic<int64_t> last_end_{0};
  std::atomic<uint8_t> round_{0};  // 0: none in progress, else Round
};

}  // namespace alem
