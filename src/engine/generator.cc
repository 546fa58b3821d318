// Single-request generation loop over a (possibly sharded) replica: chunked prefill, then one
// token per step, with TP-merged sampling and a pipeline broadcast of each token.
#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>

#include "core/error.h"
#include "engine/expert_dispatch.h"
#include "engine/replica_sampling.h"

namespace alem {

Generator::Generator(ShardedTransformer& model, ParallelContext& ctx,
                     std::vector<int32_t> eos_token_ids, int prefill_chunk)
    : model_(model), ctx_(ctx), eos_(std::move(eos_token_ids)), prefill_chunk_(prefill_chunk) {
  ALEM_CHECK(prefill_chunk_ > 0, "prefill chunk must be positive");
}

int32_t Generator::sample_replicated(const StepLogits& logits, const SamplingParams& params,
                                     const TokenCounts& counts, Rng& rng) {
  // One row: the serving engine's batched path, so both share one implementation.
  return sample_rows_replicated(logits, {RowSampler{&params, &counts, &rng}}, ctx_,
                                model_.shard().has_lm_head())[0];
}

GenerationResult Generator::generate(const std::vector<int32_t>& prompt,
                                     const SamplingParams& params,
                                     const std::function<void(int32_t)>& on_token) {
  params.validate();
  ALEM_CHECK(!prompt.empty(), "the prompt is empty");
  const int max_len = model_.max_model_len();
  ALEM_CHECK(static_cast<int>(prompt.size()) < max_len,
             "the prompt has " + std::to_string(prompt.size()) +
                 " tokens; the context holds at most " + std::to_string(max_len - 1) +
                 " prompt tokens plus at least one generated token");
  const int block_size = model_.block_size();
  const int total_len =
      std::min<int64_t>(max_len, static_cast<int64_t>(prompt.size()) + params.max_tokens);
  const int blocks_needed = (total_len + block_size - 1) / block_size;
  ALEM_CHECK(blocks_needed <= model_.num_kv_blocks(),
             "the KV cache has " + std::to_string(model_.num_kv_blocks()) + " blocks; " +
                 std::to_string(blocks_needed) + " are needed");

  StepSequence seq;
  seq.request_id = 1;
  seq.block_table.resize(blocks_needed);
  for (int i = 0; i < blocks_needed; ++i) seq.block_table[i] = i;

  TokenCounts counts;
  counts.add_prompt(prompt);
  // Unseeded requests still draw identically on every rank: rank 0 picks and shares the seed.
  uint64_t fallback_seed = 0;
  if (!params.seed) {
    if (ctx_.world_rank == 0 || ctx_.world->size() == 1) fallback_seed = std::random_device{}();
    ctx_.world->broadcast(&fallback_seed, sizeof(fallback_seed), 0);
  }
  Rng rng = Rng::for_request(params, fallback_seed);

  GenerationResult result;
  result.prompt_tokens = static_cast<int>(prompt.size());
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();

  // Prefill in chunks; only the last chunk samples.
  int32_t next = -1;
  for (size_t begin = 0; begin < prompt.size(); begin += prefill_chunk_) {
    const size_t end = std::min(prompt.size(), begin + prefill_chunk_);
    StepPlan plan;
    plan.tokens.assign(prompt.begin() + begin, prompt.begin() + end);
    seq.start_pos = static_cast<int32_t>(begin);
    seq.num_tokens = static_cast<int32_t>(end - begin);
    seq.sample = end == prompt.size();
    plan.sequences = {seq};
    any_member_has_work(ctx_.ep.get(), true);  // lockstep with replicas sharing the experts
    StepLogits logits = model_.forward(plan, LogitsOut::kBackend);
    if (seq.sample) next = sample_replicated(logits, params, counts, rng);
  }
  result.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();

  int32_t position = static_cast<int32_t>(prompt.size());
  while (true) {
    result.tokens.push_back(next);
    counts.add_output(next);
    if (on_token) on_token(next);
    const bool is_eos = std::find(eos_.begin(), eos_.end(), next) != eos_.end();
    const bool is_stop = std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(),
                                   next) != params.stop_token_ids.end();
    if ((is_eos && !params.ignore_eos) || is_stop) {
      result.finish_reason = "stop";
      break;
    }
    // `next` would occupy cache position `position`; total_len <= max_model_len bounds it.
    if (static_cast<int>(result.tokens.size()) >= params.max_tokens || position >= total_len) {
      result.finish_reason = "length";
      break;
    }
    StepPlan plan;
    plan.tokens = {next};
    seq.start_pos = position;
    seq.num_tokens = 1;
    seq.sample = true;
    plan.sequences = {seq};
    any_member_has_work(ctx_.ep.get(), true);
    StepLogits logits = model_.forward(plan, LogitsOut::kBackend);
    next = sample_replicated(logits, params, counts, rng);
    ++position;
  }
  // Experts across replicas: serve the other replicas' MoE rows until every one has finished.
  while (any_member_has_work(ctx_.ep.get(), false)) model_.forward(StepPlan{});
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace alem
