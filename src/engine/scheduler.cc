// Implements the token-budget scheduler of scheduler.h: the three passes of schedule(), the
// preemption of the most recently admitted request when KV blocks run out, and the stop rules
// applied in on_step_done(). Error messages name positions and counts, never token ids or text.
#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"

namespace alem {
namespace {

bool contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

void SchedulerConfig::validate() const {
  ALEM_CHECK(max_num_batched_tokens > 0, "max_num_batched_tokens must be positive, got " +
                                             std::to_string(max_num_batched_tokens));
  ALEM_CHECK(max_num_seqs > 0,
             "max_num_seqs must be positive, got " + std::to_string(max_num_seqs));
  ALEM_CHECK(max_num_batched_tokens >= max_num_seqs,
             "max_num_batched_tokens (" + std::to_string(max_num_batched_tokens) +
                 ") must be at least max_num_seqs (" + std::to_string(max_num_seqs) +
                 ") so every running request can decode each step");
  ALEM_CHECK(block_size > 0, "block_size must be positive, got " + std::to_string(block_size));
  ALEM_CHECK(max_model_len > 0,
             "max_model_len must be positive, got " + std::to_string(max_model_len));
  ALEM_CHECK(vocab_size >= 0, "vocab_size must not be negative");
  const int64_t blocks_for_one = (int64_t(max_model_len) + block_size - 1) / block_size;
  ALEM_CHECK(
      num_blocks >= blocks_for_one,
      "the KV cache (" + std::to_string(num_blocks) + " blocks of " + std::to_string(block_size) +
          " tokens) cannot hold one sequence of max_model_len " + std::to_string(max_model_len) +
          " tokens; lower max_model_len or give KV more memory");
}

Scheduler::Scheduler(SchedulerConfig config)
    : config_((config.validate(), std::move(config))),
      pool_(config_.num_blocks, config_.block_size) {}

// ---- requests in --------------------------------------------------------------------------

void Scheduler::add_request(int64_t request_id, std::vector<int32_t> prompt_tokens,
                            SamplingParams params, std::string cache_salt) {
  ALEM_CHECK(requests_.count(request_id) == 0,
             "request id " + std::to_string(request_id) + " is already in the scheduler");
  ALEM_CHECK(!prompt_tokens.empty(), "the prompt is empty: at least one token is needed");
  ALEM_CHECK(int64_t(prompt_tokens.size()) <= config_.max_model_len,
             "the prompt has " + std::to_string(prompt_tokens.size()) +
                 " tokens, more than the model's context limit max_model_len = " +
                 std::to_string(config_.max_model_len));
  for (size_t i = 0; i < prompt_tokens.size(); ++i) {
    ALEM_CHECK(
        prompt_tokens[i] >= 0 && (config_.vocab_size == 0 || prompt_tokens[i] < config_.vocab_size),
        "prompt token at position " + std::to_string(i) + " is outside the vocabulary [0, " +
            std::to_string(config_.vocab_size) + ")");
  }
  params.validate();

  auto request = std::make_unique<RequestState>();
  request->id = request_id;
  request->sampling_seed = params.seed.value_or(seed_source_());
  request->params = std::move(params);
  request->cache_salt = std::move(cache_salt);
  request->num_prompt_tokens = static_cast<int32_t>(prompt_tokens.size());
  request->tokens = std::move(prompt_tokens);
  request->arrival_index = next_arrival_++;
  request->added_time = std::chrono::steady_clock::now();
  stats_.prompt_tokens += request->num_prompt_tokens;
  waiting_.push_back(request.get());
  requests_.emplace(request_id, std::move(request));
}

const RequestState* Scheduler::find(int64_t request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : it->second.get();
}

// ---- one step -----------------------------------------------------------------------------

void Scheduler::preempt(RequestState& victim) {
  pool_.free(victim.id);
  victim.num_computed_tokens = 0;
  victim.status = RequestStatus::kPreempted;
  ++victim.num_preemptions;
  ++stats_.preemptions;
  log_debug("sequence preempted", {{"engine_id", std::to_string(victim.id)},
                                   {"free_blocks", std::to_string(pool_.num_free_blocks())}});
  running_.erase(std::find(running_.begin(), running_.end(), &victim));
  waiting_.push_front(&victim);
}

// Makes the request's blocks cover `num_tokens`, preempting the most recently admitted running
// requests (un-scheduling them if this step had picked them already) until the blocks fit.
// Returns false when the request had to preempt itself.
bool Scheduler::try_grow(RequestState& request, int32_t num_tokens,
                         std::vector<Scheduled>& scheduled, int32_t& budget, bool& preempted_any) {
  while (!pool_.grow(request.id, num_tokens)) {
    RequestState* victim = running_.back();
    auto picked = std::find_if(scheduled.begin(), scheduled.end(),
                               [&](const Scheduled& s) { return s.request == victim; });
    if (picked != scheduled.end()) {
      budget += picked->num_tokens;
      scheduled.erase(picked);
    }
    preempt(*victim);
    preempted_any = true;
    if (victim == &request) return false;
  }
  return true;
}

bool Scheduler::try_admit(RequestState& request, int32_t& budget,
                          std::vector<Scheduled>& scheduled) {
  const int32_t cached = pool_.cached_prefix_tokens(request.tokens, request.cache_salt);
  const int32_t num_new = std::min(request.num_tokens() - cached, budget);
  const std::optional<int32_t> got =
      pool_.allocate_for(request.id, request.tokens, num_new, request.cache_salt);
  if (!got) return false;
  ALEM_CHECK(*got == cached, "block pool prefix lookup changed between query and allocation");
  request.num_computed_tokens = cached;
  stats_.prefix_cache_queries += request.num_tokens();
  stats_.prefix_cache_hits += cached;
  if (!request.admitted_time) request.admitted_time = std::chrono::steady_clock::now();
  if (request.num_cached_prompt_tokens < 0) {  // usage counts the first admission only
    request.num_cached_prompt_tokens = std::min(cached, request.num_prompt_tokens);
    stats_.cached_prompt_tokens += request.num_cached_prompt_tokens;
  }
  request.status = RequestStatus::kRunning;
  running_.push_back(&request);
  scheduled.push_back({&request, num_new});
  budget -= num_new;
  ++stats_.admitted;
  return true;
}

StepPlan Scheduler::schedule() {
  ALEM_CHECK(!step_in_flight_, "schedule() called before on_step_done() of the previous step");
  int32_t budget = config_.max_num_batched_tokens;
  std::vector<Scheduled> scheduled;
  bool preempted_any = false;

  // Passes 1 and 2 over running requests: decodes (one token left to compute), then chunks.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
      RequestState& r = *running_[i];
      const int32_t remaining = r.num_tokens() - r.num_computed_tokens;
      ALEM_CHECK(remaining > 0, "running request has no token left to compute");
      if ((pass == 0) != (remaining == 1)) continue;
      const int32_t num_new = std::min(remaining, budget);
      if (!try_grow(r, r.num_computed_tokens + num_new, scheduled, budget, preempted_any)) {
        --i;  // r left running_; the next request moved into slot i
        continue;
      }
      scheduled.push_back({&r, num_new});
      budget -= num_new;
    }
  }

  // Pass 3: admit waiting requests, first come first served. Not in a step that had to
  // preempt: the freed blocks are for the running requests.
  if (!preempted_any) {
    while (!waiting_.empty() && budget > 0 &&
           static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
      if (!try_admit(*waiting_.front(), budget, scheduled)) break;
      waiting_.pop_front();
    }
  }

  StepPlan plan;
  plan.step_id = next_step_id_++;
  for (const Scheduled& s : scheduled) {
    const RequestState& r = *s.request;
    StepSequence seq;
    seq.request_id = r.id;
    seq.num_tokens = s.num_tokens;
    seq.start_pos = r.num_computed_tokens;
    seq.sample = seq.start_pos + seq.num_tokens == r.num_tokens();
    const std::vector<int32_t>& table = pool_.block_table(r.id);
    const size_t blocks =
        static_cast<size_t>(pool_.blocks_for_tokens(seq.start_pos + seq.num_tokens));
    ALEM_CHECK(table.size() >= blocks, "block table does not cover the scheduled tokens");
    seq.block_table.assign(table.begin(), table.begin() + blocks);
    plan.tokens.insert(plan.tokens.end(), r.tokens.begin() + seq.start_pos,
                       r.tokens.begin() + seq.start_pos + seq.num_tokens);
    plan.sequences.push_back(std::move(seq));
  }
  step_in_flight_ = !plan.sequences.empty();
  stats_.steps += step_in_flight_;
  return plan;
}

// ---- results in ---------------------------------------------------------------------------

FinishReason Scheduler::stop_reason(const RequestState& r, int32_t token) const {
  if (!r.params.ignore_eos && contains(config_.eos_token_ids, token)) return FinishReason::kStop;
  if (contains(r.params.stop_token_ids, token)) return FinishReason::kStop;
  if (r.num_output_tokens() >= r.params.max_tokens) return FinishReason::kLength;
  if (r.num_tokens() >= config_.max_model_len) return FinishReason::kLength;
  return FinishReason::kNone;
}

void Scheduler::release(RequestState& r, FinishReason reason) {
  pool_.free(r.id);
  if (auto it = std::find(running_.begin(), running_.end(), &r); it != running_.end()) {
    running_.erase(it);
  }
  if (auto it = std::find(waiting_.begin(), waiting_.end(), &r); it != waiting_.end()) {
    waiting_.erase(it);
  }
  r.status = RequestStatus::kFinished;
  r.finish_reason = reason;
  requests_.erase(r.id);  // r is gone after this line
}

std::vector<RequestEvent> Scheduler::on_step_done(const StepPlan& plan,
                                                  const std::vector<int32_t>& sampled_tokens,
                                                  const std::vector<float>* logprobs) {
  std::vector<RequestEvent> events;
  if (plan.sequences.empty()) return events;
  ALEM_CHECK(step_in_flight_ && plan.step_id == next_step_id_ - 1,
             "on_step_done() for step " + std::to_string(plan.step_id) +
                 ", which is not the step in flight");
  const auto num_sampled = std::count_if(plan.sequences.begin(), plan.sequences.end(),
                                         [](const StepSequence& s) { return s.sample; });
  ALEM_CHECK(int64_t(sampled_tokens.size()) == num_sampled,
             "step " + std::to_string(plan.step_id) + " sampled " + std::to_string(num_sampled) +
                 " sequences but " + std::to_string(sampled_tokens.size()) + " tokens came back");
  ALEM_CHECK(!logprobs || logprobs->size() == sampled_tokens.size(),
             "logprobs and sampled tokens differ in count");
  step_in_flight_ = false;

  size_t k = 0;
  for (const StepSequence& seq : plan.sequences) {
    const size_t sample_index = seq.sample ? k++ : 0;
    auto it = requests_.find(seq.request_id);
    if (it == requests_.end()) continue;  // aborted while the step ran
    RequestState& r = *it->second;
    ALEM_CHECK(r.status == RequestStatus::kRunning && r.num_computed_tokens == seq.start_pos,
               "step result does not match the scheduler's state of a request");
    r.num_computed_tokens += seq.num_tokens;
    if (seq.sample) {
      const int32_t token = sampled_tokens[sample_index];
      ALEM_CHECK(token >= 0 && (config_.vocab_size == 0 || token < config_.vocab_size),
                 "the engine sampled a token id outside the vocabulary");
      r.tokens.push_back(token);
      if (!r.first_token_time) r.first_token_time = std::chrono::steady_clock::now();
    }
    pool_.commit(r.id, r.tokens, r.num_computed_tokens);
    if (!seq.sample) continue;

    RequestEvent event;
    event.request_id = r.id;
    event.has_token = true;
    event.token_id = r.tokens.back();
    event.logprob = logprobs ? (*logprobs)[sample_index] : 0.f;
    event.finish_reason = stop_reason(r, event.token_id);
    event.finished = event.finish_reason != FinishReason::kNone;
    event.usage = r.usage();
    if (event.finished) {
      event.timings = r.timings(std::chrono::steady_clock::now());
      release(r, event.finish_reason);
    }
    events.push_back(event);
  }
  return events;
}

std::optional<RequestEvent> Scheduler::finish_early(int64_t request_id, FinishReason reason) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return std::nullopt;
  RequestState& r = *it->second;
  RequestEvent event;
  event.request_id = request_id;
  event.finished = true;
  event.finish_reason = reason;
  event.usage = r.usage();
  event.timings = r.timings(std::chrono::steady_clock::now());
  release(r, reason);
  return event;
}

std::optional<RequestEvent> Scheduler::abort(int64_t request_id) {
  return finish_early(request_id, FinishReason::kAbort);
}

std::optional<RequestEvent> Scheduler::fail(int64_t request_id) {
  return finish_early(request_id, FinishReason::kError);
}

}  // namespace alem
