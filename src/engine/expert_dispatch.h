// Expert dispatch and combine across ranks: when the experts of a MoE layer are spread over ranks
// that do NOT share the tokens (experts across dp replicas, mpi/parallel_layout.h), each rank
// routes its own tokens, sends every (token, expert) row to the rank holding that expert with one
// all_to_all on the ep group, runs its experts on the rows it received (one grouped batch per
// expert), sends the results back with a second all_to_all, and adds them up, weighted, on the
// token's own rank. A rank without tokens still takes part with zero rows, so every member makes
// the same collective calls (the replicas of an ep group step in lockstep: any_member_has_work).
//
// Exactness: each token's expert outputs are added in increasing expert id, the order of the
// one-rank loop (engine/moe_ffn.cc), so a token's sum differs from one rank's only where a
// kernel's result depends on how many rows share a batch.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "mpi/process_group.h"

namespace alem {

// Accumulated over MoE layer calls, for `alem bench` and /metrics.
struct ExpertDispatchStats {
  double all_to_all_seconds = 0;  // in the ep group's all_to_all calls (counts, rows, results)
  uint64_t bytes_sent = 0;        // to other members: token rows out and results back
  uint64_t bytes_received = 0;    // from other members
  uint64_t rows_sent = 0;         // (token, expert) rows sent to other members
  uint64_t rows_received = 0;     // rows other members sent here to run
  uint64_t layer_calls = 0;       // MoE layer calls that dispatched (zero-row calls included)
};

// Runs `count` rows (each `hidden` floats) through this rank's expert `local_expert` (0-based
// among its own experts): out[count][hidden] = expert(in[count][hidden]).
using LocalExpertRun =
    std::function<void(int local_expert, const float* in, int64_t count, float* out)>;

// One MoE layer's dispatch, expert run and combine over `group` (every member calls it, T may be
// 0). Experts are split evenly: member i holds [i * E / n, (i + 1) * E / n). x[T][hidden] are this
// rank's normed hidden states, chosen[T][top_k] their experts (model-wide ids), weights[T][top_k]
// the routing weights. Adds sum_k weights * expert(x) to out[T][hidden]. Throws alem::Error when a
// received row names an expert this rank does not hold.
void dispatch_and_combine(ProcessGroup& group, int num_experts, int64_t hidden, const float* x,
                          int64_t T, int top_k, const int32_t* chosen, const float* weights,
                          const LocalExpertRun& run, float* out, ExpertDispatchStats& stats);

// Lockstep of an ep group's replicas: every member says whether it has work this step (one small
// all-reduce); true when any has. With a group of one member (or none), `mine`, without
// communication. `stop` (optional, in/out) is or-ed the same way, so the members also agree to
// stop together.
bool any_member_has_work(ProcessGroup* ep_group, bool mine, bool* stop = nullptr);

}  // namespace alem
