// Log-probabilities for the API's `logprobs` / `top_logprobs`: the chosen token's and the N most
// likely tokens' log_softmax over the whole vocabulary, from the RAW logits of the step (before
// penalties and temperature: vLLM's default "raw_logprobs"). With a vocab-parallel LM head each
// TP rank holds a slice of a row, so the work is cut like the sampler's: every rank makes a small
// LogprobPart of its slice (max, sum of exp, its own top N, the chosen token's logit if it is
// in the slice), the parts are gathered, and combine_logprob_parts() gives the same numbers as
// one rank holding the whole row (sums in double, ties to the lower token id).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/request_state.h"

namespace alem {

// Most alternatives a request may ask for (OpenAI's limit for top_logprobs).
inline constexpr int kMaxTopLogprobs = 20;

struct LogprobPart {
  float max_logit = 0.f;          // over the slice (-inf when empty)
  double sum_exp = 0.0;           // sum of exp(logit - max_logit) over the slice
  std::vector<TokenLogprob> top;  // the slice's best `top_n` (logit in .logprob), best first
  bool has_chosen = false;        // the chosen token lies in this slice
  float chosen_logit = 0.f;
};

// One slice [vocab_begin, vocab_begin + n) of a row's raw logits.
LogprobPart logprob_part(const float* logits_slice, int64_t vocab_begin, int64_t n, int top_n,
                         int32_t chosen_token);

// The parts of disjoint slices covering the vocabulary -> the chosen token's logprob and the
// global top N (best first). Throws when no part holds the chosen token.
TokenLogprobs combine_logprob_parts(const std::vector<LogprobPart>& parts, int top_n);

// Bytes of a row's part, for the TP all-gather; deserialisation checks every length.
void serialize_logprob_part(std::vector<uint8_t>& out, const LogprobPart& part);
LogprobPart deserialize_logprob_part(const uint8_t* data, size_t size, size_t& pos);

}  // namespace alem
