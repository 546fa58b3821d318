// StepPlan: what one engine step computes, decided by the scheduler on the replica leader and
// applied identically by every rank of the replica (each to its own heads and layers). It is a
// plain value type so it can be broadcast to the replica's ranks as bytes.
//
// A step carries a flat list of tokens from several sequences: a prefill chunk of a new request,
// single decode tokens of running ones, all mixed (token-budget scheduling, vLLM v1 style).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace alem {

struct StepSequence {
  int64_t request_id = 0;  // scheduler's id, echoed back with the sampled token
  int32_t num_tokens = 0;  // tokens of this sequence in the step (prefill chunk or 1)
  int32_t start_pos = 0;   // position of the first of them (= tokens already in the cache)
  bool sample = false;     // true when the step reaches the end of the known tokens:
                           //   the last row's logits are sampled to make a new token
  std::vector<int32_t> block_table;  // physical KV blocks covering [0, start_pos + num_tokens)
};

struct StepPlan {
  int64_t step_id = 0;
  std::vector<int32_t> tokens;  // all tokens, sequences back to back
  std::vector<StepSequence> sequences;
  // KV blocks released since the last step (BlockPool::take_blocks_to_wipe): every rank zeroes
  // them before the step's KV writes. A plan may carry only these (no sequences).
  std::vector<int32_t> wipe_blocks;

  int32_t total_tokens() const { return static_cast<int32_t>(tokens.size()); }
};

// Serialises a plan to bytes and back (for the broadcast from the replica leader).
std::vector<uint8_t> serialize_step_plan(const StepPlan& plan);
StepPlan deserialize_step_plan(const uint8_t* data, size_t size);

}  // namespace alem
