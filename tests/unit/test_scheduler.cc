// Tests for the Scheduler, driven by a simulated engine. The fake engine "samples" a token that
// depends only on (request id, position), so every request's expected completion and finish
// reason can be computed here independently of how it was scheduled, preempted or recomputed.
// The engine also keeps a shadow of every KV slot and checks, each step, that a sequence's
// blocks hold exactly its own tokens before the step and that no step writes into a block
// another request holds. Invariants (budget, max_num_seqs, block coverage, no starved decodes)
// are checked after every schedule().
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "engine/scheduler.h"

namespace alem {
namespace {

constexpr int32_t kVocab = 50;
constexpr int32_t kEos = 0;

int32_t fake_token(int64_t request_id, int32_t position) {
  uint64_t z = uint64_t(request_id) * 1000003u + uint64_t(position) + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return int32_t((z ^ (z >> 31)) % kVocab);
}

struct Expected {
  std::vector<int32_t> output;
  FinishReason reason = FinishReason::kNone;
};

// The completion a request must end with, whatever the scheduling.
Expected expected_completion(int64_t id, int32_t prompt_len, const SamplingParams& p,
                             int32_t max_model_len) {
  Expected e;
  for (;;) {
    const int32_t t = fake_token(id, prompt_len + int32_t(e.output.size()));
    e.output.push_back(t);
    const bool is_stop = std::count(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) > 0;
    if ((t == kEos && !p.ignore_eos) || is_stop) {
      e.reason = FinishReason::kStop;
      return e;
    }
    if (int32_t(e.output.size()) == p.max_tokens ||
        prompt_len + int32_t(e.output.size()) >= max_model_len) {
      e.reason = FinishReason::kLength;
      return e;
    }
  }
}

// What the test knows about a request, from its own bookkeeping and the events.
struct Tracked {
  std::vector<int32_t> prompt;
  SamplingParams params;
  std::vector<int32_t> output;
  bool finished = false;
  bool aborted = false;
  FinishReason reason = FinishReason::kNone;
  RequestUsage usage;
  std::vector<int32_t> known() const {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), output.begin(), output.end());
    return all;
  }
};

class Harness {
 public:
  explicit Harness(SchedulerConfig config)
      : sched(config), config(config), shadow(size_t(config.num_blocks) * config.block_size, -1) {}

  void add(int64_t id, std::vector<int32_t> prompt, SamplingParams params, std::string salt = {}) {
    sched.add_request(id, prompt, params, salt);
    Tracked t;
    t.prompt = std::move(prompt);
    t.params = params;
    tracked[id] = std::move(t);
  }

  // One schedule(); checks the plan's invariants and returns it.
  StepPlan schedule() {
    std::set<int64_t> decoding_before;
    for (const auto& [id, t] : tracked) {
      const RequestState* r = sched.find(id);
      if (r && r->status == RequestStatus::kRunning &&
          r->num_tokens() - r->num_computed_tokens == 1)
        decoding_before.insert(id);
    }
    const int64_t preemptions_before = sched.stats().preemptions;
    StepPlan plan = sched.schedule();
    const bool preempted = sched.stats().preemptions > preemptions_before;
    preempted_steps += preempted;

    EXPECT_LE(plan.total_tokens(), config.max_num_batched_tokens);
    EXPECT_LE(int32_t(plan.sequences.size()), config.max_num_seqs);
    int32_t sum = 0;
    std::set<int64_t> ids;
    std::map<int32_t, int> block_users;
    for (const StepSequence& s : plan.sequences) {
      EXPECT_TRUE(ids.insert(s.request_id).second) << "request twice in one step";
      EXPECT_GE(s.num_tokens, 1);
      EXPECT_GE(int64_t(s.block_table.size()) * config.block_size, s.start_pos + s.num_tokens)
          << "block table does not cover the step";
      const Tracked& t = tracked.at(s.request_id);
      EXPECT_EQ(s.sample, s.start_pos + s.num_tokens == int32_t(t.known().size()));
      EXPECT_LE(s.start_pos + s.num_tokens, config.max_model_len);
      sum += s.num_tokens;
      for (int32_t b : s.block_table) ++block_users[b];
    }
    EXPECT_EQ(sum, plan.total_tokens());
    // A block in two sequences of the step must be a full, cached block neither of them writes.
    for (const StepSequence& s : plan.sequences) {
      for (size_t i = 0; i < s.block_table.size(); ++i) {
        if (block_users[s.block_table[i]] < 2) continue;
        EXPECT_LE(int64_t(i + 1) * config.block_size, s.start_pos) << "shared block is written";
        EXPECT_TRUE(sched.block_pool().is_cached(s.block_table[i]));
      }
    }
    // Decoding requests are never starved: each is in the plan unless a preemption hit it.
    for (int64_t id : decoding_before) {
      const RequestState* r = sched.find(id);
      if (ids.count(id) == 0) {
        EXPECT_TRUE(preempted && r && r->status == RequestStatus::kPreempted)
            << "a decoding request was left out of a step";
      }
    }
    sched.block_pool().check_invariants();
    return plan;
  }

  // Runs the plan like an engine would and returns one sampled token per sampled sequence.
  std::vector<int32_t> execute(const StepPlan& plan) {
    std::vector<int32_t> sampled;
    size_t offset = 0;
    for (const StepSequence& s : plan.sequences) {
      const std::vector<int32_t> known = tracked.at(s.request_id).known();
      auto slot = [&](int32_t pos) {
        return size_t(s.block_table[pos / config.block_size]) * config.block_size +
               pos % config.block_size;
      };
      for (int32_t pos = 0; pos < s.start_pos; ++pos) {
        EXPECT_EQ(shadow[slot(pos)], known[pos]) << "KV cache lost or mixed up a token";
        if (shadow[slot(pos)] != known[pos]) break;
      }
      for (int32_t i = 0; i < s.num_tokens; ++i) {
        const int32_t pos = s.start_pos + i;
        EXPECT_EQ(plan.tokens[offset + i], known[pos]) << "plan carries the wrong token";
        const int32_t block = s.block_table[pos / config.block_size];
        EXPECT_EQ(sched.block_pool().ref_count(block), 1) << "step writes a block others hold";
        shadow[slot(pos)] = plan.tokens[offset + i];
      }
      offset += s.num_tokens;
      if (s.sample) sampled.push_back(fake_token(s.request_id, s.start_pos + s.num_tokens));
    }
    return sampled;
  }

  void absorb(const std::vector<RequestEvent>& events) {
    for (const RequestEvent& e : events) {
      Tracked& t = tracked.at(e.request_id);
      EXPECT_FALSE(t.finished) << "event after finish";
      if (e.has_token) t.output.push_back(e.token_id);
      EXPECT_EQ(e.usage.prompt_tokens, int32_t(t.prompt.size()));
      EXPECT_EQ(e.usage.completion_tokens, int32_t(t.output.size()));
      if (e.finished) {
        t.finished = true;
        t.reason = e.finish_reason;
        t.usage = e.usage;
        EXPECT_EQ(sched.find(e.request_id), nullptr);
      }
    }
  }

  std::vector<RequestEvent> step() {
    const StepPlan plan = schedule();
    const std::vector<int32_t> sampled = execute(plan);
    std::vector<RequestEvent> events = sched.on_step_done(plan, sampled);
    absorb(events);
    return events;
  }

  // Steps until every request has finished; fails instead of spinning when nothing can run.
  void run_to_completion(int max_steps = 20000) {
    for (int i = 0; i < max_steps && sched.has_unfinished_requests(); ++i) {
      const StepPlan plan = schedule();
      ASSERT_FALSE(plan.sequences.empty()) << "unfinished requests but nothing scheduled";
      absorb(sched.on_step_done(plan, execute(plan)));
      if (::testing::Test::HasFailure()) return;
    }
    ASSERT_FALSE(sched.has_unfinished_requests()) << "requests never drained";
  }

  void abort(int64_t id) {
    const int32_t used_before = sched.block_pool().num_used_blocks();
    const bool held_blocks = sched.block_pool().has_request(id);
    auto e = sched.abort(id);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->finish_reason, FinishReason::kAbort);
    EXPECT_FALSE(sched.block_pool().has_request(id));
    if (held_blocks) {
      EXPECT_LE(sched.block_pool().num_used_blocks(), used_before);
    }
    tracked.at(id).aborted = true;
    absorb({*e});
  }

  // Every request that was not aborted finished exactly as the reference says.
  void check_all_finished_correctly() {
    EXPECT_FALSE(sched.has_unfinished_requests());
    EXPECT_EQ(sched.block_pool().num_used_blocks(), 0) << "blocks leaked";
    for (const auto& [id, t] : tracked) {
      ASSERT_TRUE(t.finished) << "request " << id << " never finished";
      if (t.aborted) continue;
      const Expected e =
          expected_completion(id, int32_t(t.prompt.size()), t.params, config.max_model_len);
      EXPECT_EQ(t.output, e.output) << "request " << id;
      EXPECT_EQ(t.reason, e.reason) << "request " << id;
      EXPECT_EQ(t.usage.completion_tokens, int32_t(e.output.size()));
      EXPECT_GE(t.usage.cached_tokens, 0);
      EXPECT_LT(t.usage.cached_tokens, int32_t(t.prompt.size()));
      EXPECT_EQ(t.usage.cached_tokens % config.block_size, 0);
    }
  }

  Scheduler sched;
  SchedulerConfig config;
  std::vector<int32_t> shadow;  // token held by each KV slot
  std::map<int64_t, Tracked> tracked;
  int64_t preempted_steps = 0;
};

SchedulerConfig small_config() {
  SchedulerConfig c;
  c.num_blocks = 256;
  c.max_model_len = 512;
  c.vocab_size = kVocab;
  c.eos_token_ids = {kEos};
  return c;
}

std::vector<int32_t> random_prompt(std::mt19937& rng, int len) {
  std::vector<int32_t> p(len);
  for (auto& t : p) t = 1 + int32_t(rng() % (kVocab - 1));
  return p;
}

// ---- configuration and admission errors ---------------------------------------------------

TEST(Scheduler, ConfigValidation) {
  EXPECT_NO_THROW(small_config().validate());
  SchedulerConfig c = small_config();
  c.num_blocks = 31;  // 31 * 16 < 512
  EXPECT_THROW(c.validate(), Error);
  c = small_config();
  c.max_num_batched_tokens = 32;  // < max_num_seqs 64: decodes could not all fit
  EXPECT_THROW(Scheduler{c}, Error);
  c = small_config();
  c.block_size = 0;
  EXPECT_THROW(c.validate(), Error);
  c = small_config();
  c.max_model_len = 0;
  EXPECT_THROW(c.validate(), Error);
}

TEST(Scheduler, RejectsBadRequestsAtAddTime) {
  Scheduler s(small_config());
  try {
    s.add_request(1, std::vector<int32_t>(513, 1), {});
    ADD_FAILURE() << "an over-long prompt was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("max_model_len"), std::string::npos) << e.message();
    EXPECT_NE(e.message().find("513"), std::string::npos) << e.message();
  }
  EXPECT_THROW(s.add_request(2, {}, {}), Error);
  EXPECT_THROW(s.add_request(3, {1, 2, kVocab}, {}), Error);
  EXPECT_THROW(s.add_request(4, {1, -1}, {}), Error);
  EXPECT_THROW(s.add_request(5, {1, 2}, SamplingParams{.top_p = 0.0f}), Error);
  EXPECT_FALSE(s.has_unfinished_requests()) << "rejected requests must not be queued";
  s.add_request(6, std::vector<int32_t>(512, 1), {});  // exactly max_model_len is allowed
  EXPECT_THROW(s.add_request(6, {1}, {}), Error);
  EXPECT_EQ(s.num_waiting(), 1);
}

// ---- basic lifecycle ----------------------------------------------------------------------

TEST(Scheduler, OneRequestPrefillsThenDecodesToMaxTokens) {
  Harness h(small_config());
  SamplingParams p{.max_tokens = 5, .ignore_eos = true};
  h.add(1, std::vector<int32_t>(40, 7), p);
  StepPlan first = h.schedule();
  ASSERT_EQ(first.sequences.size(), 1u);
  EXPECT_EQ(first.sequences[0].num_tokens, 40);
  EXPECT_EQ(first.sequences[0].start_pos, 0);
  EXPECT_TRUE(first.sequences[0].sample);
  EXPECT_EQ(first.sequences[0].block_table.size(), 3u);
  h.absorb(h.sched.on_step_done(first, h.execute(first)));
  for (int i = 0; i < 4; ++i) {
    const StepPlan plan = h.schedule();
    ASSERT_EQ(plan.sequences.size(), 1u);
    EXPECT_EQ(plan.sequences[0].num_tokens, 1);
    EXPECT_EQ(plan.sequences[0].start_pos, 40 + i);
    h.absorb(h.sched.on_step_done(plan, h.execute(plan)));
  }
  h.check_all_finished_correctly();
  EXPECT_EQ(h.tracked[1].reason, FinishReason::kLength);
  EXPECT_EQ(h.tracked[1].output.size(), 5u);
  EXPECT_TRUE(h.sched.schedule().sequences.empty());
}

TEST(Scheduler, StopsOnEosStopIdsAndContextLimit) {
  // Find request ids whose fake completions hit eos / a chosen stop id early.
  SchedulerConfig c = small_config();
  Harness h(c);
  const std::vector<int32_t> prompt(10, 3);
  int64_t eos_id = -1;
  for (int64_t id = 1; eos_id < 0; ++id) {
    for (int pos = 10; pos < 20; ++pos) {
      if (fake_token(id, pos) == kEos) {
        eos_id = id;
        break;
      }
    }
  }
  h.add(eos_id, prompt, {.max_tokens = 100});
  h.add(1000 + eos_id, prompt,
        {.max_tokens = 100, .stop_token_ids = {fake_token(1000 + eos_id, 12)}});
  h.add(2000 + eos_id, prompt,
        {.max_tokens = 100000, .ignore_eos = true});                        // runs to max_model_len
  h.add(3000 + eos_id, std::vector<int32_t>(512, 3), {.max_tokens = 100});  // full context: 1 token
  h.run_to_completion();
  h.check_all_finished_correctly();
  EXPECT_EQ(h.tracked[eos_id].reason, FinishReason::kStop);
  EXPECT_EQ(h.tracked[eos_id].output.back(), kEos);
  EXPECT_EQ(h.tracked[1000 + eos_id].reason, FinishReason::kStop);
  EXPECT_LE(h.tracked[1000 + eos_id].output.size(), 3u);
  EXPECT_EQ(h.tracked[2000 + eos_id].reason, FinishReason::kLength);
  EXPECT_EQ(h.tracked[2000 + eos_id].output.size(), 512u - 10u);
  EXPECT_EQ(h.tracked[3000 + eos_id].output.size(), 1u);
  EXPECT_EQ(h.tracked[3000 + eos_id].reason, FinishReason::kLength);
}

// ---- chunked prefill ----------------------------------------------------------------------

TEST(Scheduler, LongPromptIsChunkedWhileOthersDecodeEveryStep) {
  SchedulerConfig c = small_config();
  c.max_model_len = 4096;
  c.num_blocks = 512;
  Harness h(c);
  std::mt19937 rng(5);
  for (int64_t id = 1; id <= 3; ++id)
    h.add(id, random_prompt(rng, 20), {.max_tokens = 200, .ignore_eos = true});
  h.step();  // the three prefill together
  h.add(99, random_prompt(rng, 2000), {.max_tokens = 3, .ignore_eos = true});
  std::vector<int32_t> chunks;
  for (int step = 0; step < 4; ++step) {
    const StepPlan plan = h.schedule();
    ASSERT_EQ(plan.sequences.size(), 4u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(plan.sequences[i].num_tokens, 1) << "decodes come first, one token each";
      EXPECT_TRUE(plan.sequences[i].sample);
    }
    EXPECT_EQ(plan.sequences[3].request_id, 99);
    chunks.push_back(plan.sequences[3].num_tokens);
    EXPECT_EQ(plan.sequences[3].sample, step == 3) << "sample only once the prompt is complete";
    h.absorb(h.sched.on_step_done(plan, h.execute(plan)));
  }
  EXPECT_EQ(chunks, (std::vector<int32_t>{509, 509, 509, 473}));
  EXPECT_EQ(h.tracked[99].output.size(), 1u);
  h.run_to_completion();
  h.check_all_finished_correctly();
}

// ---- preemption ---------------------------------------------------------------------------

TEST(Scheduler, PreemptsTheNewestAndItStillCompletes) {
  SchedulerConfig c = small_config();
  c.block_size = 4;
  c.max_model_len = 32;
  c.num_blocks = 8;  // room for one full-length sequence only
  c.max_num_seqs = 2;
  Harness h(c);
  const SamplingParams p{.max_tokens = 20, .ignore_eos = true};
  h.add(1, std::vector<int32_t>(10, 5), p);
  h.add(2, std::vector<int32_t>(10, 6), p);
  h.add(3, std::vector<int32_t>(6, 7), p);  // waits: max_num_seqs = 2
  bool saw_preemption = false;
  for (int guard = 0; h.sched.has_unfinished_requests(); ++guard) {
    ASSERT_LT(guard, 1000) << "requests never drained";
    h.step();
    const RequestState* r2 = h.sched.find(2);
    if (r2 && r2->num_preemptions > 0 && !saw_preemption) {
      saw_preemption = true;
      ASSERT_NE(h.sched.find(1), nullptr) << "the older request keeps running";
      EXPECT_EQ(h.sched.find(1)->status, RequestStatus::kRunning);
      EXPECT_EQ(h.sched.find(1)->num_preemptions, 0);
      EXPECT_EQ(r2->status, RequestStatus::kPreempted);
      EXPECT_FALSE(h.sched.block_pool().has_request(2)) << "a preempted request holds no blocks";
    }
    const RequestState* r3 = h.sched.find(3);
    if (r3 && r3->status == RequestStatus::kRunning) {
      const RequestState* r2_now = h.sched.find(2);
      ASSERT_TRUE(r2_now == nullptr || r2_now->status == RequestStatus::kRunning)
          << "the preempted request goes back to the front of the queue";
    }
  }
  EXPECT_TRUE(saw_preemption);
  EXPECT_GT(h.sched.stats().preemptions, 0);
  h.check_all_finished_correctly();
  for (int64_t id : {1, 2, 3}) EXPECT_EQ(h.tracked[id].output.size(), 20u);
}

// ---- abort --------------------------------------------------------------------------------

TEST(Scheduler, AbortFreesBlocksAtOnceAndIgnoresTheStepInFlight) {
  Harness h(small_config());
  const SamplingParams p{.max_tokens = 50, .ignore_eos = true};
  h.add(1, std::vector<int32_t>(100, 1), p);
  h.add(2, std::vector<int32_t>(100, 2), p);
  h.add(3, std::vector<int32_t>(600 - 500, 3), p);
  h.step();
  h.add(4, std::vector<int32_t>(30, 4), p);  // still waiting when aborted
  h.abort(4);
  h.abort(1);  // running, between steps
  EXPECT_FALSE(h.sched.abort(1).has_value()) << "second abort of the same id";
  EXPECT_FALSE(h.sched.abort(12345).has_value());
  const StepPlan plan = h.schedule();
  const std::vector<int32_t> sampled = h.execute(plan);
  const int32_t used = h.sched.block_pool().num_used_blocks();
  h.abort(2);  // mid-step: its result must be ignored
  EXPECT_LT(h.sched.block_pool().num_used_blocks(), used);
  const auto events = h.sched.on_step_done(plan, sampled);
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_EQ(plan.sequences[0].request_id, 2) << "the aborted request comes first in the plan";
  ASSERT_EQ(events.size(), 1u) << "the other request's token still arrives";
  EXPECT_EQ(events[0].request_id, 3);
  h.absorb(events);
  h.run_to_completion();
  h.check_all_finished_correctly();
  EXPECT_EQ(h.tracked[3].output.size(), 50u);
}

TEST(Scheduler, StepsMustBeAppliedInOrder) {
  Harness h(small_config());
  h.add(1, {1, 2, 3}, {.max_tokens = 4});
  const StepPlan plan = h.sched.schedule();
  EXPECT_THROW(h.sched.schedule(), Error);
  EXPECT_THROW(h.sched.on_step_done(plan, {}), Error) << "one sampled token is due";
  StepPlan stale = plan;
  stale.step_id += 7;
  EXPECT_THROW(h.sched.on_step_done(stale, {5}), Error);
  EXPECT_NO_THROW(h.sched.on_step_done(plan, {5}));
}

// ---- prefix caching -----------------------------------------------------------------------

TEST(Scheduler, RepeatedPromptReportsCachedTokens) {
  Harness h(small_config());
  std::mt19937 rng(8);
  const std::vector<int32_t> prompt = random_prompt(rng, 100);
  h.add(1, prompt, {.max_tokens = 2, .ignore_eos = true});
  h.run_to_completion();
  h.add(2, prompt, {.max_tokens = 2, .ignore_eos = true});
  h.add(3, prompt, {.max_tokens = 2, .ignore_eos = true}, "other-tenant");
  const StepPlan plan = h.schedule();
  ASSERT_EQ(plan.sequences.size(), 2u);
  EXPECT_EQ(plan.sequences[0].start_pos, 96);  // (100 - 1) / 16 whole blocks
  EXPECT_EQ(plan.sequences[0].num_tokens, 4);
  EXPECT_EQ(plan.sequences[1].start_pos, 0) << "another salt must not share";
  h.absorb(h.sched.on_step_done(plan, h.execute(plan)));
  h.run_to_completion();
  h.check_all_finished_correctly();
  EXPECT_EQ(h.tracked[1].usage.cached_tokens, 0);
  EXPECT_EQ(h.tracked[2].usage.cached_tokens, 96);
  EXPECT_EQ(h.tracked[3].usage.cached_tokens, 0);
  EXPECT_EQ(h.sched.stats().cached_prompt_tokens, 96);
}

// ---- randomized simulation ----------------------------------------------------------------

struct SimulationCase {
  const char* name;
  int32_t block_size;
  int32_t num_blocks;
  int32_t budget;
  int32_t max_num_seqs;
  bool expect_preemption;
};

void simulate(const SimulationCase& c, uint32_t seed) {
  SchedulerConfig config = small_config();
  config.block_size = c.block_size;
  config.num_blocks = c.num_blocks;
  config.max_num_batched_tokens = c.budget;
  config.max_num_seqs = c.max_num_seqs;
  config.max_model_len = 256;
  Harness h(config);
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> stems;
  for (int s = 0; s < 5; ++s) stems.push_back(random_prompt(rng, 8 + int(rng() % 60)));
  int64_t next_id = 1;
  int steps = 0;
  for (; steps < 20000; ++steps) {
    if (steps < 400 && rng() % 3 == 0) {
      for (int n = int(rng() % 3); n > 0; --n) {
        std::vector<int32_t> prompt =
            rng() % 2 ? stems[rng() % stems.size()] : std::vector<int32_t>{};
        const std::vector<int32_t> tail = random_prompt(rng, 1 + int(rng() % 180));
        prompt.insert(prompt.end(), tail.begin(), tail.end());
        prompt.resize(std::min<size_t>(prompt.size(), 256));
        SamplingParams p;
        p.max_tokens = 1 + int32_t(rng() % 80);
        p.ignore_eos = rng() % 4 == 0;
        if (rng() % 5 == 0) p.stop_token_ids = {int32_t(1 + rng() % (kVocab - 1))};
        h.add(next_id++, prompt, p);
      }
    }
    if (rng() % 50 == 0 && h.sched.has_unfinished_requests()) {  // client disconnects
      const int64_t id = 1 + int64_t(rng() % (next_id - 1));
      if (h.sched.find(id)) h.abort(id);
    }
    if (!h.sched.has_unfinished_requests()) {
      if (steps >= 400) break;
      continue;
    }
    const StepPlan plan = h.schedule();
    ASSERT_FALSE(plan.sequences.empty()) << "unfinished requests but nothing scheduled";
    const std::vector<int32_t> sampled = h.execute(plan);
    if (rng() % 40 == 0) {  // disconnect while the step runs
      const int64_t id = plan.sequences[rng() % plan.sequences.size()].request_id;
      if (h.sched.find(id)) h.abort(id);
    }
    h.absorb(h.sched.on_step_done(plan, sampled));
    if (::testing::Test::HasFailure()) break;
  }
  ASSERT_LT(steps, 20000) << "requests never drained";
  h.check_all_finished_correctly();
  EXPECT_GT(next_id, 100);
  if (c.expect_preemption) {
    EXPECT_GT(h.sched.stats().preemptions, 0) << "tiny pool should force preemption";
  }
  EXPECT_GT(h.sched.stats().cached_prompt_tokens, 0) << "shared stems should hit the cache";
}

TEST(Scheduler, RandomArrivalsRoomyPool) {
  simulate({"roomy", 16, 512, 512, 64, false}, 1);
}

TEST(Scheduler, RandomArrivalsTinyPoolPreempts) {
  for (uint32_t seed : {2u, 3u, 4u}) {
    SCOPED_TRACE(seed);
    simulate({"tiny", 16, 24, 512, 64, true}, seed);
  }
}

TEST(Scheduler, RandomArrivalsSmallBlocksSmallBudget) {
  simulate({"small blocks", 4, 80, 64, 16, true}, 6);
}

}  // namespace
}  // namespace alem
