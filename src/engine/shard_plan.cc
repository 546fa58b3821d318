// Computes and validates a rank's weight slices (see shard_plan.h).
#include "engine/shard_plan.h"

#include "core/dtype.h"
#include "core/error.h"

namespace alem {

std::string ShardPlan::describe() const {
  return "tp " + std::to_string(tp_rank) + "/" + std::to_string(tp_size) + " pp " +
         std::to_string(pp_rank) + "/" + std::to_string(pp_size) + ": heads [" +
         std::to_string(head_begin) + "," + std::to_string(head_begin + num_heads) +
         ") kv heads [" + std::to_string(kv_head_begin) + "," +
         std::to_string(kv_head_begin + num_kv_heads) + ") ffn [" + std::to_string(ffn_begin) +
         "," + std::to_string(ffn_begin + ffn_size) + ") vocab [" + std::to_string(vocab_begin) +
         "," + std::to_string(vocab_begin + vocab_size) + ") layers [" +
         std::to_string(first_layer) + "," + std::to_string(first_layer + num_layers) + ")" +
         (num_local_experts > 0 ? " ep " + std::to_string(ep_rank) + "/" + std::to_string(ep_size) +
                                      ": experts [" + std::to_string(expert_begin) + "," +
                                      std::to_string(expert_begin + num_local_experts) +
                                      ") expert ffn [" + std::to_string(expert_ffn_begin) + "," +
                                      std::to_string(expert_ffn_begin + expert_ffn_size) + ")"
                                : "");
}

std::string expert_parallel_problem(int num_experts, int moe_intermediate_size, int tp_size,
                                    int ep_size, DType expert_dtype) {
  const std::string ep = std::to_string(ep_size), tp = std::to_string(tp_size);
  if (ep_size < 1 || tp_size < 1 || tp_size % ep_size != 0) {
    return "expert parallel size " + ep + " does not divide the tensor parallel size " + tp +
           ": experts are spread over the ranks of the tensor-parallel group (supported: ep "
           "divides tp, e.g. --tp 4 --ep 2 or --tp 4 --ep 4)";
  }
  if (num_experts <= 0) {
    return ep_size == 1 ? "" : "expert parallel size " + ep + " needs a mixture-of-experts model";
  }
  if (num_experts % ep_size != 0) {
    return "expert parallel size " + ep + " does not divide the " + std::to_string(num_experts) +
           " experts";
  }
  const int expert_tp = tp_size / ep_size;
  if (moe_intermediate_size <= 0 || moe_intermediate_size % expert_tp != 0) {
    return "tp / ep = " + std::to_string(expert_tp) +
           " ranks per expert does not divide moe_intermediate_size " +
           std::to_string(moe_intermediate_size);
  }
  const int64_t block =
      expert_dtype == DType::I8 ? kInt8GroupSize : dtype_block_elements(expert_dtype);
  const int slice = moe_intermediate_size / expert_tp;
  if (expert_tp > 1 && slice % block != 0) {
    return std::string(expert_dtype == DType::I8 ? "int8" : dtype_name(expert_dtype)) +
           " expert weights come in blocks of " + std::to_string(block) +
           " columns, and at tp / ep = " + std::to_string(expert_tp) + " each rank would hold " +
           std::to_string(slice) + " of the " + std::to_string(moe_intermediate_size) +
           " columns of every expert's down_proj, which cuts a block: use --ep " + tp +
           " (whole experts per rank), a smaller tp / ep, or a store with unblocked (bf16) experts";
  }
  return "";
}

std::string experts_across_replicas_problem(int num_experts, int ep_size) {
  const std::string ep = std::to_string(ep_size);
  if (num_experts <= 0) {
    return "expert parallel size " + ep + " across replicas needs a mixture-of-experts model";
  }
  if (ep_size < 1 || num_experts % ep_size != 0) {
    return "expert parallel size " + ep + " does not divide the " + std::to_string(num_experts) +
           " experts";
  }
  return "";
}

void place_experts_across_replicas(ShardPlan& plan, const ModelConfig& config, int ep_size,
                                   int ep_rank) {
  ALEM_CHECK(plan.tp_size == 1 && plan.ep_size == 1,
             "experts across replicas are placed on a tp 1 plan without ep");
  ALEM_CHECK(ep_rank >= 0 && ep_rank < ep_size, "bad expert-parallel rank");
  const int experts = config.num_moe_layers() > 0 ? config.num_experts : 0;
  if (std::string why = experts_across_replicas_problem(experts, ep_size); !why.empty()) {
    ALEM_FAIL(why + (experts > 0 ? "" : " (" + config.architecture + " has no experts)"));
  }
  plan.ep_size = ep_size;
  plan.ep_rank = ep_rank;
  plan.num_local_experts = experts / ep_size;
  plan.expert_begin = ep_rank * plan.num_local_experts;
}

ShardPlan make_shard_plan(const ModelConfig& c, int tp_size, int tp_rank, int pp_size, int pp_rank,
                          bool int8_weights, const std::vector<int>& layers_per_stage, int ep_size,
                          std::optional<DType> expert_dtype) {
  ALEM_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size, "bad tensor-parallel rank");
  ALEM_CHECK(pp_size >= 1 && pp_rank >= 0 && pp_rank < pp_size, "bad pipeline-parallel rank");
  const std::string shape = " (model has " + std::to_string(c.num_heads) + " heads, " +
                            std::to_string(c.num_kv_heads) + " kv heads, intermediate " +
                            std::to_string(c.intermediate_size) + ", vocab " +
                            std::to_string(c.vocab_size) + ")";
  ShardPlan p;
  p.tp_size = tp_size;
  p.tp_rank = tp_rank;
  p.pp_size = pp_size;
  p.pp_rank = pp_rank;

  ALEM_CHECK(c.num_heads % tp_size == 0, "tensor parallel size " + std::to_string(tp_size) +
                                             " does not divide the attention heads" + shape +
                                             "; supported tp sizes divide the head count");
  p.num_heads = c.num_heads / tp_size;
  p.head_begin = tp_rank * p.num_heads;
  if (tp_size <= c.num_kv_heads) {
    ALEM_CHECK(c.num_kv_heads % tp_size == 0, "tensor parallel size " + std::to_string(tp_size) +
                                                  " does not divide the kv heads" + shape);
    p.num_kv_heads = c.num_kv_heads / tp_size;
    p.kv_head_begin = tp_rank * p.num_kv_heads;
  } else {
    ALEM_CHECK(tp_size % c.num_kv_heads == 0,
               "tensor parallel size " + std::to_string(tp_size) +
                   " exceeds the kv heads and is not a multiple of them" + shape);
    p.num_kv_heads = 1;  // replicated: tp/kv ranks share each kv head
    p.kv_head_begin = tp_rank / (tp_size / c.num_kv_heads);
  }
  ALEM_CHECK(p.num_heads % p.num_kv_heads == 0,
             "local query heads must be a multiple of local kv heads");

  const bool moe = c.num_moe_layers() > 0;
  if (std::string why = expert_parallel_problem(
          moe ? c.num_experts : 0, c.moe_intermediate_size, tp_size, ep_size,
          expert_dtype.value_or(int8_weights ? DType::I8 : DType::F32));
      !why.empty()) {
    ALEM_FAIL(why + (moe ? "" : " (" + c.architecture + " has no experts)"));
  }
  p.ep_size = ep_size;
  const int expert_tp = tp_size / ep_size;
  p.ep_rank = tp_rank / expert_tp;
  if (moe) {
    p.num_local_experts = c.num_experts / ep_size;
    p.expert_begin = p.ep_rank * p.num_local_experts;
    p.expert_ffn_size = c.moe_intermediate_size / expert_tp;
    p.expert_ffn_begin = (tp_rank % expert_tp) * p.expert_ffn_size;
  }
  if (moe && c.shared_expert_intermediate_size > 0) {
    ALEM_CHECK(c.shared_expert_intermediate_size % tp_size == 0,
               "tensor parallel size " + std::to_string(tp_size) +
                   " does not divide the shared expert's intermediate size " +
                   std::to_string(c.shared_expert_intermediate_size));
    p.shared_ffn_size = c.shared_expert_intermediate_size / tp_size;
    p.shared_ffn_begin = tp_rank * p.shared_ffn_size;
    ALEM_CHECK(!int8_weights || tp_size == 1 || p.shared_ffn_size % kInt8GroupSize == 0,
               "int8 and block weights need shared expert slices of whole 32-column groups at "
               "tp " +
                   std::to_string(tp_size));
  }
  const bool has_dense_ffn = c.num_moe_layers() < c.num_layers;
  ALEM_CHECK(!has_dense_ffn || c.intermediate_size % tp_size == 0,
             "tensor parallel size " + std::to_string(tp_size) +
                 " does not divide the FFN intermediate size" + shape);
  p.ffn_size = c.intermediate_size / tp_size;
  p.ffn_begin = tp_rank * p.ffn_size;
  ALEM_CHECK(c.vocab_size % tp_size == 0, "tensor parallel size " + std::to_string(tp_size) +
                                              " does not divide the vocabulary" + shape);
  p.vocab_size = c.vocab_size / tp_size;
  p.vocab_begin = tp_rank * p.vocab_size;
  if (int8_weights && tp_size > 1) {
    ALEM_CHECK((p.num_heads * c.head_dim) % kInt8GroupSize == 0 &&
                   (!has_dense_ffn || p.ffn_size % kInt8GroupSize == 0),
               "int8 weights need row-parallel slices of whole 32-column groups at tp " +
                   std::to_string(tp_size) + shape);
  }

  const std::vector<StageRange> stages = split_layers(c.num_layers, pp_size, layers_per_stage);
  p.first_layer = stages[pp_rank].first_layer;
  p.num_layers = stages[pp_rank].num_layers;
  return p;
}

}  // namespace alem
