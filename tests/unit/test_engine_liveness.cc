// Health that tells the truth: the recency rules of EngineLiveness (engine/engine_liveness.h)
// that /health and /v1/models use, driven with made-up times.
#include <gtest/gtest.h>

#include <thread>

#include "engine/engine_liveness.h"
#include "mpi/failure_watchdog.h"

namespace alem {
namespace {

using Clock = EngineLiveness::Clock;
using Round = EngineLiveness::Round;

Clock::time_point at(double seconds) {
  return Clock::time_point(
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1000.0 + seconds)));
}

TEST(EngineLiveness, NotLiveBeforeStartOrAfterStop) {
  EngineLiveness live;
  EXPECT_FALSE(live.check(at(0), 0).live);
  EXPECT_NE(live.check(at(0), 0).why.find("not started"), std::string::npos);
  live.start(at(0));
  EXPECT_TRUE(live.check(at(0.5), 0).live);
  live.stop();
  EXPECT_FALSE(live.check(at(0.5), 0).live);
}

TEST(EngineLiveness, IdleNeedsARecentRound) {
  EngineLiveness live({.idle_stale_s = 3, .busy_stall_s = 10});
  live.start(at(0));
  EXPECT_TRUE(live.check(at(2.9), 0).live);
  const EngineLiveness::Verdict stale = live.check(at(3.0), 0);
  EXPECT_FALSE(stale.live);
  EXPECT_NE(stale.why.find("no engine step or heartbeat completed for 3.0 s"), std::string::npos);
  // A heartbeat every second keeps it live indefinitely.
  for (int t = 1; t <= 100; ++t) {
    live.begin(Round::kHeartbeat);
    live.end(at(t + 0.001));
    EXPECT_TRUE(live.check(at(t + 0.9), 0).live) << t;
  }
  EXPECT_NEAR(live.seconds_since_progress(at(101.001)), 1.0, 1e-6);
}

TEST(EngineLiveness, AHeartbeatThatNeverEndsTurnsItStale) {
  EngineLiveness live({.idle_stale_s = 3, .busy_stall_s = 10});
  live.start(at(0));
  live.begin(Round::kHeartbeat);
  live.end(at(1));
  live.begin(Round::kHeartbeat);  // at 2 s: a rank never answers
  EXPECT_TRUE(live.check(at(3.9), 0.5).live);
  const EngineLiveness::Verdict v = live.check(at(4.0), 2.0);
  EXPECT_FALSE(v.live);
  EXPECT_NE(v.why.find("has not answered the heartbeat"), std::string::npos);
}

TEST(EngineLiveness, LongStepIsLiveWhilePeersAnswer) {
  EngineLiveness live({.idle_stale_s = 3, .busy_stall_s = 10});
  live.start(at(0));
  live.begin(Round::kStep);
  // A 60 s prefill whose collectives keep completing (short waits) stays live.
  for (double t = 0; t < 60; t += 0.5) EXPECT_TRUE(live.check(at(t), 0.2).live) << t;
  // Waiting for one peer for 10 s in one call is a stall.
  const EngineLiveness::Verdict v = live.check(at(61), 10.0);
  EXPECT_FALSE(v.live);
  EXPECT_NE(v.why.find("waited 10.0 s in one call"), std::string::npos);
  live.end(at(62));
  EXPECT_TRUE(live.check(at(62.5), 0).live);
  EXPECT_FALSE(live.check(at(65.5), 0).live);  // idle after the step, no heartbeat
}

TEST(EngineLiveness, StepWithoutWatchdogCountsAsLive) {
  EngineLiveness live;
  live.start(at(0));
  live.begin(Round::kStep);
  EXPECT_TRUE(live.check(at(500), 0).live);  // blocked time unknown (collective timeout off)
}

// The other input of health: how long the engine's oldest blocking call has waited. The watchdog
// measures nothing while off and starts measuring when armed (as `alem serve` does after load).
TEST(FailureWatchdog, MeasuresWaitsOnlyOnceArmed) {
  FailureWatchdog watchdog(0);
  {
    FailureWatchdog::Watch off = watchdog.watch("recv of 1 byte");
    EXPECT_EQ(watchdog.oldest_wait_s(), 0);
  }
  watchdog.arm(600);
  EXPECT_EQ(watchdog.timeout_s(), 600);
  {
    FailureWatchdog::Watch first = watchdog.watch("broadcast of 8 bytes");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    FailureWatchdog::Watch second = watchdog.watch("heartbeat answer", 300);
    EXPECT_GE(watchdog.oldest_wait_s(), 0.015);
  }
  EXPECT_EQ(watchdog.oldest_wait_s(), 0);
}

}  // namespace
}  // namespace alem
