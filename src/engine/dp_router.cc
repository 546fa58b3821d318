// The data-parallel router on the gateway and the agent on other replicas' leaders; see
// dp_router.h. Message layout (engine/wire_format.h), first byte = kind:
//   router -> agent  kSubmit  i64 id | prompt ids | params | salt      kCancel  i64 id
//                    kStopAccepting      kAbortAll      kStop  i32 exit code
//   agent -> router  kAck     i64 id | u8 SubmitStatus
//                    kEvent   i64 id | u8 has_token | i32 token | f32 logprob | u8 finished |
//                             u8 finish reason | i32 prompt, cached, completion tokens |
//                             f64 x3 timings | u8 has_logprobs | u32 n | n x (i32 id, f32 lp)
//                    kStats   the replica's ReplicaStats
#include "engine/dp_router.h"

#include <algorithm>
#include <chrono>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/wire_format.h"

namespace alem {
namespace {

enum Kind : uint8_t {
  kSubmit = 1,
  kCancel = 2,
  kStopAccepting = 3,
  kAbortAll = 4,
  kStop = 5,
  kAck = 11,
  kEvent = 12,
  kStats = 13,
};

constexpr auto kAckTimeout = std::chrono::seconds(30);
constexpr auto kStatsPeriod = std::chrono::milliseconds(250);

std::vector<uint8_t> one_byte(Kind kind) {
  return {static_cast<uint8_t>(kind)};
}

void put_event(ByteWriter& w, int64_t id, const RequestEvent& e) {
  w.put<uint8_t>(kEvent);
  w.put(id);
  w.put<uint8_t>(e.has_token);
  w.put(e.token_id);
  w.put(e.logprob);
  w.put<uint8_t>(e.finished);
  w.put<uint8_t>(static_cast<uint8_t>(e.finish_reason));
  w.put(e.usage.prompt_tokens);
  w.put(e.usage.cached_tokens);
  w.put(e.usage.completion_tokens);
  w.put(e.timings.queue_seconds);
  w.put(e.timings.prefill_seconds);
  w.put(e.timings.decode_seconds);
  w.put<uint8_t>(e.has_logprobs);
  w.put<uint32_t>(static_cast<uint32_t>(e.top_logprobs.size()));
  for (const TokenLogprob& t : e.top_logprobs) {
    w.put(t.token_id);
    w.put(t.logprob);
  }
}

RequestEvent get_event(ByteReader& r) {
  RequestEvent e;
  e.has_token = r.get<uint8_t>() != 0;
  e.token_id = r.get<int32_t>();
  e.logprob = r.get<float>();
  e.finished = r.get<uint8_t>() != 0;
  const uint8_t reason = r.get<uint8_t>();
  ALEM_CHECK(reason <= static_cast<uint8_t>(FinishReason::kError),
             "data-parallel event: unknown finish reason " + std::to_string(reason));
  e.finish_reason = static_cast<FinishReason>(reason);
  e.usage.prompt_tokens = r.get<int32_t>();
  e.usage.cached_tokens = r.get<int32_t>();
  e.usage.completion_tokens = r.get<int32_t>();
  e.timings.queue_seconds = r.get<double>();
  e.timings.prefill_seconds = r.get<double>();
  e.timings.decode_seconds = r.get<double>();
  e.has_logprobs = r.get<uint8_t>() != 0;
  const uint32_t top = r.get<uint32_t>();
  ALEM_CHECK(top <= 64, "data-parallel event: implausible top_logprobs count");
  e.top_logprobs.resize(top);
  for (TokenLogprob& t : e.top_logprobs) {
    t.token_id = r.get<int32_t>();
    t.logprob = r.get<float>();
  }
  return e;
}

void put_stats(ByteWriter& w, const ReplicaStats& s) {
  w.put<uint8_t>(kStats);
  w.put<int32_t>(s.replica);
  w.put(s.running);
  w.put(s.waiting);
  w.put(s.kv_blocks_used);
  w.put(s.kv_blocks_cached);
  w.put(s.kv_blocks_total);
  w.put(s.steps);
  w.put(s.preemptions);
  w.put(s.prefix_cache_queries);
  w.put(s.prefix_cache_hits);
  w.put<int32_t>(s.moe_ep_size);
  w.put<uint32_t>(static_cast<uint32_t>(s.moe_tokens_per_expert.size()));
  for (int64_t n : s.moe_tokens_per_expert) w.put(n);
  w.put<uint8_t>(s.alive);
}

ReplicaStats get_stats(ByteReader& r) {
  ReplicaStats s;
  s.replica = r.get<int32_t>();
  s.running = r.get<int64_t>();
  s.waiting = r.get<int64_t>();
  s.kv_blocks_used = r.get<int64_t>();
  s.kv_blocks_cached = r.get<int64_t>();
  s.kv_blocks_total = r.get<int64_t>();
  s.steps = r.get<int64_t>();
  s.preemptions = r.get<int64_t>();
  s.prefix_cache_queries = r.get<int64_t>();
  s.prefix_cache_hits = r.get<int64_t>();
  s.moe_ep_size = r.get<int32_t>();
  const uint32_t experts = r.get<uint32_t>();
  ALEM_CHECK(experts <= 1u << 16, "replica stats name " + std::to_string(experts) + " experts");
  s.moe_tokens_per_expert.resize(experts);
  for (int64_t& n : s.moe_tokens_per_expert) n = r.get<int64_t>();
  s.alive = r.get<uint8_t>() != 0;
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// DataParallelRouter (gateway)

DataParallelRouter::DataParallelRouter(ServingEngine& local, MessageChannel& channel,
                                       std::vector<int> replica_leaders)
    : local_(local), channel_(channel), leaders_(std::move(replica_leaders)) {
  ALEM_CHECK(!leaders_.empty() && leaders_[0] == channel_.rank(),
             "data-parallel router: replica 0's leader must be this rank");
  outstanding_.assign(leaders_.size(), 0);
  remote_stats_.resize(leaders_.size());
  remote_seen_.assign(leaders_.size(), std::chrono::steady_clock::time_point{});
  for (size_t d = 0; d < leaders_.size(); ++d) remote_stats_[d].replica = static_cast<int>(d);
  receiver_ = std::thread([this] { receive_loop(); });
}

DataParallelRouter::~DataParallelRouter() {
  channel_.close();
  if (receiver_.joinable()) receiver_.join();
}

int DataParallelRouter::pick_replica() const {
  int best = 0;
  for (int d = 1; d < static_cast<int>(outstanding_.size()); ++d) {
    if (outstanding_[d] < outstanding_[best]) best = d;
  }
  return best;
}

SubmitResult DataParallelRouter::submit(EngineRequest request) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopped_) return {SubmitStatus::kNotAccepting, -1};
  const int64_t id = next_id_++;
  const int replica = pick_replica();
  ++outstanding_[replica];
  EngineEventCallback user = std::move(request.on_event);
  routed_[id] = Routed{replica, -1, user};

  if (replica == 0) {
    lock.unlock();
    request.on_event = [this, id, user](const RequestEvent& event) {
      RequestEvent e = event;
      e.request_id = id;  // callers know the router's id, not the engine's
      user(e);
      if (e.finished) {
        std::lock_guard<std::mutex> guard(mutex_);
        if (routed_.erase(id)) --outstanding_[0];
      }
    };
    const SubmitResult local = local_.submit(std::move(request));
    lock.lock();
    if (local.status != SubmitStatus::kAccepted) {
      if (routed_.erase(id)) --outstanding_[0];
      return {local.status, -1, 0};
    }
    auto it = routed_.find(id);
    if (it != routed_.end()) it->second.engine_id = local.request_id;
    return {SubmitStatus::kAccepted, id, 0};
  }

  ByteWriter w;
  w.put<uint8_t>(kSubmit);
  w.put(id);
  w.put_ids(request.prompt);
  put_params(w, request.params);
  w.put_string(request.cache_salt);
  secure_wipe(request.prompt.data(), request.prompt.size() * sizeof(int32_t));
  pending_acks_[id] = {};
  lock.unlock();
  channel_.send(leaders_[replica], w.bytes);
  secure_wipe(w.bytes.data(), w.bytes.size());
  lock.lock();
  const bool answered =
      acked_.wait_for(lock, kAckTimeout, [&] { return pending_acks_[id].answered; });
  const SubmitStatus status = answered ? pending_acks_[id].status : SubmitStatus::kNotAccepting;
  pending_acks_.erase(id);
  if (status != SubmitStatus::kAccepted) {
    if (routed_.erase(id)) --outstanding_[replica];
    if (!answered) {
      log_warn("data-parallel replica did not acknowledge a request",
               {{"replica", std::to_string(replica)}});
    }
    return {status, -1, replica};
  }
  return {SubmitStatus::kAccepted, id, replica};
}

void DataParallelRouter::cancel(int64_t request_id) {
  std::unique_lock<std::mutex> lock(mutex_);
  auto it = routed_.find(request_id);
  if (it == routed_.end()) return;
  const Routed r = it->second;
  lock.unlock();
  if (r.replica == 0) {
    if (r.engine_id >= 0) local_.cancel(r.engine_id);
    return;
  }
  ByteWriter w;
  w.put<uint8_t>(kCancel);
  w.put(request_id);
  channel_.send(leaders_[r.replica], w.bytes);
}

void DataParallelRouter::deliver(int64_t router_id, const RequestEvent& event) {
  EngineEventCallback callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = routed_.find(router_id);
    if (it == routed_.end()) return;  // cancelled and already ended
    callback = it->second.on_event;
    if (event.finished) {
      --outstanding_[it->second.replica];
      routed_.erase(it);
    }
  }
  RequestEvent e = event;
  e.request_id = router_id;
  callback(e);
}

void DataParallelRouter::receive_loop() {
  while (std::optional<ChannelMessage> m = channel_.recv()) {
    try {
      ALEM_CHECK(!m->bytes.empty(), "empty data-parallel message");
      ByteReader r(m->bytes.data(), m->bytes.size());
      const uint8_t kind = r.get<uint8_t>();
      if (kind == kAck) {
        const int64_t id = r.get<int64_t>();
        const uint8_t status = r.get<uint8_t>();
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = pending_acks_.find(id);
        if (it != pending_acks_.end()) {
          it->second.answered = true;
          it->second.status = static_cast<SubmitStatus>(std::min<uint8_t>(status, 2));
        }
        acked_.notify_all();
      } else if (kind == kEvent) {
        const int64_t id = r.get<int64_t>();
        deliver(id, get_event(r));
      } else if (kind == kStats) {
        ReplicaStats s = get_stats(r);
        const auto at = std::find(leaders_.begin(), leaders_.end(), m->source);
        ALEM_CHECK(at != leaders_.end(),
                   "stats from rank " + std::to_string(m->source) + ", which leads no replica");
        const size_t d = static_cast<size_t>(at - leaders_.begin());
        s.replica = static_cast<int>(d);
        std::lock_guard<std::mutex> lock(mutex_);
        remote_stats_[d] = s;
        remote_seen_[d] = std::chrono::steady_clock::now();
      } else {
        ALEM_FAIL("unknown data-parallel message kind " + std::to_string(kind));
      }
    } catch (const std::exception& e) {
      log_error("bad data-parallel message",
                {{"from_rank", std::to_string(m->source)}, {"why", e.what()}});
    }
    secure_wipe(m->bytes.data(), m->bytes.size());
  }
}

std::vector<ReplicaStats> DataParallelRouter::stats() const {
  std::vector<ReplicaStats> out = local_.stats();
  for (ReplicaStats& s : out) s.replica = 0;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  for (size_t d = 1; d < leaders_.size(); ++d) {
    ReplicaStats s = remote_stats_[d];
    s.alive = s.alive && now - remote_seen_[d] < std::chrono::milliseconds(kStatsTimeoutMs);
    out.push_back(s);
  }
  return out;
}

bool DataParallelRouter::healthy() const {
  if (!local_.healthy()) return false;
  for (const ReplicaStats& s : stats()) {
    if (!s.alive) return false;
  }
  return true;
}

int DataParallelRouter::max_model_len() const {
  return local_.max_model_len();
}

void DataParallelRouter::stop_accepting() {
  local_.stop_accepting();
  for (size_t d = 1; d < leaders_.size(); ++d) channel_.send(leaders_[d], one_byte(kStopAccepting));
}

void DataParallelRouter::abort_all() {
  local_.abort_all();
  for (size_t d = 1; d < leaders_.size(); ++d) channel_.send(leaders_[d], one_byte(kAbortAll));
}

void DataParallelRouter::stop(int exit_code) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
  }
  ByteWriter w;
  w.put<uint8_t>(kStop);
  w.put<int32_t>(exit_code);
  for (size_t d = 1; d < leaders_.size(); ++d) channel_.send(leaders_[d], w.bytes);
  local_.stop(exit_code);
}

int64_t DataParallelRouter::in_flight() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t n = 0;
  for (int64_t o : outstanding_) n += o;
  return n;
}

// ---------------------------------------------------------------------------------------------
// ReplicaAgent (leader of replica d > 0)

ReplicaAgent::ReplicaAgent(ServingEngine& engine, MessageChannel& channel, int gateway_rank,
                           int replica)
    : engine_(engine), channel_(channel), gateway_(gateway_rank), replica_(replica) {
  commands_ = std::thread([this] { command_loop(); });
  stats_ = std::thread([this] { stats_loop(); });
}

ReplicaAgent::~ReplicaAgent() {
  shutdown();
}

void ReplicaAgent::shutdown() {
  running_ = false;
  stats_wake_.notify_all();
  channel_.close();
  if (commands_.joinable()) commands_.join();
  if (stats_.joinable()) stats_.join();
}

void ReplicaAgent::send(const std::vector<uint8_t>& bytes) {
  channel_.send(gateway_, bytes);
}

void ReplicaAgent::stats_loop() {
  while (running_) {
    std::vector<ReplicaStats> stats = engine_.stats();
    ReplicaStats s = stats.empty() ? ReplicaStats{} : stats[0];
    s.replica = replica_;
    ByteWriter w;
    put_stats(w, s);
    send(w.bytes);
    std::unique_lock<std::mutex> lock(stats_mutex_);
    stats_wake_.wait_for(lock, kStatsPeriod, [&] { return !running_; });
  }
}

void ReplicaAgent::command_loop() {
  while (std::optional<ChannelMessage> m = channel_.recv()) {
    try {
      ALEM_CHECK(m->source == gateway_, "data-parallel command from rank " +
                                            std::to_string(m->source) + ", not the gateway");
      ALEM_CHECK(!m->bytes.empty(), "empty data-parallel command");
      ByteReader r(m->bytes.data(), m->bytes.size());
      const uint8_t kind = r.get<uint8_t>();
      if (kind == kSubmit) {
        const int64_t id = r.get<int64_t>();
        EngineRequest request;
        request.prompt = r.get_ids();
        request.params = get_params(r);
        request.cache_salt = r.get_string();
        request.on_event = [this, id](const RequestEvent& e) {
          ByteWriter w;
          put_event(w, id, e);
          send(w.bytes);
          secure_wipe(w.bytes.data(), w.bytes.size());
          if (e.finished) {
            std::lock_guard<std::mutex> lock(mutex_);
            engine_of_router_.erase(id);
          }
        };
        {
          std::lock_guard<std::mutex> lock(mutex_);
          engine_of_router_[id] = -1;  // known before any event can arrive
        }
        const SubmitResult result = engine_.submit(std::move(request));
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = engine_of_router_.find(id);
          if (result.status != SubmitStatus::kAccepted) {
            engine_of_router_.erase(id);
          } else if (it != engine_of_router_.end()) {
            it->second = result.request_id;
          }
        }
        ByteWriter w;
        w.put<uint8_t>(kAck);
        w.put(id);
        w.put<uint8_t>(static_cast<uint8_t>(result.status));
        send(w.bytes);
      } else if (kind == kCancel) {
        const int64_t id = r.get<int64_t>();
        int64_t engine_id = -1;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = engine_of_router_.find(id);
          if (it != engine_of_router_.end()) engine_id = it->second;
        }
        if (engine_id >= 0) engine_.cancel(engine_id);
      } else if (kind == kStopAccepting) {
        engine_.stop_accepting();
      } else if (kind == kAbortAll) {
        engine_.abort_all();
      } else if (kind == kStop) {
        exit_code_ = r.get<int32_t>();
        engine_.stop(exit_code_);
      } else {
        ALEM_FAIL("unknown data-parallel command kind " + std::to_string(kind));
      }
    } catch (const std::exception& e) {
      log_error("bad data-parallel command", {{"why", e.what()}});
    }
    secure_wipe(m->bytes.data(), m->bytes.size());
  }
}

}  // namespace alem
