// The recency rules of engine liveness (see the header): plain arithmetic on steady-clock ticks,
// written by the engine thread and read by HTTP threads through atomics.
#include "engine/engine_liveness.h"

#include <cstdio>

namespace alem {
namespace {

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", s);
  return text;
}

}  // namespace

EngineLiveness::EngineLiveness(LivenessLimits limits) : limits_(limits) {}

void EngineLiveness::start(Clock::time_point now) {
  last_end_.store(ticks(now));
  round_.store(0);
  state_.store(1);
}

void EngineLiveness::stop() {
  state_.store(2);
}

void EngineLiveness::begin(Round round) {
  round_.store(static_cast<uint8_t>(round));
}

void EngineLiveness::end(Clock::time_point now) {
  last_end_.store(ticks(now));
  round_.store(0);
}

EngineLiveness::Clock::time_point EngineLiveness::last_progress() const {
  return Clock::time_point(Clock::duration(last_end_.load()));
}

double EngineLiveness::seconds_since_progress(Clock::time_point now) const {
  if (state_.load() == 0) return 0;
  return std::chrono::duration<double>(now - last_progress()).count();
}

EngineLiveness::Verdict EngineLiveness::check(Clock::time_point now, double blocked_s) const {
  Verdict v;
  const int state = state_.load();
  if (state == 0) {
    v.why = "the engine loop has not started";
    return v;
  }
  if (state == 2) {
    v.why = "the engine loop has stopped";
    return v;
  }
  if (round_.load() == static_cast<uint8_t>(Round::kStep)) {
    v.live = blocked_s < limits_.busy_stall_s;
    if (!v.live) {
      v.why = "a step has waited " + seconds_text(blocked_s) +
              " s in one call for another rank (limit " + seconds_text(limits_.busy_stall_s) +
              " s)";
    }
    return v;
  }
  const double since = seconds_since_progress(now);
  v.live = since < limits_.idle_stale_s;
  if (!v.live) {
    v.why = "no engine step or heartbeat completed for " + seconds_text(since) + " s (limit " +
            seconds_text(limits_.idle_stale_s) + " s)";
    if (round_.load() == static_cast<uint8_t>(Round::kHeartbeat)) {
      v.why += "; a rank has not answered the heartbeat";
    }
  }
  return v;
}

}  // namespace alem
