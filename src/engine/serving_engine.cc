// The engine loop of one replica: inbox -> scheduler -> broadcast -> forward -> sample -> events
// (see the header). The step message that the leader broadcasts to the replica's other ranks is
//   u8 kind (1 step, 2 stop, 3 heartbeat: an empty plan that every rank answers) | u64 plan size |
//   plan (serialize_step_plan) | u32 new requests { i64 id | sampling params | u64 seed | u32 n | n
//   prompt ids (only when a repetition penalty needs them) } | u32 ended requests { i64 id }
// so every last-stage rank keeps the same per-request sampling state (params, seen tokens, RNG)
// as the leader and samples in step with it.
#include "engine/serving_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <unordered_map>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/constrained/token_constraint.h"
#include "engine/expert_dispatch.h"
#include "engine/replica_sampling.h"
#include "engine/wire_format.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_context.h"

namespace alem {
namespace {

enum MessageKind : uint8_t { kStepMessage = 1, kStopMessage = 2, kHeartbeatMessage = 3 };

// Heartbeat answers travel point to point on this tag (the pipeline's activations use 100).
constexpr int kHeartbeatTag = 7301;

using Clock = std::chrono::steady_clock;

// What every last-stage rank keeps per request to sample its rows.
struct SequenceSampling {
  SamplingParams params;
  TokenCounts counts;
  Rng rng{0};
  std::unique_ptr<constrained::RowConstraint> constraint;  // response_format, else null
};

// Moves each sampled row's logprobs (plan order) onto its request's token event.
void attach_logprobs(const StepPlan& plan, std::vector<std::optional<TokenLogprobs>>& logprobs,
                     std::vector<RequestEvent>& events) {
  std::unordered_map<int64_t, TokenLogprobs*> by_id;
  size_t row = 0;
  for (const StepSequence& seq : plan.sequences) {
    if (!seq.sample) continue;
    if (row < logprobs.size() && logprobs[row]) by_id[seq.request_id] = &*logprobs[row];
    ++row;
  }
  if (by_id.empty()) return;
  for (RequestEvent& event : events) {
    auto it = by_id.find(event.request_id);
    if (!event.has_token || it == by_id.end()) continue;
    event.has_logprobs = true;
    event.logprob = it->second->logprob;
    event.top_logprobs = std::move(it->second->top);
  }
}

}  // namespace

struct ServingEngine::Impl {
  Impl(ShardedTransformer& m, ParallelContext& c, const ServingOptions& o)
      : model(m), ctx(c), options(o), scheduler(make_config(m, o)), liveness(o.liveness) {
    if (replica_is_sharded()) rank_hosts = hosts(ctx);
  }

  static SchedulerConfig make_config(const ShardedTransformer& model, const ServingOptions& o) {
    SchedulerConfig config;
    config.max_num_batched_tokens = o.max_batch_tokens;
    config.max_num_seqs = o.max_num_seqs;
    config.block_size = model.block_size();
    config.num_blocks = model.num_kv_blocks();
    config.max_model_len = model.max_model_len();
    config.vocab_size = model.config().vocab_size;
    config.eos_token_ids = o.eos_token_ids;
    return config;
  }

  bool replica_is_sharded() const { return ctx.tp->size() > 1 || ctx.pp->size() > 1; }
  // Experts across replicas: the leaders of an ep group's replicas step in lockstep.
  bool lockstep() const { return ctx.ep && ctx.ep->size() > 1; }
  bool has_lm_head() const { return model.shard().has_lm_head(); }

  // Sends (leader) or receives (followers) one message to/from every rank of the replica: over
  // the pipeline group from stage 0 (reaching each stage's TP rank 0), then over each stage's
  // TP group from its rank 0.
  void replica_broadcast(std::vector<uint8_t>& bytes) {
    auto over = [&](ProcessGroup& group) {
      if (group.size() == 1) return;
      uint64_t size = bytes.size();
      group.broadcast(&size, sizeof(size), 0);
      bytes.resize(size);
      group.broadcast(bytes.data(), size, 0);
    };
    if (ctx.coords.tp == 0) over(*ctx.pp);
    over(*ctx.tp);
  }

  // Every rank, after a heartbeat message: TP members answer their stage's TP rank 0, then the
  // stage leaders answer the replica leader. A rank waiting for an answer names the peer to the
  // watchdog with a limit below the collective timeout (TP level 50%, pipeline level 70%), so
  // the rank nearest to the silent one aborts first and names it.
  void heartbeat_answers() {
    gather_answers(*ctx.tp, false);
    if (ctx.coords.tp == 0) gather_answers(*ctx.pp, true);
  }

  void gather_answers(ProcessGroup& group, bool pipeline) {
    if (group.size() == 1) return;
    uint8_t byte = 1;
    if (group.rank() != 0) {
      group.send(&byte, 1, 0, kHeartbeatTag);
      return;
    }
    const std::shared_ptr<FailureWatchdog>& watchdog = ctx.watchdog;
    for (int member = 1; member < group.size(); ++member) {
      FailureWatchdog::Watch watch;
      if (watchdog && watchdog->timeout_s() > 0) {
        const ParallelCoords c{ctx.coords.dp, pipeline ? member : ctx.coords.pp,
                               pipeline ? 0 : member};
        const int peer = ctx.layout.world_rank(c);
        const std::string host =
            peer < static_cast<int>(rank_hosts.size()) ? rank_hosts[peer] : "?";
        watch = watchdog->watch("the heartbeat answer of rank " + std::to_string(peer) + " on " +
                                    host + " (" + group.name() + " rank " + std::to_string(member) +
                                    " of replica " + std::to_string(ctx.coords.dp) +
                                    "), which did not answer",
                                watchdog->timeout_s() * (pipeline ? 0.7 : 0.5));
      }
      group.recv(&byte, 1, member, kHeartbeatTag);
    }
  }

  // Leader: one heartbeat round (sharded: broadcast + answers; alone: the loop is alive).
  void heartbeat() {
    const auto started = Clock::now();
    liveness.begin(EngineLiveness::Round::kHeartbeat);
    if (replica_is_sharded()) {
      std::vector<uint8_t> message = step_message(StepPlan{});
      message[0] = kHeartbeatMessage;
      replica_broadcast(message);
      heartbeat_answers();
    }
    const auto done = Clock::now();
    liveness.end(done);
    const double seconds = std::chrono::duration<double>(done - started).count();
    ++heartbeats;
    heartbeat_seconds += seconds;
    heartbeat_max_seconds = std::max(heartbeat_max_seconds, seconds);
  }

  bool heartbeat_due(Clock::time_point now) const {
    return options.heartbeat_interval_s > 0 &&
           std::chrono::duration<double>(now - liveness.last_progress()).count() >=
               options.heartbeat_interval_s;
  }

  // The new requests' sampling state, as the leader announces it.
  void add_sampling(int64_t id, const SamplingParams& params, uint64_t seed,
                    const std::vector<int32_t>& prompt) {
    SequenceSampling s;
    s.params = params;
    s.rng = Rng::for_request(params, seed);
    if (params.repetition_penalty != 1.0f) s.counts.add_prompt(prompt);
    if (params.constrained()) {
      s.constraint = std::make_unique<constrained::RowConstraint>(params, options.token_table,
                                                                  options.eos_token_ids);
    }
    sampling[id] = std::move(s);
  }

  // forward + sample on any rank, with the sampling state already in place.
  std::vector<int32_t> compute_step(const StepPlan& plan,
                                    std::vector<std::optional<TokenLogprobs>>* logprobs) {
    StepLogits logits = model.forward(plan, LogitsOut::kBackend);
    std::vector<RowSampler> rows;
    std::vector<SequenceSampling*> states;
    for (const StepSequence& seq : plan.sequences) {
      if (!seq.sample) continue;
      SequenceSampling* s = nullptr;
      if (has_lm_head()) {
        auto it = sampling.find(seq.request_id);
        ALEM_CHECK(it != sampling.end(),
                   "no sampling state for request " + std::to_string(seq.request_id));
        s = &it->second;
        ALEM_CHECK(rows.size() < logits.request_ids.size() &&
                       logits.request_ids[rows.size()] == seq.request_id,
                   "the step's logit rows are not in plan order");
        rows.push_back({&s->params, &s->counts, &s->rng});
        rows.back().constraint = s->constraint.get();
      } else {
        rows.push_back({});
      }
      states.push_back(s);
    }
    std::vector<int32_t> tokens =
        sample_rows_replicated(logits, rows, ctx, has_lm_head(), logprobs);
    for (size_t i = 0; i < states.size(); ++i) {
      if (states[i] && states[i]->params.has_penalties()) states[i]->counts.add_output(tokens[i]);
      if (states[i] && states[i]->constraint) states[i]->constraint->advance(tokens[i]);
    }
    secure_wipe(logits.values.data(), logits.values.size() * sizeof(float));
    return tokens;
  }

  ShardedTransformer& model;
  ParallelContext& ctx;
  ServingOptions options;
  Scheduler scheduler;  // leader only
  std::unordered_map<int64_t, SequenceSampling> sampling;

  // Leader: what HTTP threads posted.
  struct Pending {
    int64_t id;
    EngineRequest request;
  };
  mutable std::mutex inbox_mutex;
  std::condition_variable inbox_ready;
  std::deque<Pending> inbox_new;
  std::vector<int64_t> inbox_cancel;
  bool abort_all_requested = false;
  bool stop_requested = false;
  // Lockstep: this leader's stop request going into a step, and after it whether any member of
  // the ep group asked to stop (then all leave their loops after the same step).
  bool lockstep_stop = false;
  int exit_code = 0;
  bool accepting = true;
  int64_t next_id = 1;
  std::atomic<int64_t> in_flight{0};

  // Leader, engine thread only.
  std::unordered_map<int64_t, EngineEventCallback> callbacks;
  ByteWriter pending_new;  // new requests not yet announced to the followers
  uint32_t pending_new_count = 0;
  std::vector<int64_t> pending_ended;
  std::mt19937_64 seed_source{std::random_device{}()};

  // Snapshot for stats(), written by the engine thread.
  mutable std::mutex stats_mutex;
  ReplicaStats snapshot;
  std::atomic<bool> alive{false};
  std::atomic<bool> failed{false};

  // Progress of the engine thread's steps and heartbeats, for healthy().
  EngineLiveness liveness;
  mutable std::atomic<bool> reported_stall{false};
  std::vector<std::string> rank_hosts;  // of every world rank, to name a silent peer
  int64_t heartbeats = 0;               // leader, engine thread
  double heartbeat_seconds = 0;
  double heartbeat_max_seconds = 0;

  void deliver(const RequestEvent& event) {
    auto it = callbacks.find(event.request_id);
    if (it == callbacks.end()) return;
    if (event.finished) {
      EngineEventCallback callback = std::move(it->second);
      callbacks.erase(it);
      sampling.erase(event.request_id);
      pending_ended.push_back(event.request_id);
      --in_flight;
      callback(event);
    } else {
      it->second(event);
    }
  }

  void update_snapshot() {
    const BlockPool& pool = scheduler.block_pool();
    std::lock_guard<std::mutex> lock(stats_mutex);
    snapshot.replica = options.replica;
    snapshot.running = scheduler.num_running();
    snapshot.waiting = scheduler.num_waiting();
    snapshot.kv_blocks_used = pool.num_used_blocks();
    snapshot.kv_blocks_cached = pool.num_cached_blocks();
    snapshot.kv_blocks_total = pool.num_blocks();
    snapshot.steps = scheduler.stats().steps;
    snapshot.preemptions = scheduler.stats().preemptions;
    snapshot.prefix_cache_queries = scheduler.stats().prefix_cache_queries;
    snapshot.prefix_cache_hits = scheduler.stats().prefix_cache_hits;
    const MoeRoutingCounts& moe = model.moe_routing();
    snapshot.moe_tokens_per_expert.assign(moe.tokens_per_expert.begin(),
                                          moe.tokens_per_expert.end());
    snapshot.moe_ep_size = model.shard().ep_size;
  }

  // Moves the inbox into the scheduler (engine thread).
  void drain_inbox() {
    std::deque<Pending> added;
    std::vector<int64_t> cancelled;
    bool abort_everything = false;
    {
      std::lock_guard<std::mutex> lock(inbox_mutex);
      added.swap(inbox_new);
      cancelled.swap(inbox_cancel);
      std::swap(abort_everything, abort_all_requested);
    }
    for (Pending& p : added) {
      EngineRequest& r = p.request;
      const uint64_t seed = seed_source();
      try {
        scheduler.add_request(p.id, r.prompt, r.params, r.cache_salt);
      } catch (const Error& e) {
        log_warn("engine refused a request",
                 {{"engine_id", std::to_string(p.id)}, {"why", e.message()}});
        RequestEvent event;
        event.request_id = p.id;
        event.finished = true;
        event.finish_reason = FinishReason::kError;
        event.usage.prompt_tokens = static_cast<int32_t>(r.prompt.size());
        --in_flight;
        r.on_event(event);
        continue;
      }
      callbacks[p.id] = std::move(r.on_event);
      add_sampling(p.id, r.params, seed, r.prompt);
      if (replica_is_sharded()) {
        pending_new.put<int64_t>(p.id);
        put_params(pending_new, r.params);
        pending_new.put<uint64_t>(seed);
        pending_new.put_ids(r.params.repetition_penalty != 1.0f ? r.prompt
                                                                : std::vector<int32_t>{});
        ++pending_new_count;
      }
      secure_wipe(r.prompt.data(), r.prompt.size() * sizeof(int32_t));
    }
    if (abort_everything) {
      for (const auto& [id, callback] : callbacks) cancelled.push_back(id);
    }
    for (int64_t id : cancelled) {
      if (auto event = scheduler.abort(id)) deliver(*event);
    }
  }

  std::vector<uint8_t> step_message(const StepPlan& plan) {
    ByteWriter w;
    w.put<uint8_t>(kStepMessage);
    w.put_bytes(serialize_step_plan(plan));
    w.put<uint32_t>(pending_new_count);
    w.bytes.insert(w.bytes.end(), pending_new.bytes.begin(), pending_new.bytes.end());
    w.put<uint32_t>(static_cast<uint32_t>(pending_ended.size()));
    for (int64_t id : pending_ended) w.put(id);
    secure_wipe(pending_new.bytes.data(), pending_new.bytes.size());
    pending_new.bytes.clear();
    pending_new_count = 0;
    pending_ended.clear();
    return std::move(w.bytes);
  }

  // Follower: applies a step message's bookkeeping and returns its plan.
  StepPlan apply_step_message(const std::vector<uint8_t>& bytes) {
    ByteReader r(bytes.data(), bytes.size());
    const uint8_t kind = r.get<uint8_t>();
    ALEM_CHECK(kind == kStepMessage || kind == kHeartbeatMessage,
               "engine: unexpected message kind");
    auto [plan_data, plan_size] = r.get_bytes();
    StepPlan plan = deserialize_step_plan(plan_data, plan_size);
    const uint32_t added = r.get<uint32_t>();
    std::vector<std::tuple<int64_t, SamplingParams, uint64_t, std::vector<int32_t>>> news;
    for (uint32_t i = 0; i < added; ++i) {
      const int64_t id = r.get<int64_t>();
      SamplingParams params = get_params(r);
      const uint64_t seed = r.get<uint64_t>();
      news.emplace_back(id, std::move(params), seed, r.get_ids());
    }
    const uint32_t ended = r.get<uint32_t>();
    for (uint32_t i = 0; i < ended; ++i) sampling.erase(r.get<int64_t>());
    ALEM_CHECK(r.done(), "engine step message has trailing bytes");
    if (has_lm_head()) {
      for (auto& [id, params, seed, prompt] : news) add_sampling(id, params, seed, prompt);
    }
    return plan;
  }

  void fail_everything(const std::string& why) {
    failed = true;
    alive = false;
    std::deque<Pending> added;
    {
      std::lock_guard<std::mutex> lock(inbox_mutex);
      accepting = false;
      added.swap(inbox_new);
    }
    for (Pending& p : added) callbacks[p.id] = std::move(p.request.on_event);
    std::vector<int64_t> ids;
    for (const auto& [id, callback] : callbacks) ids.push_back(id);
    for (int64_t id : ids) {
      std::optional<RequestEvent> event;
      try {
        event = scheduler.fail(id);
      } catch (...) {
      }
      if (!event) {
        event = RequestEvent{};
        event->request_id = id;
        event->finished = true;
      }
      event->finish_reason = FinishReason::kError;
      deliver(*event);
    }
    log_error("engine loop failed; every request ended with an error", {{"why", why}});
  }
};

ServingEngine::ServingEngine(ShardedTransformer& model, ParallelContext& ctx,
                             const ServingOptions& options)
    : impl_(std::make_unique<Impl>(model, ctx, options)), ctx_(ctx) {
  impl_->update_snapshot();
}

ServingEngine::~ServingEngine() = default;

std::vector<SubmitResult> EngineClient::submit_all(std::vector<EngineRequest> requests) {
  std::vector<SubmitResult> results;
  for (EngineRequest& request : requests) {
    results.push_back(results.empty() || results.back().status == SubmitStatus::kAccepted
                          ? submit(std::move(request))
                          : SubmitResult{results.back().status, -1, 0});
  }
  return results;
}

SubmitResult ServingEngine::submit(EngineRequest request) {
  std::vector<EngineRequest> one;
  one.push_back(std::move(request));
  return submit_all(std::move(one)).front();
}

std::vector<SubmitResult> ServingEngine::submit_all(std::vector<EngineRequest> requests) {
  ALEM_CHECK(is_leader(), "requests are submitted on the replica leader");
  for (const EngineRequest& request : requests) {
    ALEM_CHECK(request.on_event, "a request needs an event callback");
  }
  Impl& m = *impl_;
  std::vector<SubmitResult> results(requests.size());
  {
    std::lock_guard<std::mutex> lock(m.inbox_mutex);
    auto refuse_all = [&](SubmitStatus status) {
      for (SubmitResult& result : results) result.status = status;
      return results;
    };
    if (!m.accepting || m.failed) return refuse_all(SubmitStatus::kNotAccepting);
    int64_t waiting;
    {
      std::lock_guard<std::mutex> stats_lock(m.stats_mutex);
      waiting = m.snapshot.waiting;
    }
    if (waiting + static_cast<int64_t>(m.inbox_new.size() + requests.size()) >
        m.options.max_waiting) {
      return refuse_all(SubmitStatus::kQueueFull);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      results[i].request_id = m.next_id++;
      ++m.in_flight;
      m.inbox_new.push_back({results[i].request_id, std::move(requests[i])});
    }
  }
  m.inbox_ready.notify_all();
  return results;
}

void ServingEngine::cancel(int64_t request_id) {
  {
    std::lock_guard<std::mutex> lock(impl_->inbox_mutex);
    impl_->inbox_cancel.push_back(request_id);
  }
  impl_->inbox_ready.notify_all();
}

std::vector<ReplicaStats> ServingEngine::stats() const {
  ReplicaStats s;
  {
    std::lock_guard<std::mutex> lock(impl_->stats_mutex);
    s = impl_->snapshot;
  }
  {
    std::lock_guard<std::mutex> lock(impl_->inbox_mutex);  // never both locks: submit nests them
    s.waiting += static_cast<int64_t>(impl_->inbox_new.size());
  }
  s.alive = healthy();
  return {s};
}

bool ServingEngine::healthy() const {
  const Impl& m = *impl_;
  if (!m.alive || m.failed) return false;
  const double blocked = m.ctx.watchdog ? m.ctx.watchdog->oldest_wait_s() : 0;
  const EngineLiveness::Verdict verdict = m.liveness.check(Clock::now(), blocked);
  if (!verdict.live) {
    if (!m.reported_stall.exchange(true)) {
      log_warn("engine stalled: /health and /v1/models answer 503",
               {{"replica", std::to_string(m.options.replica)}, {"why", verdict.why}});
    }
  } else if (m.reported_stall.exchange(false)) {
    log_info("engine progressing again", {{"replica", std::to_string(m.options.replica)}});
  }
  return verdict.live;
}

int ServingEngine::max_model_len() const {
  return impl_->model.max_model_len();
}

int64_t ServingEngine::in_flight() const {
  return impl_->in_flight.load();
}

void ServingEngine::stop_accepting() {
  std::lock_guard<std::mutex> lock(impl_->inbox_mutex);
  impl_->accepting = false;
}

void ServingEngine::abort_all() {
  {
    std::lock_guard<std::mutex> lock(impl_->inbox_mutex);
    impl_->abort_all_requested = true;
  }
  impl_->inbox_ready.notify_all();
}

void ServingEngine::stop(int exit_code) {
  {
    std::lock_guard<std::mutex> lock(impl_->inbox_mutex);
    impl_->stop_requested = true;
    impl_->exit_code = exit_code;
    impl_->accepting = false;
  }
  impl_->inbox_ready.notify_all();
}

bool ServingEngine::run_step() {
  Impl& m = *impl_;
  m.drain_inbox();
  StepPlan plan = m.scheduler.schedule();
  // Released KV blocks are zeroed on every rank, in a step of their own when nothing runs.
  plan.wipe_blocks = m.scheduler.take_blocks_to_wipe();
  if (m.lockstep()) {
    // Every leader of the ep group learns whether any has tokens; all then run the step, the
    // idle ones with an empty plan (their MoE layers serve the others' rows).
    const bool any = any_member_has_work(m.ctx.ep.get(), !plan.sequences.empty(), &m.lockstep_stop);
    if (!any) {
      if (!plan.wipe_blocks.empty()) m.model.wipe_kv_blocks(plan.wipe_blocks);
      m.update_snapshot();
      return false;
    }
    if (plan.sequences.empty()) {
      m.model.forward(plan);  // wipes the released blocks too
      m.update_snapshot();
      return true;  // the group ran a step: no idle wait before the next
    }
  }
  if (plan.sequences.empty() && plan.wipe_blocks.empty()) {
    m.update_snapshot();
    return false;
  }
  if (!plan.sequences.empty()) m.liveness.begin(EngineLiveness::Round::kStep);
  if (m.replica_is_sharded()) {
    std::vector<uint8_t> message = m.step_message(plan);
    m.replica_broadcast(message);
  }
  if (plan.sequences.empty()) {
    m.model.wipe_kv_blocks(plan.wipe_blocks);
    m.update_snapshot();
    return false;
  }
  std::vector<std::optional<TokenLogprobs>> logprobs;
  const std::vector<int32_t> tokens = m.compute_step(plan, &logprobs);
  std::vector<RequestEvent> events = m.scheduler.on_step_done(plan, tokens);
  attach_logprobs(plan, logprobs, events);
  secure_wipe(plan.tokens.data(), plan.tokens.size() * sizeof(int32_t));
  m.liveness.end(Clock::now());
  m.update_snapshot();
  for (const RequestEvent& event : events) m.deliver(event);
  return true;
}

void ServingEngine::run_leader_loop() {
  ALEM_CHECK(is_leader(), "run_leader_loop runs on the replica leader");
  Impl& m = *impl_;
  m.liveness.start(Clock::now());
  m.alive = true;
  try {
    while (true) {
      {
        std::lock_guard<std::mutex> lock(m.inbox_mutex);
        if (m.stop_requested && !m.lockstep()) break;
        m.lockstep_stop = m.stop_requested;
      }
      const bool ran = run_step();
      if (m.lockstep() && m.lockstep_stop) break;  // agreed by the ep group in run_step
      if (ran) continue;
      if (m.heartbeat_due(Clock::now())) m.heartbeat();
      std::unique_lock<std::mutex> lock(m.inbox_mutex);
      m.inbox_ready.wait_for(lock, std::chrono::milliseconds(50), [&] {
        return m.stop_requested || m.abort_all_requested || !m.inbox_new.empty() ||
               !m.inbox_cancel.empty();
      });
    }
    // Whatever is left ends now; the followers hear that the loop is over.
    abort_all();
    m.drain_inbox();
    m.alive = false;
    m.liveness.stop();
    if (m.heartbeats > 0) {
      log_info("engine heartbeats",
               {{"replica", std::to_string(m.options.replica)},
                {"count", std::to_string(m.heartbeats)},
                {"mean_ms", log_number(1e3 * m.heartbeat_seconds / m.heartbeats)},
                {"max_ms", log_number(1e3 * m.heartbeat_max_seconds)}});
    }
    if (m.replica_is_sharded()) {
      int exit_code;
      {
        std::lock_guard<std::mutex> lock(m.inbox_mutex);
        exit_code = m.exit_code;
      }
      std::vector<uint8_t> message{kStopMessage, static_cast<uint8_t>(exit_code)};
      m.replica_broadcast(message);
    }
    m.update_snapshot();
  } catch (const std::exception& e) {
    m.liveness.stop();
    m.fail_everything(e.what());
    throw;
  }
}

int ServingEngine::run_follower_loop() {
  ALEM_CHECK(!is_leader(), "run_follower_loop runs on the replica's other ranks");
  Impl& m = *impl_;
  while (true) {
    std::vector<uint8_t> message;
    m.replica_broadcast(message);
    ALEM_CHECK(!message.empty(), "engine: empty step message");
    if (message[0] == kStopMessage) return message.size() > 1 ? message[1] : 0;
    const uint8_t kind = message[0];
    StepPlan plan = m.apply_step_message(message);
    secure_wipe(message.data(), message.size());
    if (kind == kHeartbeatMessage) {
      m.heartbeat_answers();
      continue;
    }
    if (plan.sequences.empty()) {  // a wipe-only step
      m.model.wipe_kv_blocks(plan.wipe_blocks);
      continue;
    }
    std::vector<std::optional<TokenLogprobs>> logprobs;  // followers take part in the gather
    m.compute_step(plan, &logprobs);
    secure_wipe(plan.tokens.data(), plan.tokens.size() * sizeof(int32_t));
  }
}

}  // namespace alem
