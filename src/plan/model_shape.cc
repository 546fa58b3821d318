// Model shapes for the planner: parameter arithmetic, the named shapes, and the conversion from
// a stored model's config. Figures of the named shapes are those of the models' published
// config.json files (Qwen/Qwen3-*, meta-llama/Llama-3.1-70B, HuggingFaceTB/SmolLM2-135M).
#include "plan/model_shape.h"

#include <map>

#include "core/error.h"
#include "model/architecture.h"
#include "model/model_config.h"

namespace alem::plan {

int64_t ModelShape::attention_params_per_layer() const {
  const int64_t h = hidden_size, q = int64_t{num_heads} * head_dim,
                kv = int64_t{num_kv_heads} * head_dim;
  return h * q + 2 * h * kv + q * h;
}
int64_t ModelShape::dense_ffn_params() const {
  return 3 * int64_t{hidden_size} * intermediate_size;
}
int64_t ModelShape::expert_params() const {
  return is_moe() ? 3 * int64_t{hidden_size} * moe_intermediate_size : 0;
}
int64_t ModelShape::router_params() const {
  if (!is_moe()) return 0;
  return int64_t{hidden_size} * num_experts + (shared_expert_gate ? hidden_size : 0) +
         (router_bias ? num_experts : 0);
}
int64_t ModelShape::shared_expert_params() const {
  return is_moe() ? 3 * int64_t{hidden_size} * shared_expert_intermediate_size : 0;
}
int64_t ModelShape::shared_expert_params_total() const {
  return int64_t{is_moe() ? num_moe_layers : 0} * shared_expert_params();
}
int64_t ModelShape::expert_params_total() const {
  return is_moe() ? int64_t{num_moe_layers} * num_experts * expert_params() : 0;
}
int64_t ModelShape::active_expert_params_total() const {
  return is_moe() ? int64_t{num_moe_layers} * experts_per_token * expert_params() : 0;
}
int64_t ModelShape::router_params_total() const {
  return is_moe() ? int64_t{num_moe_layers} * router_params() : 0;
}
int64_t ModelShape::dense_ffn_params_total() const {
  return int64_t{dense_layers()} * dense_ffn_params();
}
int64_t ModelShape::dense_split_params_total() const {
  return int64_t{num_layers} * attention_params_per_layer() + dense_ffn_params_total() +
         shared_expert_params_total();
}
int64_t ModelShape::embedding_params() const {
  return int64_t{vocab_size} * hidden_size;
}
int64_t ModelShape::lm_head_params() const {
  return tie_word_embeddings ? 0 : int64_t{vocab_size} * hidden_size;
}
int64_t ModelShape::total_params() const {
  // The final RMSNorm besides the layers' small parameters (the stores count them).
  return dense_split_params_total() + expert_params_total() + router_params_total() +
         int64_t{num_layers} * small_params_per_layer + hidden_size + embedding_params() +
         lm_head_params();
}
int64_t ModelShape::active_params() const {
  // As model cards count "activated" parameters: everything but the experts a token skips.
  return total_params() - expert_params_total() + active_expert_params_total();
}
double ModelShape::kv_bytes_per_token() const {
  return 2.0 * num_layers * num_kv_heads * head_dim * kv_bytes_per_value;
}

void ModelShape::validate() const {
  auto positive = [&](int v, const char* field) {
    ALEM_CHECK(v > 0, "model shape '" + name + "': " + field + " must be positive, got " +
                          std::to_string(v));
  };
  positive(num_layers, "num_layers");
  positive(hidden_size, "hidden_size");
  positive(num_heads, "num_heads");
  positive(num_kv_heads, "num_kv_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  ALEM_CHECK(num_heads % num_kv_heads == 0,
             "model shape '" + name + "': num_heads " + std::to_string(num_heads) +
                 " is not a multiple of num_kv_heads " + std::to_string(num_kv_heads));
  ALEM_CHECK(num_moe_layers >= 0 && num_moe_layers <= num_layers,
             "model shape '" + name + "': num_moe_layers must be 0.." + std::to_string(num_layers));
  if (num_experts > 0) {
    positive(moe_intermediate_size, "moe_intermediate_size");
    ALEM_CHECK(experts_per_token >= 1 && experts_per_token <= num_experts,
               "model shape '" + name + "': experts_per_token must be 1.." +
                   std::to_string(num_experts) + ", got " + std::to_string(experts_per_token));
  }
  if (dense_layers() > 0) positive(intermediate_size, "intermediate_size");
  ALEM_CHECK(weight_bytes_per_param > 0 && kv_bytes_per_value > 0,
             "model shape '" + name + "': bytes per weight and per KV value must be positive");
}

double weight_bytes_for_dtype(const std::string& dtype) {
  if (dtype == "f32") return 4;
  if (dtype == "bf16" || dtype == "f16") return 2;
  if (dtype == "int8" || dtype == "i8") return 1 + 4.0 / 32;
  // GGUF blocks kept as they are (Q4_0 and IQ4_NL 18, Q4_1 20, Q5_0 22, Q5_1 24, Q8_0 34 bytes
  // per 32 weights).
  if (dtype == "q4_0" || dtype == "iq4_nl") return 18.0 / 32;
  if (dtype == "q4_1") return 20.0 / 32;
  if (dtype == "q5_0") return 22.0 / 32;
  if (dtype == "q5_1") return 24.0 / 32;
  if (dtype == "q8_0") return 34.0 / 32;
  // Super-blocks: 144 / 176 / 210 / 136 / 110 bytes per 256 weights (Q4_K, Q5_K, Q6_K, IQ4_XS,
  // Q3_K).
  if (dtype == "q4_k") return 144.0 / 256;
  if (dtype == "q5_k") return 176.0 / 256;
  if (dtype == "q6_k") return 210.0 / 256;
  if (dtype == "iq4_xs") return 136.0 / 256;
  if (dtype == "q3_k") return 110.0 / 256;
  ALEM_FAIL(
      "unknown weight dtype '" + dtype +
      "' (expected f32, bf16, f16, int8, q4_0, q4_1, q5_0, q5_1, q8_0, q3_k, q4_k, q5_k, q6_k, "
            "iq4_nl or iq4_xs)");
}

namespace {

ModelShape dense(const char* name, int layers, int hidden, int heads, int kv, int head_dim,
                 int inter, int vocab, bool tied) {
  ModelShape s;
  s.name = name;
  s.num_layers = layers;
  s.hidden_size = hidden;
  s.num_heads = heads;
  s.num_kv_heads = kv;
  s.head_dim = head_dim;
  s.intermediate_size = inter;
  s.vocab_size = vocab;
  s.tie_word_embeddings = tied;
  s.small_params_per_layer = 2 * int64_t{hidden};  // the two RMSNorm weights
  return s;
}

// Qwen3 (dense and MoE) adds a per-head RMSNorm on q and k.
ModelShape qwen3(ModelShape s) {
  s.small_params_per_layer += 2 * int64_t{s.head_dim};
  return s;
}

ModelShape moe(const char* name, int layers, int hidden, int heads, int kv, int head_dim,
               int experts, int top_k, int expert_inter, int vocab) {
  ModelShape s = dense(name, layers, hidden, heads, kv, head_dim, 0, vocab, false);
  s.num_experts = experts;
  s.experts_per_token = top_k;
  s.moe_intermediate_size = expert_inter;
  s.num_moe_layers = layers;  // decoder_sparse_step 1, no mlp_only_layers
  return qwen3(s);
}

const std::map<std::string, ModelShape>& named_shapes() {
  static const std::map<std::string, ModelShape> shapes = {
      {"smollm2-135m", dense("smollm2-135m", 30, 576, 9, 3, 64, 1536, 49152, true)},
      {"qwen3-8b", qwen3(dense("qwen3-8b", 36, 4096, 32, 8, 128, 12288, 151936, false))},
      {"qwen3-32b", qwen3(dense("qwen3-32b", 64, 5120, 64, 8, 128, 25600, 151936, false))},
      {"llama-3.1-70b", dense("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, false)},
      {"qwen3-30b-a3b", moe("qwen3-30b-a3b", 48, 2048, 32, 4, 128, 128, 8, 768, 151936)},
      {"qwen3-235b-a22b", moe("qwen3-235b-a22b", 94, 4096, 64, 4, 128, 128, 8, 1536, 151936)},
  };
  return shapes;
}

}  // namespace

std::vector<std::string> named_shape_names() {
  std::vector<std::string> names;
  for (const auto& [name, shape] : named_shapes()) names.push_back(name);
  return names;
}

ModelShape named_shape(const std::string& name) {
  const auto& shapes = named_shapes();
  const auto it = shapes.find(name);
  if (it == shapes.end()) {
    std::string known;
    for (const auto& n : named_shape_names()) known += (known.empty() ? "" : ", ") + n;
    ALEM_FAIL("unknown model '" + name + "': give a model store (.h5) or one of " + known);
  }
  return it->second;
}

ModelShape shape_from_config(const ModelConfig& c, const std::string& weight_dtype) {
  ModelShape s = dense(c.name.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
                       c.head_dim, c.intermediate_size, c.vocab_size, c.tie_word_embeddings);
  s.num_experts = c.num_experts;
  s.experts_per_token = c.num_experts_per_tok;
  s.moe_intermediate_size = c.moe_intermediate_size;
  s.num_moe_layers = c.num_experts > 0 ? c.num_moe_layers() : 0;
  if (c.num_experts > 0) {
    const MoeFamily& family = moe_family(c);
    s.shared_expert_intermediate_size = c.shared_expert_intermediate_size;
    s.shared_expert_gate =
        c.shared_expert_intermediate_size > 0 && !family.shared_expert_gate.empty();
    s.router_bias = !family.router_bias.empty();
  }
  const int64_t q = int64_t{c.num_heads} * c.head_dim, kv = int64_t{c.num_kv_heads} * c.head_dim;
  s.small_params_per_layer = 2 * int64_t{c.hidden_size} + (c.qk_norm ? 2 * c.head_dim : 0) +
                             (c.attention_bias ? q + 2 * kv : 0);
  s.weight_dtype = weight_dtype;
  s.weight_bytes_per_param = weight_bytes_for_dtype(weight_dtype);
  return s;
}

}  // namespace alem::plan
