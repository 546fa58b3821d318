// The family table, the families refused by name, and each family's tensor list (see
// architecture.h).
#include "model/architecture.h"

#include "core/error.h"
#include "model/model_config.h"

namespace alem {

const std::vector<ArchitectureInfo>& supported_architectures() {
  static const std::vector<ArchitectureInfo> table = {
      {"llama", "LlamaForCausalLM", "llama", false, false, false, false},
      {"qwen2", "Qwen2ForCausalLM", "qwen2", true, false, false, false},
      {"qwen3", "Qwen3ForCausalLM", "qwen3", false, true, false, false},
      {"qwen3moe",
       "Qwen3MoeForCausalLM",
       "qwen3_moe",
       false,
       true,
       true,
       false,
       {"mlp.gate.weight", "mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
        "moe_intermediate_size", false, true}},
      {"qwen2moe",
       "Qwen2MoeForCausalLM",
       "qwen2_moe",
       true,
       false,
       true,
       false,
       {"mlp.gate.weight", "mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
        "moe_intermediate_size", false, true, "mlp.shared_expert.",
        "mlp.shared_expert_gate.weight"}},
      {"mixtral",
       "MixtralForCausalLM",
       "mixtral",
       false,
       false,
       true,
       true,
       {"block_sparse_moe.gate.weight", "block_sparse_moe.experts.", "w1.weight", "w3.weight",
        "w2.weight", "intermediate_size", true, false},
       "llama"},
      {"dots1",
       "Dots1ForCausalLM",
       "dots1",
       false,
       true,
       true,
       false,
       {"mlp.gate.weight", "mlp.experts.", "gate_proj.weight", "up_proj.weight", "down_proj.weight",
        "moe_intermediate_size", false, false, "mlp.shared_experts.", "",
        MoeRoutingRule::kGroupedSigmoid, "mlp.gate.e_score_correction_bias",
        "first_k_dense_replace", "n_shared_experts"}},
  };
  return table;
}

const std::vector<RefusedArchitecture>& refused_architectures() {
  static const char* const kMla =
      "its attention is multi-head latent attention (MLA: queries and keys/values through "
      "low-rank compressions with a separate rotary part), which alem does not implement; its "
      "routing (DeepSeek-V3's grouped sigmoid) is supported, e.g. in Dots1ForCausalLM";
  static const std::vector<RefusedArchitecture> table = {
      {"DeepseekV3ForCausalLM", "deepseek_v3", kMla},
      {"DeepseekV2ForCausalLM", "deepseek_v2", kMla},
      {"Glm4MoeForCausalLM", "glm4_moe",
       "its attention rotates only part of each head (partial_rotary_factor), which alem's RoPE "
       "does not implement; its routing (DeepSeek-V3's grouped sigmoid) is supported, e.g. in "
       "Dots1ForCausalLM"},
  };
  return table;
}

const RefusedArchitecture* find_refused_architecture(std::string_view hf_class,
                                                     std::string_view model_type) {
  for (const RefusedArchitecture& a : refused_architectures()) {
    if (hf_class.empty() ? a.hf_model_type == model_type : a.hf_class == hf_class) return &a;
  }
  return nullptr;
}

const ArchitectureInfo* find_architecture(std::string_view name) {
  for (const ArchitectureInfo& a : supported_architectures())
    if (a.name == name) return &a;
  return nullptr;
}

const ArchitectureInfo* find_hf_architecture(std::string_view hf_class,
                                             std::string_view model_type) {
  for (const ArchitectureInfo& a : supported_architectures()) {
    if (hf_class.empty() ? a.hf_model_type == model_type : a.hf_class == hf_class) return &a;
  }
  return nullptr;
}

std::string architecture_names(bool hf_class_names) {
  std::string out;
  for (const ArchitectureInfo& a : supported_architectures()) {
    out += (out.empty() ? "" : ", ") + std::string(hf_class_names ? a.hf_class : a.name);
  }
  return out;
}

const MoeFamily& moe_family(const ModelConfig& config) {
  const ArchitectureInfo* arch = find_architecture(config.architecture);
  ALEM_CHECK(arch != nullptr && arch->mixture_of_experts,
             "architecture '" + config.architecture + "' has no experts");
  return arch->moe;
}

std::string expert_tensor_name(const ModelConfig& config, int layer, int expert,
                               ExpertMatrix which) {
  const MoeFamily& f = moe_family(config);
  const std::string_view matrix = which == ExpertMatrix::kGate ? f.gate
                                  : which == ExpertMatrix::kUp ? f.up
                                                               : f.down;
  return layer_tensor_name(
      layer, std::string(f.experts) + std::to_string(expert) + "." + std::string(matrix));
}

std::string shared_expert_tensor_name(const ModelConfig& config, int layer, ExpertMatrix which) {
  const MoeFamily& f = moe_family(config);
  ALEM_CHECK(!f.shared_expert.empty(), config.architecture + " has no shared expert");
  const std::string_view matrix = which == ExpertMatrix::kGate ? f.gate
                                  : which == ExpertMatrix::kUp ? f.up
                                                               : f.down;
  return layer_tensor_name(layer, std::string(f.shared_expert) + std::string(matrix));
}

std::string shared_expert_gate_tensor_name(const ModelConfig& config, int layer) {
  const MoeFamily& f = moe_family(config);
  ALEM_CHECK(!f.shared_expert_gate.empty(), config.architecture + " has no shared expert");
  return layer_tensor_name(layer, std::string(f.shared_expert_gate));
}

std::string router_bias_tensor_name(const ModelConfig& config, int layer) {
  const MoeFamily& f = moe_family(config);
  ALEM_CHECK(!f.router_bias.empty(), config.architecture + " has no router score correction bias");
  return layer_tensor_name(layer, std::string(f.router_bias));
}

std::string router_tensor_name(const ModelConfig& config, int layer) {
  return layer_tensor_name(layer, std::string(moe_family(config).router));
}

std::vector<ExpectedTensor> expected_tensors(const ModelConfig& c) {
  using R = ShardRule;
  const int64_t h = c.hidden_size;
  const int64_t q_out = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_out = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  std::vector<ExpectedTensor> t;
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, h}, R::kVocabParallel});
  for (int i = 0; i < c.num_layers; ++i) {
    auto name = [i](const char* suffix) { return layer_tensor_name(i, suffix); };
    t.push_back({name("input_layernorm.weight"), {h}, R::kReplicated});
    t.push_back({name("self_attn.q_proj.weight"), {q_out, h}, R::kColumnParallel});
    t.push_back({name("self_attn.k_proj.weight"), {kv_out, h}, R::kColumnParallel});
    t.push_back({name("self_attn.v_proj.weight"), {kv_out, h}, R::kColumnParallel});
    t.push_back({name("self_attn.o_proj.weight"), {h, q_out}, R::kRowParallel});
    if (c.attention_bias) {
      t.push_back({name("self_attn.q_proj.bias"), {q_out}, R::kColumnParallel});
      t.push_back({name("self_attn.k_proj.bias"), {kv_out}, R::kColumnParallel});
      t.push_back({name("self_attn.v_proj.bias"), {kv_out}, R::kColumnParallel});
    }
    if (c.qk_norm) {
      t.push_back({name("self_attn.q_norm.weight"), {c.head_dim}, R::kReplicated});
      t.push_back({name("self_attn.k_norm.weight"), {c.head_dim}, R::kReplicated});
    }
    t.push_back({name("post_attention_layernorm.weight"), {h}, R::kReplicated});
    if (c.is_moe_layer(i)) {
      const int64_t f = c.moe_intermediate_size;
      t.push_back({router_tensor_name(c, i), {c.num_experts, h}, R::kReplicated});
      if (!moe_family(c).router_bias.empty()) {
        t.push_back({router_bias_tensor_name(c, i), {c.num_experts}, R::kReplicated});
      }
      for (int e = 0; e < c.num_experts; ++e) {
        using M = ExpertMatrix;
        t.push_back({expert_tensor_name(c, i, e, M::kGate), {f, h}, R::kExpertColumn});
        t.push_back({expert_tensor_name(c, i, e, M::kUp), {f, h}, R::kExpertColumn});
        t.push_back({expert_tensor_name(c, i, e, M::kDown), {h, f}, R::kExpertRow});
      }
      if (c.shared_expert_intermediate_size > 0) {  // split over tp like a dense FFN
        using M = ExpertMatrix;
        const int64_t s = c.shared_expert_intermediate_size;
        t.push_back({shared_expert_tensor_name(c, i, M::kGate), {s, h}, R::kColumnParallel});
        t.push_back({shared_expert_tensor_name(c, i, M::kUp), {s, h}, R::kColumnParallel});
        t.push_back({shared_expert_tensor_name(c, i, M::kDown), {h, s}, R::kRowParallel});
        if (!moe_family(c).shared_expert_gate.empty()) {
          t.push_back({shared_expert_gate_tensor_name(c, i), {1, h}, R::kReplicated});
        }
      }
    } else {
      const int64_t f = c.intermediate_size;
      t.push_back({name("mlp.gate_proj.weight"), {f, h}, R::kColumnParallel});
      t.push_back({name("mlp.up_proj.weight"), {f, h}, R::kColumnParallel});
      t.push_back({name("mlp.down_proj.weight"), {h, f}, R::kRowParallel});
    }
  }
  t.push_back({"model.norm.weight", {h}, R::kReplicated});
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {c.vocab_size, h}, R::kVocabParallel});
  return t;
}

}  // namespace alem
