// The architecture hyper-parameters of a Llama-family model, as read from GGUF metadata,
// a Hugging Face config.json, or the HDF5 model store. One struct for Llama, Qwen2 (QKV bias),
// Qwen3 (QK-norm) and Qwen3-MoE (router + experts in sparse layers); validate() rejects shapes
// the engine cannot run. The families themselves are listed in model/architecture.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace alem {

struct RopeScaling {
  std::string type = "none";  // "none" or "llama3"
  float factor = 1.f;
  float low_freq_factor = 1.f;
  float high_freq_factor = 4.f;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string architecture =
      "llama";       // "llama", "qwen2", "qwen3", "qwen3moe", "qwen2moe", "mixtral"
  std::string name;  // human-readable, e.g. "SmolLM2-135M-Instruct"
  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  bool qk_norm = false;         // per-head RMSNorm on q and k before RoPE (Qwen3)
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  // Sliding-window attention (Mixtral, when config.json sets it): each position attends to the
  // last `sliding_window` positions. 0: none. The engine computes contexts up to the window
  // (context_limit()), where the window changes nothing.
  int sliding_window = 0;
  // Mixture of experts (qwen3moe, mixtral; zero/empty otherwise; Mixtral: every layer sparse,
  // norm_topk_prob always true). A layer is sparse when it is not in
  // mlp_only_layers and (layer + 1) % decoder_sparse_step == 0, as in transformers; dense layers
  // use intermediate_size, sparse ones route each token to num_experts_per_tok of num_experts
  // experts of moe_intermediate_size (softmax over the router logits, top-k, and when
  // norm_topk_prob the k weights renormalised to sum to 1).
  int num_experts = 0;
  int num_experts_per_tok = 0;
  int moe_intermediate_size = 0;
  bool norm_topk_prob = false;
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;
  // Qwen2-MoE's shared expert: every token of a sparse layer also goes through one SiLU FFN of
  // this size, scaled by sigmoid(shared_expert_gate . x) (model/architecture.h). 0: none.
  int shared_expert_intermediate_size = 0;
  // DeepSeek-V3 routing (MoeRoutingRule::kGroupedSigmoid; engine/moe_routing.h): the experts in
  // n_group equal groups of which topk_group are kept per token, and the factor the routed
  // experts' weights are multiplied by. 1, 1, 1 for the softmax families.
  int n_group = 1;
  int topk_group = 1;
  float routed_scaling_factor = 1.f;

  bool is_moe_layer(int layer) const;
  int num_moe_layers() const;
  // The longest context the engine runs: max_position_embeddings, or the sliding window when
  // it is shorter (attention past the window is not implemented, so it is not allowed).
  int context_limit() const;

  // Throws alem::Error naming the first inconsistent field.
  void validate() const;
  // JSON text with every field (stored inside the HDF5 file as an attribute).
  std::string to_json() const;
  static ModelConfig from_json(const std::string& json_text);
  // Reads a Hugging Face config.json (the subset of keys above; unknown architectures rejected).
  static ModelConfig from_hf_config_json(const std::string& json_text);
  // Total parameter count implied by the shapes.
  int64_t parameter_count() const;
  // Parameters one token touches: every dense weight, the router, and num_experts_per_tok
  // experts per sparse layer (embedding and LM head counted whole, as parameter_count() does).
  // Equal to parameter_count() when dense.
  int64_t active_parameter_count() const;
};

// Canonical tensor names in the model store (Hugging Face naming).
std::string layer_tensor_name(int layer, const std::string& suffix);  // "model.layers.{i}.{suffix}"

}  // namespace alem
