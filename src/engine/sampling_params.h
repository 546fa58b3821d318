// SamplingParams: how one request turns logits into tokens and when it stops, with the meaning
// the OpenAI API and vLLM give each field. It lives apart from the sampler so the HTTP layer,
// the scheduler and the sampler can all share it without pulling in each other's code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace alem {

struct SamplingParams {
  // Temperatures below this are treated as greedy (argmax), as vLLM does.
  static constexpr float kGreedyTemperature = 1e-5f;

  // response_format: the JSON Schema (compact text) the output must follow, enforced token by
  // token (engine/constrained/); "" = unconstrained. json_object is {"type":"object"}.
  std::string json_schema = {};
  // guided_regex / guided_choice: a pattern (engine/constrained/regex.h) the whole output must
  // match; "" = none. At most one of json_schema and regex is set.
  std::string regex = {};
  float temperature = 1.0f;         // 0 = greedy; otherwise logits are divided by it
  int32_t top_k = 0;                // keep the k most likely tokens; 0 or -1 = off
  float top_p = 1.0f;               // nucleus: smallest set with cumulative probability >= top_p
  float min_p = 0.0f;               // drop tokens with probability < min_p * (top probability)
  float repetition_penalty = 1.0f;  // HF semantics over prompt + output tokens; 1 = off
  float presence_penalty = 0.0f;    // OpenAI: subtracted once if a token occurs in the output
  float frequency_penalty = 0.0f;   // OpenAI: subtracted per occurrence in the output
  std::optional<uint64_t> seed =
      std::nullopt;         // same seed -> same draws, whatever else is in the batch
  int32_t max_tokens = 16;  // most completion tokens to generate (vLLM's default)
  std::vector<int32_t> stop_token_ids = {};  // generation stops after emitting any of these
  bool ignore_eos = false;                   // keep generating past the model's end-of-sequence
  // -1: no logprobs; 0..20: each token comes with its raw logprob and this many top tokens'.
  int32_t logprobs = -1;

  bool constrained() const { return !json_schema.empty() || !regex.empty(); }
  bool greedy() const { return temperature < kGreedyTemperature; }
  bool top_k_enabled() const { return top_k > 0; }
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }

  // Throws alem::Error naming the first impossible field and its allowed range:
  // temperature in [0, 100] (not NaN), top_p in (0, 1], min_p in [0, 1], top_k >= -1,
  // presence/frequency penalties in [-2, 2], repetition_penalty > 0 (finite), max_tokens >= 1,
  // stop token ids >= 0, logprobs in [-1, 20].
  void validate() const;
};

}  // namespace alem
