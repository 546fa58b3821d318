// abort_job, the std::terminate hook and the collective-timeout watchdog: the pieces that turn a
// failure on one rank into a prompt, named, non-zero exit of the whole job.
#include "mpi/failure_watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "mpi/mpi_internal.h"
#include "mpi/parallel_context.h"

namespace alem {

void abort_job(const std::string& why) {
  static std::atomic<bool> aborting{false};
  if (aborting.exchange(true)) {
    // Another thread is already taking the job down; it will kill this one too.
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  const bool mpi_running = initialized && !finalized;
  const ProcessIdentity& id = process_identity();
  int rank = id.world_rank;
  if (rank < 0 && mpi_running) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string line = "alem: rank " + (rank >= 0 ? std::to_string(rank) : std::string("?")) +
                           " on " + id.host + " failed: " + why + "\n";
  // write(2) rather than stdio: this may run while another thread holds the stderr lock.
  for (size_t written = 0; written < line.size();) {
    const ssize_t n = ::write(STDERR_FILENO, line.data() + written, line.size() - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  if (mpi_running) MPI_Abort(MPI_COMM_WORLD, 1);
  std::_Exit(1);
}

namespace {

[[noreturn]] void terminate_by_aborting_job() {
  std::string why = "std::terminate called";
  if (std::exception_ptr error = std::current_exception()) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      why = std::string("uncaught exception: ") + e.what();
    } catch (...) {
      why = "uncaught exception of unknown type";
    }
  }
  abort_job(why);
}

using Clock = std::chrono::steady_clock;

}  // namespace

struct FailureWatchdog::State {
  struct Call {
    std::string what;
    Clock::time_point started;
    double timeout_s;  // 0: the watchdog's
  };
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false;
  uint64_t next_id = 1;
  std::map<uint64_t, Call> calls;  // ids grow with time, so the first is the oldest
  std::thread thread;
};

FailureWatchdog::FailureWatchdog(double timeout_s)
    : timeout_s_(timeout_s), state_(std::make_unique<State>()) {
  ALEM_CHECK(timeout_s >= 0,
             "the collective timeout must be >= 0 s, got " + std::to_string(timeout_s));
  if (timeout_s > 0) state_->thread = std::thread([this] { run(); });
}

void FailureWatchdog::arm(double timeout_s) {
  ALEM_CHECK(timeout_s > 0,
             "arm() needs a collective timeout > 0 s, got " + std::to_string(timeout_s));
  std::lock_guard<std::mutex> lock(state_->mutex);
  timeout_s_.store(timeout_s, std::memory_order_relaxed);
  if (!state_->thread.joinable()) state_->thread = std::thread([this] { run(); });
  state_->wake.notify_all();
}

double FailureWatchdog::oldest_wait_s() const {
  std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->calls.empty()) return 0;
  return std::chrono::duration<double>(Clock::now() - state_->calls.begin()->second.started)
      .count();
}

FailureWatchdog::~FailureWatchdog() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
  }
  state_->wake.notify_all();
  if (state_->thread.joinable()) state_->thread.join();
}

FailureWatchdog::Watch FailureWatchdog::watch(std::string what, double timeout_s) {
  Watch watch;
  if (timeout_s_.load(std::memory_order_relaxed) <= 0) return watch;
  std::lock_guard<std::mutex> lock(state_->mutex);
  watch.owner_ = this;
  watch.call_id_ = state_->next_id++;
  state_->calls.emplace(watch.call_id_, State::Call{std::move(what), Clock::now(), timeout_s});
  return watch;
}

void FailureWatchdog::finish(uint64_t call_id) {
  std::lock_guard<std::mutex> lock(state_->mutex);
  state_->calls.erase(call_id);
}

void FailureWatchdog::run() {
  std::unique_lock<std::mutex> lock(state_->mutex);
  while (!state_->stopping) {
    const double timeout_s = timeout_s_.load(std::memory_order_relaxed);
    // Check a few times per timeout, at least once a second: the abort comes at most ~25% late.
    state_->wake.wait_for(lock, std::chrono::duration<double>(std::min(timeout_s / 4, 1.0)));
    if (state_->stopping || state_->calls.empty()) continue;
    // Each call against its own limit (a call with a shorter one may not be the oldest).
    const auto now = Clock::now();
    for (const auto& [id, call] : state_->calls) {
      const double limit = call.timeout_s > 0 ? call.timeout_s : timeout_s;
      const double waited = std::chrono::duration<double>(now - call.started).count();
      if (waited < limit) continue;
      char text[96];
      std::snprintf(text, sizeof(text), "no progress for %.1f s (%s %g s) in ", waited,
                    call.timeout_s > 0 ? "limit" : "collective timeout", limit);
      const std::string why = text + call.what + ": a peer is stuck or unreachable";
      lock.unlock();
      abort_job(why);
    }
  }
}

FailureWatchdog::Watch::Watch(Watch&& other) noexcept
    : owner_(other.owner_), call_id_(other.call_id_) {
  other.owner_ = nullptr;
}

FailureWatchdog::Watch& FailureWatchdog::Watch::operator=(Watch&& other) noexcept {
  if (this != &other) {
    if (owner_) owner_->finish(call_id_);
    owner_ = other.owner_;
    call_id_ = other.call_id_;
    other.owner_ = nullptr;
  }
  return *this;
}

FailureWatchdog::Watch::~Watch() {
  if (owner_) owner_->finish(call_id_);
}

double collective_timeout_from_environment(double fallback) {
  const char* text = std::getenv("ALEM_COLLECTIVE_TIMEOUT_S");
  if (!text || !*text) return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  ALEM_CHECK(end && *end == '\0' && value >= 0,
             std::string("ALEM_COLLECTIVE_TIMEOUT_S must be a number of seconds >= 0, got '") +
                 text + "'");
  return value;
}

std::shared_ptr<FailureWatchdog> install_failure_handling(ParallelContext& ctx,
                                                          const FailureOptions& options) {
  std::set_terminate(terminate_by_aborting_job);
  auto watchdog = std::make_shared<FailureWatchdog>(
      collective_timeout_from_environment(options.collective_timeout_s));
  // Attached even when off: watch() then costs one atomic load, and arm() can turn it on later.
  for (ProcessGroup* group :
       {ctx.world.get(), ctx.tp.get(), ctx.pp.get(), ctx.dp.get(), ctx.ep.get()})
    if (auto* mpi_group = dynamic_cast<MpiProcessGroup*>(group)) mpi_group->set_watchdog(watchdog);
  ctx.watchdog = watchdog;
  return watchdog;
}

}  // namespace alem
