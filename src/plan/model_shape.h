// The shape of a model as the planner needs it: layer sizes, attention and KV heads, dense or
// mixture-of-experts FFN, weight and KV dtypes. It comes from a model store's config or from a
// named shape (the Qwen3 family, Llama 3.1 70B, SmolLM2), so a layout can be planned for a model
// that is not on this machine. Parameter counts follow the Hugging Face configs' tensors.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace alem {
struct ModelConfig;
}

namespace alem::plan {

struct ModelShape {
  std::string name;
  int num_layers = 0;
  int hidden_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;      // dense FFN width (of the dense layers of an MoE model too)
  int num_experts = 0;            // 0: dense
  int experts_per_token = 0;      // routed experts each token uses (top-k)
  int moe_intermediate_size = 0;  // FFN width of one expert
  // Sparse (MoE) layers; the other num_layers - num_moe_layers run the dense FFN. A store's
  // config decides them as the engine does (decoder_sparse_step, mlp_only_layers).
  int num_moe_layers = 0;
  // Shared experts (Qwen2-MoE, dots.llm1): an FFN of this width that every token of a sparse
  // layer runs beside its routed experts, split over tp like a dense FFN; 0: none. Qwen2-MoE
  // scales it by a gate ([1][hidden], replicated like the router); DeepSeek-V3 routing adds a
  // score correction bias ([num_experts]) to each router.
  int shared_expert_intermediate_size = 0;
  bool shared_expert_gate = false;
  bool router_bias = false;
  int64_t small_params_per_layer = 0;  // RMSNorm weights, QK-norm, attention biases
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  double weight_bytes_per_param = 2;  // bf16 2, f32 4, int8 1 + 4/32 for its scales
  double kv_bytes_per_value = 2;      // the engine keeps its KV cache in bf16 (f32: 4)
  double activation_bytes = 4;        // activations (and what TP/PP collectives carry)
  std::string weight_dtype = "bf16";

  bool is_moe() const { return num_experts > 0 && num_moe_layers > 0; }
  int dense_layers() const { return num_layers - (is_moe() ? num_moe_layers : 0); }
  // Parameters of one layer's attention (q, k, v, o projections).
  int64_t attention_params_per_layer() const;
  int64_t dense_ffn_params() const;      // one dense layer's FFN (gate, up, down)
  int64_t expert_params() const;         // one expert's FFN (gate, up, down); 0 when dense
  int64_t router_params() const;         // one sparse layer's router (with a shared-expert gate and
                                         // a correction bias); 0 when dense
  int64_t shared_expert_params() const;  // one sparse layer's shared experts; 0 when none
  // Over all layers: the experts' parameters (every expert), those one token runs, and the
  // routers; the dense FFNs of the dense layers.
  int64_t expert_params_total() const;
  int64_t active_expert_params_total() const;
  int64_t router_params_total() const;
  int64_t dense_ffn_params_total() const;
  int64_t shared_expert_params_total() const;
  // Parameters every token runs that tp splits: attention, dense FFNs and shared experts, over
  // all layers.
  int64_t dense_split_params_total() const;
  int64_t embedding_params() const;  // the input table
  int64_t lm_head_params() const;    // the output table (0 extra when tied: counted once)
  int64_t total_params() const;
  int64_t active_params() const;  // as model cards count them: all but the unused experts
  // KV cache bytes one token occupies over all layers (K and V).
  double kv_bytes_per_token() const;

  // Throws alem::Error naming the first field that makes the shape impossible.
  void validate() const;
};

// "bf16", "f32", "f16", "int8" -> bytes per weight (int8 with its f32 scale per group of 32).
double weight_bytes_for_dtype(const std::string& dtype);

// The named shapes `alem plan --model NAME` knows.
std::vector<std::string> named_shape_names();
// Throws alem::Error listing the known names when `name` is not one.
ModelShape named_shape(const std::string& name);
// The shape of a stored model (weights dtype as stored).
ModelShape shape_from_config(const ModelConfig& config, const std::string& weight_dtype);

}  // namespace alem::plan
