// Sampling a whole step's rows on a (possibly sharded) replica, shared by the one-request
// Generator and the many-request ServingEngine. With a vocab-parallel LM head every last-stage
// TP rank holds a slice of each row's logits: each applies the penalties to its slice and
// proposes candidates, the TP group exchanges all rows' candidate sets in ONE all-gather, and
// every TP rank then makes the same choice from the same inputs and the same per-request RNG.
// The last pipeline stage finally broadcasts the tokens over the pipeline group, so every rank
// of the replica returns the same tokens. Requested logprobs travel the same way.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/logprobs.h"
#include "engine/sampler.h"
#include "engine/transformer.h"
#include "mpi/parallel_context.h"

namespace alem {

namespace constrained {
class RowConstraint;
}

// How one row is sampled: the request's params, the tokens it has seen (for penalties) and its
// random stream. Only read on ranks that hold the LM head; `rng` is advanced there.
struct RowSampler {
  const SamplingParams* params = nullptr;
  const TokenCounts* counts = nullptr;
  Rng* rng = nullptr;
  // response_format: the row's grammar state, which masks invalid tokens (engine/constrained/).
  constrained::RowConstraint* constraint = nullptr;
};

// Largest top_k whose rows take their candidates from the kernel backend when the logits are left
// there (StepLogits::on_backend): greedy and top-k rows without penalties or a grammar then copy
// k candidates per row to the host (KernelBackend::sampling_candidates) instead of the row; the
// choice is the same as from the whole row. Other rows are copied whole.
constexpr int kMaxBackendTopK = 128;

// Returns the next token of each row, on every rank of the replica (all must call it, with the
// same number of rows). `has_lm_head`: this rank is on the last pipeline stage; there `logits`
// must hold rows.size() rows and `rows` must be filled in. Other ranks pass `rows` of the right
// length with any content (it is not read) and get the tokens from the pipeline broadcast.
//
// `logprobs`, when given (by every rank of the replica alike, or by none), gets one entry per row
// on every rank of the replica: filled for the rows whose params ask for logprobs (params->logprobs
// >= 0), from the raw logits (before penalties), empty otherwise. Under TP the ranks gather small
// per-slice parts (engine/logprobs.h), only in steps where some row asks; under PP the last stage
// sends the result with the tokens.
std::vector<int32_t> sample_rows_replicated(
    const StepLogits& logits, const std::vector<RowSampler>& rows, ParallelContext& ctx,
    bool has_lm_head, std::vector<std::optional<TokenLogprobs>>* logprobs = nullptr);

// Bytes of several candidate sets in one buffer (count, then length-prefixed sets) and back.
// Gathers variable-sized byte strings from every member of a group (size exchange, then a
// padded all-gather). Returns them in group-rank order.
std::vector<std::vector<uint8_t>> all_gather_bytes(ProcessGroup& group,
                                                   const std::vector<uint8_t>& mine);

std::vector<uint8_t> serialize_candidate_sets(const std::vector<CandidateSet>& sets);
std::vector<CandidateSet> deserialize_candidate_sets(const uint8_t* data, size_t size);

}  // namespace alem
