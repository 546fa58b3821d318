// ShardPlan: which slice of every weight one rank owns, from the model shape and the rank's
// (tp, pp) coordinates. Pure arithmetic, checked at start-up, so an impossible layout fails
// before any weight is read with a message saying what would have to divide what.
//
// Tensor parallel (Megatron): query heads split evenly; KV heads split evenly when tp divides
// them, replicated when tp is a multiple of them (rank r then uses kv head r / (tp / kv_heads));
// the FFN intermediate dimension and the vocabulary split evenly.
// Pipeline parallel: contiguous layer ranges (balanced, or given).
// Expert parallel (MoE layers): the tp group's ranks form ep slices of tp / ep consecutive
// ranks; slice i holds experts [i * E / ep, (i + 1) * E / ep) whole, each split over the slice's
// tp / ep ranks like a dense FFN (gate/up rows, down columns). The router is replicated.
// Supported: ep divides tp and the expert count, and tp / ep divides moe_intermediate_size (in
// whole blocks when the experts are int8 or ggml blocks: a split never cuts a block).
// Experts across replicas (tp 1, ParallelLayout::experts_across_replicas): member i of an ep
// group of replicas holds experts [i * E / ep, (i + 1) * E / ep) whole; ep divides E.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/model_config.h"
#include "mpi/parallel_layout.h"

namespace alem {

struct ShardPlan {
  int tp_size = 1, tp_rank = 0, pp_size = 1, pp_rank = 0;
  // Attention heads held locally: query heads [head_begin, head_begin + num_heads) and kv heads
  // [kv_head_begin, kv_head_begin + num_kv_heads).
  int head_begin = 0, num_heads = 0;
  int kv_head_begin = 0, num_kv_heads = 0;
  // FFN intermediate columns [ffn_begin, ffn_begin + ffn_size).
  int ffn_begin = 0, ffn_size = 0;
  // Vocabulary rows [vocab_begin, vocab_begin + vocab_size) of the embedding and LM head.
  int vocab_begin = 0, vocab_size = 0;
  // Layers [first_layer, first_layer + num_layers) of this pipeline stage.
  int first_layer = 0, num_layers = 0;
  // MoE layers: expert-parallel size and this rank's slice; experts
  // [expert_begin, expert_begin + num_local_experts), expert FFN columns
  // [expert_ffn_begin, expert_ffn_begin + expert_ffn_size). All zero for dense models.
  int ep_size = 1, ep_rank = 0;
  int expert_begin = 0, num_local_experts = 0;
  int expert_ffn_begin = 0, expert_ffn_size = 0;
  // Shared expert (Qwen2-MoE) columns [shared_ffn_begin, shared_ffn_begin + shared_ffn_size),
  // split over all tp ranks like a dense FFN. Zero without one.
  int shared_ffn_begin = 0, shared_ffn_size = 0;

  bool has_embedding() const { return pp_rank == 0; }
  bool has_lm_head() const { return pp_rank == pp_size - 1; }
  std::string describe() const;
};

// The engine's expert-parallel rule, in one place for start-up and the planner (src/plan):
// returns "" when a tensor-parallel group of `tp_size` ranks can hold `num_experts` experts of
// `moe_intermediate_size` columns in `ep_size` slices, else the reason, as make_shard_plan
// reports it. The rule: ep >= 1 divides tp; ep > 1 needs experts (num_experts > 0); ep divides
// num_experts; tp / ep divides moe_intermediate_size; with tp / ep > 1 each rank's columns of an
// expert's down_proj are whole blocks of `expert_dtype` (32-column groups for int8, 32 for
// Q4_0/Q4_1/Q8_0, dtype_block_elements for any other block type), since a split inside a block
// cannot be read. Any pp and dp combine with it: ep subdivides the tp group of each stage of each
// replica and never spans stages or replicas.
std::string expert_parallel_problem(int num_experts, int moe_intermediate_size, int tp_size,
                                    int ep_size, DType expert_dtype = DType::F32);

// Experts across replicas: "" when `ep_size` replicas can share `num_experts` experts whole,
// else the reason (no experts, or ep does not divide them).
std::string experts_across_replicas_problem(int num_experts, int ep_size);
// Gives `plan` (made for tp = 1 with ep 1) its whole experts as member `ep_rank` of an ep group
// of `ep_size` replicas. Throws alem::Error with experts_across_replicas_problem's reason.
void place_experts_across_replicas(ShardPlan& plan, const ModelConfig& config, int ep_size,
                                   int ep_rank);

// Throws alem::Error naming the constraint when the layout cannot shard the model.
// `int8_weights`: row-parallel splits must then also fall on 32-column group boundaries.
// `expert_dtype`: the stored type of the experts (the strictest block of any sparse layer); when
// absent, int8 when `int8_weights`, else unblocked.
ShardPlan make_shard_plan(const ModelConfig& config, int tp_size, int tp_rank, int pp_size,
                          int pp_rank, bool int8_weights,
                          const std::vector<int>& layers_per_stage = {}, int ep_size = 1,
                          std::optional<DType> expert_dtype = std::nullopt);

}  // namespace alem
