// Sampler: turns one sequence's logits into its next token, also when the vocabulary is split
// across tensor-parallel ranks (vocab-parallel LM head: each rank holds logits for the vocab
// slice [vocab_begin, vocab_begin + n)). The work is cut into steps that each run where the data
// is, so ranks only exchange small candidate sets, never whole logit rows when avoidable:
//
//   every rank:  apply_penalties(slice)           penalties need only the slice's own tokens
//                local_candidates(slice) -> set   argmax / local top-k / whole slice, + stats
//   one rank:    merge(sets from all ranks)       global argmax / top-k / vocabulary + stats
//                choose(merged, params, rng)      temperature, min_p, top_k, top_p, draw
//
// Order of operations follows vLLM v1: penalties (repetition, frequency, presence), then
// greedy short-cut, temperature, min_p, top_k, top_p, and one uniform draw from the request's
// own RNG. Ties are broken by the lower token id, and candidates are put in a canonical order
// before the draw, so the same seed gives the same token whether the vocabulary was split or not
// and whatever else is in the batch, for the same logits (docs/scheduling.md, "Seeds").
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/sampling_params.h"

namespace alem {

// Which tokens of a request have been seen, for the penalties: repetition_penalty looks at the
// prompt and the output, presence/frequency penalties at the output only (OpenAI semantics).
class TokenCounts {
 public:
  struct Entry {
    bool in_prompt = false;
    int32_t output_count = 0;
  };

  void add_prompt(std::span<const int32_t> prompt_tokens);
  void add_prompt(const std::vector<int32_t>& prompt_tokens) {
    add_prompt(std::span<const int32_t>(prompt_tokens));
  }
  void add_output(int32_t token_id);
  void clear() { entries_.clear(); }
  bool empty() const { return entries_.empty(); }
  // Token id -> what is known about it; tokens never seen are absent.
  const std::unordered_map<int32_t, Entry>& entries() const { return entries_; }

 private:
  std::unordered_map<int32_t, Entry> entries_;
};

// A request's random stream: SplitMix64 in counter mode. The n-th draw depends only on
// (seed, n), so the state is two integers that can be saved, sent to another rank or restored.
// choose() draws exactly once per non-greedy token, so the stream for a request's next token is
// Rng(seed) after (tokens generated so far) draws.
class Rng {
 public:
  explicit Rng(uint64_t seed) : seed_(seed) {}
  // The request's seed when it has one, else `fallback_seed` (e.g. from std::random_device).
  static Rng for_request(const SamplingParams& params, uint64_t fallback_seed) {
    return Rng(params.seed.value_or(fallback_seed));
  }

  uint64_t next_u64();
  double uniform();  // in [0, 1), 53 random bits
  uint64_t seed() const { return seed_; }
  uint64_t draws() const { return counter_; }
  void set_draws(uint64_t counter) { counter_ = counter; }

 private:
  uint64_t seed_;
  uint64_t counter_ = 0;
};

struct Candidate {
  float logit = 0.f;  // after penalties, before temperature
  int32_t token_id = 0;
};

enum class CandidateKind : uint8_t {
  kArgmax = 0,  // greedy: only the best token
  kTopK = 1,    // the top_k best tokens (fewer if the vocabulary is smaller)
  kAll = 2,     // every token (top_p, min_p or plain temperature need the whole distribution)
};

// A part (or, after merge, the whole) of one sequence's next-token distribution. The stats
// cover every logit of the part, not just the candidates, so that log-softmax over the whole
// vocabulary can be formed from parts: logsumexp = max_logit + log(sum_exp).
struct CandidateSet {
  CandidateKind kind = CandidateKind::kAll;
  int32_t top_k = 0;  // k, for kTopK
  std::vector<Candidate> candidates;
  float max_logit = 0.f;      // max over all logits covered (-inf when all are -inf)
  double sum_exp = 0.0;       // sum over all logits covered of exp(logit - max_logit)
  int64_t vocab_covered = 0;  // number of logits covered
};

// Applies repetition (HF: positive logits divided, others multiplied, for tokens seen in prompt
// or output), then frequency (per output occurrence) and presence (once per token in the
// output) penalties, in place, to the tokens of `counts` that fall in
// [vocab_begin, vocab_begin + n). A no-op when the params carry no penalty.
void apply_penalties(float* logits_slice, int64_t vocab_begin, int64_t n,
                     const SamplingParams& params, const TokenCounts& counts);

// The candidates this slice contributes, chosen by the params: greedy -> its argmax; top_k
// enabled -> its top min(k, n) tokens; otherwise every token. Token ids are global
// (vocab_begin + index). Throws on NaN or +inf logits.
CandidateSet local_candidates(const float* logits_slice, int64_t vocab_begin, int64_t n,
                              const SamplingParams& params);

// Combines the sets of disjoint vocabulary slices (all made with the same params) into the set
// that local_candidates would give for the whole vocabulary.
CandidateSet merge(const std::vector<CandidateSet>& parts);

// Draws the next token: greedy -> argmax; otherwise temperature, min_p, top_k, top_p, then one
// uniform draw from `rng`. When `logprob` is given, stores the chosen token's log-probability
// under log_softmax of the (penalised) logits before temperature and truncation, which equals
// the model's raw logprob when no penalty is set. Throws when the set has no finite logit.
int32_t choose(const CandidateSet& set, const SamplingParams& params, Rng& rng,
               float* logprob = nullptr);

// One rank holding the whole vocabulary: penalties (on a copy; `logits` is not modified),
// candidates and choice in one call.
int32_t sample_full(const float* logits, int64_t vocab_size, const SamplingParams& params,
                    const TokenCounts& counts, Rng& rng, float* logprob = nullptr);

// Bytes for gathering candidate sets from the tensor-parallel ranks (little-endian, fixed
// width); deserialisation checks every length and throws on a malformed buffer.
std::vector<uint8_t> serialize_candidates(const CandidateSet& set);
CandidateSet deserialize_candidates(const uint8_t* data, size_t size);

}  // namespace alem
