// Scheduler: decides, step by step, which tokens of which requests one replica computes, as a
// token budget (vLLM v1), not as "prefill phase vs decode phase". Each step it fills the budget
// in this order:
//   1. every running request that is decoding gets its one token (decodes are never starved),
//   2. running requests still prefilling (or recomputing after preemption) get their next chunk,
//   3. waiting requests are admitted first come, first served while the budget, max_num_seqs
//      and free KV blocks allow; a long prompt is prefilled in chunks over several steps.
// When a running request needs a KV block and none is free, the most recently admitted running
// request is preempted: its blocks are freed, it goes back to the front of the queue and later
// recomputes prompt + generated tokens (its full blocks usually still hit the prefix cache).
// Nothing is ever dropped. The result of a step is a StepPlan; after the engine has run it,
// on_step_done() appends the sampled tokens, applies the stop rules and returns events for the
// API layer. One step is in flight at a time. Not thread-safe: the engine loop owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/block_pool.h"
#include "engine/request_state.h"
#include "engine/sampling_params.h"
#include "engine/step_plan.h"

namespace alem {

struct SchedulerConfig {
  int32_t max_num_batched_tokens = 512;  // token budget per step
  int32_t max_num_seqs = 64;             // most requests running at once
  int32_t block_size = 16;               // tokens per KV block
  int32_t num_blocks = 0;                // KV blocks in the pool (from the memory left for KV)
  int32_t max_model_len = 0;             // context limit: prompt + generated tokens
  int32_t vocab_size = 0;                // prompt token ids must be below it (0: not checked)
  std::vector<int32_t> eos_token_ids;    // end-of-sequence ids of the model

  // Throws alem::Error for a configuration that cannot make progress: non-positive sizes, a
  // budget below max_num_seqs (decodes must always fit), or a pool too small for one
  // max_model_len sequence.
  void validate() const;
};

// What the API layer hears about a request after a step (or an abort).
struct RequestEvent {
  int64_t request_id = 0;
  bool has_token = false;  // a new token was generated (also when it is the one that stops)
  int32_t token_id = 0;
  float logprob = 0.f;  // of token_id, when the engine passed logprobs
  // The request asked for logprobs (SamplingParams::logprobs >= 0): `logprob` is token_id's raw
  // logprob and `top_logprobs` the most likely tokens', best first.
  bool has_logprobs = false;
  std::vector<TokenLogprob> top_logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  RequestUsage usage;      // as of this event; final when finished
  RequestTimings timings;  // finished events only: queue, prefill and decode time
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t preemptions = 0;
  int64_t admitted = 0;              // admissions, re-admissions after preemption included
  int64_t prompt_tokens = 0;         // over all added requests
  int64_t cached_prompt_tokens = 0;  // of those, served from the prefix cache (first admission)
  // Prefix-cache lookups in tokens, over every admission (re-admissions after preemption too):
  // tokens looked up, and of those found in the cache (vLLM's prefix_cache_queries/hits).
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);

  // Queues a request. Throws alem::Error (and queues nothing) for a duplicate id, an empty
  // prompt, a prompt longer than max_model_len, token ids outside the vocabulary, or sampling
  // params that fail validate().
  void add_request(int64_t request_id, std::vector<int32_t> prompt_tokens, SamplingParams params,
                   std::string cache_salt = {});

  // The next step. Empty (no sequences) when there is nothing to run. Throws if the previous
  // plan has not been passed to on_step_done yet.
  StepPlan schedule();

  // Applies the results of `plan` (the last one schedule() returned): `sampled_tokens` holds one
  // token per sequence with sample == true, in plan order; `logprobs`, when given, the same
  // count of log-probabilities. Returns token and finish events, in plan order. Finished
  // requests' blocks are released (their full blocks stay in the prefix cache).
  std::vector<RequestEvent> on_step_done(const StepPlan& plan,
                                         const std::vector<int32_t>& sampled_tokens,
                                         const std::vector<float>* logprobs = nullptr);

  // Ends a request now (client disconnect), wherever it is; its blocks are freed at once. If it
  // is in the plan in flight, its result is ignored. Returns the finish event, or nullopt for
  // an unknown or already finished id.
  std::optional<RequestEvent> abort(int64_t request_id);
  // The same with finish reason "error", for a request the engine could not serve.
  std::optional<RequestEvent> fail(int64_t request_id);

  bool has_unfinished_requests() const { return !requests_.empty(); }
  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  // The live request, or nullptr once it has finished (finished requests are forgotten after
  // their finish event).
  const RequestState* find(int64_t request_id) const;
  const BlockPool& block_pool() const { return pool_; }
  // The KV blocks released since the last call, to be zeroed (BlockPool::take_blocks_to_wipe).
  std::vector<int32_t> take_blocks_to_wipe() { return pool_.take_blocks_to_wipe(); }
  const SchedulerConfig& config() const { return config_; }
  const SchedulerStats& stats() const { return stats_; }

 private:
  struct Scheduled {
    RequestState* request;
    int32_t num_tokens;
  };

  bool try_grow(RequestState& request, int32_t num_tokens, std::vector<Scheduled>& scheduled,
                int32_t& budget, bool& preempted_any);
  void preempt(RequestState& victim);
  bool try_admit(RequestState& request, int32_t& budget, std::vector<Scheduled>& scheduled);
  std::optional<RequestEvent> finish_early(int64_t request_id, FinishReason reason);
  void release(RequestState& request, FinishReason reason);
  FinishReason stop_reason(const RequestState& request, int32_t token) const;

  SchedulerConfig config_;
  BlockPool pool_;
  std::unordered_map<int64_t, std::unique_ptr<RequestState>> requests_;  // unfinished ones
  std::deque<RequestState*> waiting_;                    // FCFS; preempted requests go to the front
  std::vector<RequestState*> running_;                   // in admission order, oldest first
  std::mt19937_64 seed_source_{std::random_device{}()};  // seeds for requests without one
  int64_t next_arrival_ = 0;
  int64_t next_step_id_ = 0;
  bool step_in_flight_ = false;
  SchedulerStats stats_;
};

}  // namespace alem
