// MoeFfn: the feed-forward block of one sparse (mixture-of-experts) layer on one rank, as in
// Qwen3-MoE. Every rank of the tensor-parallel group routes every token (router logits, then the
// family's rule in engine/moe_routing.h); each rank then runs only the
// experts it holds (its expert-parallel slice, each expert split over tp / ep ranks) and writes
// its partial sum. The caller all-reduces the partial sums over the tp group, the same
// collective a dense layer needs, which is the combine step of expert parallelism: the tokens
// are already on every rank of the group after attention, so dispatch moves no data.
//
// Shared expert (Qwen2-MoE; dots.llm1's shared experts as one FFN): every token also goes through
// one FFN split over the tp group like a dense FFN, scaled by sigmoid(shared_expert_gate . x)
// where the family has that gate (Qwen2-MoE; 1 otherwise), and added to the same partial sum.
//
// Grouped expert matmul: the tokens routed to one expert are gathered into one batch, so each
// expert's weights are read once per step however many tokens chose it.
//
// Experts across replicas (ep group of more than one member, mpi/parallel_layout.h): the ranks do
// not share tokens, so forward() routes this rank's tokens, dispatches them to the experts'
// ranks and combines the results (engine/expert_dispatch.h); no all-reduce follows (tp is 1).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/expert_dispatch.h"
#include "engine/moe_routing.h"
#include "engine/shard_plan.h"
#include "kernels/backend.h"
#include "model/model_config.h"
#include "model/model_store.h"

namespace alem {

// Routing counts accumulated over steps: how many token-to-expert assignments each expert of
// the model received (every rank counts all experts, since every rank routes every token).
struct MoeRoutingCounts {
  std::vector<uint64_t> tokens_per_expert;  // [num_experts], summed over this rank's MoE layers
  uint64_t routed_tokens = 0;               // token-layer pairs routed (each to k experts)
  // Single-token calls (one decoding sequence) and the expert weight bytes they read: the
  // active expert bytes per decoded token, for benchmarks.
  uint64_t single_token_calls = 0;
  uint64_t single_token_expert_bytes = 0;
};

// The stored type of the experts' down_proj matrices (the ones tp / ep splits by columns) with
// the largest block of any sparse layer, for the shard plan's no-cut rule
// (expert_parallel_problem). F32 for a dense model.
DType stored_expert_dtype(const ModelStoreReader& store, const ModelConfig& config);

class MoeFfn {
 public:
  // Reads the router and this rank's experts (its slice of each) for `layer` from the store.
  MoeFfn(const ModelStoreReader& store, const ModelConfig& config, const ShardPlan& shard,
         int layer);

  // out[T][H] = this rank's share of sum_k weight_k * expert_k(x) for the normed input x[T][H].
  // Adds this step's routing to `counts` (sized on first use). With `ep_group` of more than one
  // member (experts across replicas) the call is collective over it, T may be 0 (a member
  // without tokens this step), out[T][H] is the whole sum, and `dispatch` gets the traffic.
  void forward(const KernelBackend& backend, const float* x, int64_t T, float* out,
               MoeRoutingCounts& counts, ProcessGroup* ep_group = nullptr,
               ExpertDispatchStats* dispatch = nullptr);

  // Hands this rank's experts (and the shared expert) to a host backend, as the engine hands
  // every dense matrix over: the CPU backend then lays block and int8 weights out 8 rows at a
  // time for its interleaved kernels (docs/kernels-quantized.md). A device backend is handed
  // nothing here: MoE weights keep its copy-on-first-use cache (docs/gpu.md).
  void adopt_weights(const KernelBackend& backend);

  uint64_t weight_bytes() const;
  // This rank's routed experts only (weight_bytes less the router and the shared expert, which
  // every token reads).
  uint64_t expert_weight_bytes() const;
  int num_local_experts() const { return static_cast<int>(experts_.size()); }

 private:
  struct Expert {
    WeightMatrix gate_up;  // rows: this rank's gate columns, then its up columns
    WeightMatrix down;     // [hidden][this rank's expert ffn columns]
  };
  // out[n][H] = local expert `local` applied to in[n][H] (one grouped batch).
  void run_local_expert(const KernelBackend& backend, size_t local, const float* in, int64_t n,
                        float* out);
  int hidden_ = 0;
  int num_experts_ = 0;
  int top_k_ = 0;
  int expert_begin_ = 0;
  int ffn_size_ = 0;  // this rank's columns of each expert
  WeightMatrix router_;
  MoeRouting routing_;  // logits -> (expert ids, weights) per token
  std::vector<Expert> experts_;
  // Shared expert (Qwen2-MoE, dots.llm1; empty otherwise): this rank's slice, as a dense FFN's,
  // and the replicated gate [1][hidden] (Qwen2-MoE only; 0 rows otherwise).
  int shared_size_ = 0;
  Expert shared_;
  WeightMatrix shared_gate_;

  // Per-step scratch.
  std::vector<float> logits_;       // [T][num_experts]
  std::vector<int32_t> chosen_;     // [T][top_k] expert ids
  std::vector<float> weights_;      // [T][top_k]
  std::vector<int32_t> rows_;       // gathered token rows of one expert
  std::vector<float> row_weights_;  // their routing weights
  std::vector<float> gathered_, gate_up_, act_, expert_out_, shared_scale_;
};

}  // namespace alem
