// Generator: runs one request from prompt to finish on a replica (all of its TP x PP ranks call
// generate() together with the same arguments). When the experts span replicas, the replicas of
// an ep group call generate() together, each with its own request; each step they agree whether
// any still runs, and one that has finished serves the others' expert rows until all have. Used by
// `alem generate`, the correctness tests and the benchmarks; the serving path uses the scheduler
// instead, over the same transformer. Sampling works on vocab-parallel logits: each last-stage rank
// proposes candidates from its vocabulary slice, the TP group exchanges only those, and every rank
// then learns the token.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/sampler.h"
#include "engine/transformer.h"

namespace alem {

struct GenerationResult {
  std::vector<int32_t> tokens;  // completion tokens
  std::string finish_reason;    // "stop" (eos or stop token), "length" (max_tokens or context)
  int prompt_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

class Generator {
 public:
  // `eos_token_ids`: ids that end generation unless params.ignore_eos.
  Generator(ShardedTransformer& model, ParallelContext& ctx, std::vector<int32_t> eos_token_ids,
            int prefill_chunk = 512);

  // on_token (may be empty) sees each new token on every rank, as soon as it is known.
  GenerationResult generate(const std::vector<int32_t>& prompt, const SamplingParams& params,
                            const std::function<void(int32_t)>& on_token = {});

  // Picks the next token from this step's logits, consistently on every rank of the replica.
  int32_t sample_replicated(const StepLogits& logits, const SamplingParams& params,
                            const TokenCounts& counts, Rng& rng);

 private:
  ShardedTransformer& model_;
  ParallelContext& ctx_;
  std::vector<int32_t> eos_;
  int prefill_chunk_;
};

}  // namespace alem
