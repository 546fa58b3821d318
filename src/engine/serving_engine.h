// ServingEngine: the engine loop that serves many requests at once on one replica (design habit
// 8: the HTTP side only posts tasks to a queue; one engine loop runs them; results go back by
// id). HTTP threads call submit()/cancel(), which only touch a mutex-protected inbox. One thread
// on the replica leader calls run_step() over and over: it moves the inbox into the scheduler,
// asks it for a StepPlan (token budget, paged KV blocks, prefix cache), broadcasts the plan to
// the replica's other ranks, runs the forward pass, samples every sampled row with the
// vocab-parallel candidate merge, hands the tokens back to the scheduler and delivers the
// resulting events (tokens, finish + reason + usage) to each request's callback.
//
// Every rank of the replica must run forward() with the same plan, so followers (the other TP
// and PP ranks) call run_follower_loop(): receive a step message, forward, sample-merge, repeat,
// until the leader's stop message. Each step message carries, besides the plan, what followers
// need to sample in step with the leader: the sampling state of newly admitted requests and the
// ids of requests that ended.
//
// Heartbeats: when idle, the leader sends a heartbeat about every second: a step message of kind
// "heartbeat" with an empty plan, broadcast like any step, which every rank answers (TP members
// to their stage's TP rank 0, stage leaders to the replica leader, one byte each). So every rank
// of the replica takes part at least once a second, health reflects a recent completed round
// (engine/engine_liveness.h), and the collective-timeout watchdog (mpi/failure_watchdog.h) can
// stay armed: a rank that does not answer is named in the abort message. Heartbeats do not touch
// the scheduler, the sampling state or the KV cache.
//
// Experts across replicas (ParallelLayout::experts_across_replicas): the leaders of the replicas
// that share the experts step in lockstep. At each step they agree with one small all-reduce over
// the ep group whether any has tokens (and whether any was asked to stop); if one has, all run
// forward(), the idle ones with an empty plan, so every MoE layer's all_to_all has every member.
// A stop request reaches all of them after the same step.
//
// Routing: the gateway (HTTP) talks to an EngineClient. ServingEngine is the EngineClient of a
// one-replica job whose leader is the gateway itself (dp = 1, world rank 0). With dp > 1, a
// router implementing EngineClient on the gateway would forward submit/cancel to each replica
// leader's ServingEngine over MPI and relay its events back (see docs/serving.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine_liveness.h"
#include "engine/sampling_params.h"
#include "engine/scheduler.h"
#include "engine/transformer.h"
#include "mpi/parallel_context.h"

namespace alem {

namespace constrained {
struct TokenTable;
}

// Progress of one request is delivered as the scheduler's RequestEvent (engine/scheduler.h):
// one per generated token (has_token), the last one with finished + finish_reason + usage. An
// abort or an engine failure gives a finished event without a token. Callbacks run on the
// engine thread, in order per request; they must be quick and must not call run_step (submit
// and cancel are fine).
using EngineEventCallback = std::function<void(const RequestEvent&)>;

struct EngineRequest {
  std::vector<int32_t> prompt;  // token ids, not empty, shorter than max_model_len
  SamplingParams params;        // max_tokens already fitted to the context
  std::string cache_salt;       // prefix-cache tenant: blocks are shared only within a salt
  EngineEventCallback on_event;
};

enum class SubmitStatus { kAccepted, kQueueFull, kNotAccepting };

struct SubmitResult {
  SubmitStatus status = SubmitStatus::kAccepted;
  int64_t request_id = -1;  // when accepted
  int replica = 0;          // the data-parallel replica that took it (engine/dp_router.h)
};

// A replica's state for /metrics and /health.
struct ReplicaStats {
  int replica = 0;
  int64_t running = 0;
  int64_t waiting = 0;  // in the scheduler's queue and the inbox
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_cached = 0;
  int64_t kv_blocks_total = 0;
  int64_t steps = 0;
  // Counters since start (scheduler's SchedulerStats), for /metrics.
  int64_t preemptions = 0;
  int64_t prefix_cache_queries = 0;  // tokens looked up in the prefix cache
  int64_t prefix_cache_hits = 0;     // of those, found there
  // Mixture of experts (empty for dense models): token-to-expert assignments per expert since
  // start, over the sparse layers of the leader's pipeline stage, and the expert-parallel size
  // (experts [i*E/ep, (i+1)*E/ep) are held by ep slice i).
  std::vector<int64_t> moe_tokens_per_expert;
  int32_t moe_ep_size = 1;
  bool alive = false;  // the engine loop runs and has not failed
};

// What the gateway needs from the engine side, whatever the number of replicas.
class EngineClient {
 public:
  virtual ~EngineClient() = default;
  // Thread-safe. kQueueFull when the waiting queue is at its limit (answer 429), kNotAccepting
  // while draining or stopped (answer 503). Events for the id follow through on_event.
  virtual SubmitResult submit(EngineRequest request) = 0;
  // Thread-safe. The requests of one API call (its prompts and n choices), one result each, in
  // order; after one is refused the rest are not submitted and share its status. An engine that
  // can admits them all in the same step, so a call's sequences batch together the same way
  // every time (their results depend on the batch's size through the kernels' summation order,
  // which a seeded choice's reproducibility needs). This default submits them one by one.
  virtual std::vector<SubmitResult> submit_all(std::vector<EngineRequest> requests);
  // Thread-safe. Ends the request (event: finished, kAbort) and frees its KV blocks at the next
  // step. Unknown or finished ids are ignored.
  virtual void cancel(int64_t request_id) = 0;
  virtual std::vector<ReplicaStats> stats() const = 0;
  // True while every replica's engine loop runs (all ranks loaded), has not failed, and has
  // recently completed a step or heartbeat with all its ranks (engine/engine_liveness.h).
  virtual bool healthy() const = 0;
  virtual int max_model_len() const = 0;
};

struct ServingOptions {
  int max_num_seqs = 64;        // sequences running at once
  int max_batch_tokens = 2048;  // tokens per step (prefill chunks + decodes)
  int max_waiting = 256;        // sequences queued beyond the running ones; more -> kQueueFull
  std::vector<int32_t> eos_token_ids;
  int replica = 0;  // label for stats
  // Every token's bytes, for requests with a response_format (engine/constrained/).
  std::shared_ptr<const constrained::TokenTable> token_table;
  // Idle leader: a heartbeat round at least this often (0: none; then an armed collective
  // timeout would fire on idle followers, so `alem serve` refuses that combination).
  double heartbeat_interval_s = 1.0;
  LivenessLimits liveness;  // when healthy() turns false (engine/engine_liveness.h)
};

// What the gateway's control loop (drain, abort, stop) needs, with one replica (ServingEngine)
// or several (DataParallelRouter, engine/dp_router.h).
class EngineControl {
 public:
  virtual ~EngineControl() = default;
  virtual void stop_accepting() = 0;
  virtual void abort_all() = 0;
  virtual void stop(int exit_code) = 0;
  virtual int64_t in_flight() const = 0;
};

class ServingEngine : public EngineClient, public EngineControl {
 public:
  // Every rank of the replica constructs one, with the same options. The model must outlive it.
  ServingEngine(ShardedTransformer& model, ParallelContext& ctx, const ServingOptions& options);
  ~ServingEngine() override;

  // EngineClient (leader only; followers never receive requests).
  SubmitResult submit(EngineRequest request) override;
  // All of them or none, through one hold of the inbox: the next step admits them together.
  std::vector<SubmitResult> submit_all(std::vector<EngineRequest> requests) override;
  void cancel(int64_t request_id) override;
  std::vector<ReplicaStats> stats() const override;
  bool healthy() const override;
  int max_model_len() const override;

  // Leader: one engine step. Returns false when there was nothing to run (in lockstep: nothing
  // for any replica of the ep group; collective over it).
  bool run_step();
  // Leader: runs steps until stop() (waiting for work when idle), ends what is left (kAbort),
  // then tells the followers to stop. On an exception (forward or sampling failed) every request
  // gets a kError event, healthy() turns false, and the exception propagates.
  void run_leader_loop();
  // Followers: step messages from the leader until its stop message. Returns the exit code the
  // leader passed to stop(), so every rank of the replica ends the same way.
  int run_follower_loop();

  // Leader, thread-safe: stop taking requests (submit -> kNotAccepting); running ones go on.
  void stop_accepting() override;
  // Leader, thread-safe: end every request at the next step (kAbort).
  void abort_all() override;
  // Leader, thread-safe: makes run_leader_loop return after its current step; the followers'
  // run_follower_loop returns `exit_code`.
  void stop(int exit_code = 0) override;
  // Requests submitted and not yet finished (leader).
  int64_t in_flight() const override;

  bool is_leader() const { return ctx_.is_replica_leader(); }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ParallelContext& ctx_;
};

}  // namespace alem
