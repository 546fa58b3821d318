// ModelConfig: validation, the JSON form stored in the model store, and the mapping from a
// Hugging Face config.json (Llama, Qwen2, Qwen3; transformers 4.x "rope_theta"/"rope_scaling"
// keys and 5.x "rope_parameters" both accepted).
#include "model/model_config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/json_input.h"
#include "model/architecture.h"

namespace alem {
namespace {

using nlohmann::json;

void check_positive(int value, const char* field) {
  ALEM_CHECK(value > 0, std::string("model config: ") + field + " must be positive, got " +
                            std::to_string(value));
}

json parse_json(const std::string& text, const std::string& what) {
  try {
    return parse_json_bounded(text);  // bounded nesting: deep JSON is an error, not a crash
  } catch (const JsonInputError& e) {
    ALEM_FAIL(what + " is not valid JSON: " + e.what());
  }
}

// A JSON value as T, with its type and range checked first: nlohmann's get<int>() of 1e66 or
// get<float>() of 1e300 is undefined behaviour (found by tests/fuzz/fuzz_model_config), and
// get<int>() of a string throws a json exception instead of alem::Error.
template <typename T>
T checked(const json& v, const std::string& what) {
  if constexpr (std::is_same_v<T, bool>) {
    ALEM_CHECK(v.is_boolean(), what + " is not true or false");
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    ALEM_CHECK(v.is_number_integer(), what + " is not an integer");
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      ALEM_CHECK(u <= static_cast<uint64_t>(std::numeric_limits<T>::max()),
                 what + " is out of range");
      return static_cast<T>(u);
    }
    const int64_t i = v.get<int64_t>();
    ALEM_CHECK(i >= std::numeric_limits<T>::min() && i <= std::numeric_limits<T>::max(),
               what + " is out of range");
    return static_cast<T>(i);
  } else if constexpr (std::is_floating_point_v<T>) {
    ALEM_CHECK(v.is_number(), what + " is not a number");
    const double d = v.get<double>();
    ALEM_CHECK(std::isfinite(d) && std::fabs(d) <= std::numeric_limits<T>::max(),
               what + " is out of range");
    return static_cast<T>(d);
  } else if constexpr (std::is_same_v<T, std::string>) {
    ALEM_CHECK(v.is_string(), what + " is not a string");
    return v.get<std::string>();
  } else {
    static_assert(std::is_same_v<T, std::vector<int>>);
    ALEM_CHECK(v.is_array(), what + " is not an array");
    std::vector<int> out;
    for (const json& e : v) out.push_back(checked<int>(e, what + " element"));
    return out;
  }
}

template <typename T>
T required(const json& j, const char* key, const std::string& what) {
  auto it = j.find(key);
  ALEM_CHECK(it != j.end() && !it->is_null(), what + " has no '" + key + "'");
  return checked<T>(*it, what + ": '" + key + "'");
}

template <typename T>
T optional(const json& j, const char* key, T fallback, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return checked<T>(*it, what + ": '" + key + "'");
}

// A float as the double with the same shortest decimal form (1e-5f -> 1e-05, not
// 9.999999747378752e-06), so the stored JSON reads as written in config.json.
double shortest_double(float value) {
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  return std::stod(std::string(buf, result.ptr));
}

// Families without a sliding-window switch whose config.json can still ask for sliding layers
// (dots.llm1: "layer_types", or "sliding_window" from layer "max_window_layers" on, as
// transformers reads them) are refused unless every layer attends fully.
void check_full_attention(const json& j, const ModelConfig& c, const ArchitectureInfo& arch,
                          const std::string& what) {
  if (arch.sliding_window) return;
  if (auto it = j.find("layer_types"); it != j.end() && it->is_array()) {
    for (const json& t : *it) {
      const std::string type = checked<std::string>(t, what + ": 'layer_types' element");
      ALEM_CHECK(type == "full_attention", what + ": layer_types has '" + type +
                                               "' layers, but alem runs " + c.architecture +
                                               " with full attention only");
    }
    return;
  }
  if (j.contains("max_window_layers") && j.contains("sliding_window") &&
      !j.at("sliding_window").is_null()) {
    ALEM_CHECK(optional<int>(j, "max_window_layers", 0, what) >= c.num_layers,
               what + ": sliding_window applies from layer max_window_layers on, but alem runs " +
                   c.architecture + " with full attention only");
  }
}

// mlp_only_layers is 0..k-1 (DeepSeek-V3's first_k_dense_replace) and the family has that key.
bool leading_layers(const std::vector<int>& layers, const MoeFamily& moe) {
  if (moe.leading_dense_key.empty()) return false;
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i] != static_cast<int>(i)) return false;
  return true;
}

// The routing fields of a mixture-of-experts config (engine/moe_routing.h).
void validate_routing(const ModelConfig& c, const MoeFamily& moe) {
  const std::string where = "model config: " + c.architecture;
  if (moe.routing == MoeRoutingRule::kSoftmax) {
    ALEM_CHECK(c.n_group == 1 && c.topk_group == 1 && c.routed_scaling_factor == 1.f,
               where +
                   " routes by softmax: n_group, topk_group and routed_scaling_factor "
                   "belong to DeepSeek-V3 routing and must be 1");
    return;
  }
  check_positive(c.n_group, "n_group");
  check_positive(c.topk_group, "topk_group");
  ALEM_CHECK(c.num_experts % c.n_group == 0 && c.num_experts / c.n_group >= 2,
             where + ": n_group " + std::to_string(c.n_group) + " must divide the " +
                 std::to_string(c.num_experts) + " experts into groups of 2 or more");
  ALEM_CHECK(c.topk_group <= c.n_group, where + ": topk_group " + std::to_string(c.topk_group) +
                                            " exceeds n_group " + std::to_string(c.n_group));
  ALEM_CHECK(c.topk_group * (c.num_experts / c.n_group) >= c.num_experts_per_tok,
             where + ": topk_group " + std::to_string(c.topk_group) + " groups of " +
                 std::to_string(c.num_experts / c.n_group) + " experts cannot give " +
                 std::to_string(c.num_experts_per_tok) + " experts per token");
  ALEM_CHECK(c.routed_scaling_factor > 0.f, where + ": routed_scaling_factor must be positive");
}

}  // namespace

void ModelConfig::validate() const {
  const ArchitectureInfo* arch = find_architecture(architecture);
  ALEM_CHECK(arch != nullptr, "model config: architecture '" + architecture + "' is not one of " +
                                  architecture_names());
  check_positive(vocab_size, "vocab_size");
  check_positive(hidden_size, "hidden_size");
  check_positive(num_layers, "num_layers");
  check_positive(num_heads, "num_heads");
  check_positive(num_kv_heads, "num_kv_heads");
  check_positive(head_dim, "head_dim");
  check_positive(intermediate_size, "intermediate_size");
  check_positive(max_position_embeddings, "max_position_embeddings");
  ALEM_CHECK(num_heads % num_kv_heads == 0, "model config: num_heads " + std::to_string(num_heads) +
                                                " is not a multiple of num_kv_heads " +
                                                std::to_string(num_kv_heads));
  ALEM_CHECK(head_dim % 2 == 0,
             "model config: head_dim must be even for RoPE, got " + std::to_string(head_dim));
  ALEM_CHECK(rms_norm_eps > 0.f, "model config: rms_norm_eps must be positive");
  ALEM_CHECK(rope_theta > 0.f, "model config: rope_theta must be positive");
  ALEM_CHECK(rope_scaling.type == "none" || rope_scaling.type == "llama3",
             "model config: rope scaling type '" + rope_scaling.type +
                 "' is not supported (none or llama3)");
  if (rope_scaling.type == "llama3") {
    ALEM_CHECK(rope_scaling.factor > 0.f && rope_scaling.low_freq_factor > 0.f &&
                   rope_scaling.high_freq_factor > rope_scaling.low_freq_factor &&
                   rope_scaling.original_max_position > 0,
               "model config: llama3 rope scaling needs factor > 0, high_freq_factor > "
               "low_freq_factor > 0 and original_max_position > 0");
  }
  ALEM_CHECK(bos_token_id >= -1 && bos_token_id < vocab_size,
             "model config: bos_token_id " + std::to_string(bos_token_id) +
                 " is outside the vocabulary of " + std::to_string(vocab_size));
  for (int id : eos_token_ids) {
    ALEM_CHECK(id >= 0 && id < vocab_size, "model config: eos token id " + std::to_string(id) +
                                               " is outside the vocabulary of " +
                                               std::to_string(vocab_size));
  }
  ALEM_CHECK(sliding_window >= 0, "model config: sliding_window must not be negative");
  if (!arch->mixture_of_experts) {
    ALEM_CHECK(num_experts == 0 && num_experts_per_tok == 0 && moe_intermediate_size == 0 &&
                   mlp_only_layers.empty(),
               "model config: architecture '" + architecture +
                   "' has no experts, but the config "
                   "sets num_experts/num_experts_per_tok/moe_intermediate_size/mlp_only_layers");
    ALEM_CHECK(shared_expert_intermediate_size == 0,
               "model config: architecture '" + architecture + "' has no shared expert");
    return;
  }
  if (arch->moe.shared_expert.empty()) {
    ALEM_CHECK(shared_expert_intermediate_size == 0,
               "model config: architecture '" + architecture + "' has no shared expert");
  } else {
    check_positive(shared_expert_intermediate_size, "shared_expert_intermediate_size");
  }
  check_positive(num_experts, "num_experts");
  check_positive(num_experts_per_tok, "num_experts_per_tok");
  validate_routing(*this, arch->moe);
  check_positive(moe_intermediate_size, "moe_intermediate_size");
  check_positive(decoder_sparse_step, "decoder_sparse_step");
  ALEM_CHECK(num_experts_per_tok <= num_experts,
             "model config: num_experts_per_tok " + std::to_string(num_experts_per_tok) +
                 " exceeds num_experts " + std::to_string(num_experts));
  for (int layer : mlp_only_layers) {
    ALEM_CHECK(layer >= 0 && layer < num_layers, "model config: mlp_only_layers names layer " +
                                                     std::to_string(layer) + ", outside the " +
                                                     std::to_string(num_layers) + " layers");
  }
  ALEM_CHECK(!arch->moe.always_norm_topk || norm_topk_prob,
             "model config: " + architecture +
                 " always renormalises its top-k routing weights, "
                 "but norm_topk_prob is false");
  ALEM_CHECK(arch->moe.dense_layer_switches ||
                 (decoder_sparse_step == 1 &&
                  (mlp_only_layers.empty() || leading_layers(mlp_only_layers, arch->moe))),
             "model config: every layer of " + architecture + " is sparse" +
                 (arch->moe.leading_dense_key.empty() ? "" : " but the first few") +
                 ", but decoder_sparse_step/mlp_only_layers make others dense");
}

int ModelConfig::context_limit() const {
  return sliding_window > 0 ? std::min(max_position_embeddings, sliding_window)
                            : max_position_embeddings;
}

bool ModelConfig::is_moe_layer(int layer) const {
  if (num_experts <= 0 || decoder_sparse_step <= 0) return false;
  for (int dense : mlp_only_layers)
    if (dense == layer) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (int l = 0; l < num_layers; ++l) n += is_moe_layer(l) ? 1 : 0;
  return n;
}

std::string ModelConfig::to_json() const {
  json j;
  j["architecture"] = architecture;
  j["name"] = name;
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_layers"] = num_layers;
  j["num_heads"] = num_heads;
  j["num_kv_heads"] = num_kv_heads;
  j["head_dim"] = head_dim;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = shortest_double(rms_norm_eps);
  j["rope_theta"] = shortest_double(rope_theta);
  j["rope_scaling"] = {{"type", rope_scaling.type},
                       {"factor", shortest_double(rope_scaling.factor)},
                       {"low_freq_factor", shortest_double(rope_scaling.low_freq_factor)},
                       {"high_freq_factor", shortest_double(rope_scaling.high_freq_factor)},
                       {"original_max_position", rope_scaling.original_max_position}};
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["qk_norm"] = qk_norm;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_ids"] = eos_token_ids;
  if (sliding_window > 0) j["sliding_window"] = sliding_window;
  if (num_experts > 0) {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    j["decoder_sparse_step"] = decoder_sparse_step;
    j["mlp_only_layers"] = mlp_only_layers;
    if (shared_expert_intermediate_size > 0) {
      j["shared_expert_intermediate_size"] = shared_expert_intermediate_size;
    }
    if (n_group != 1 || topk_group != 1 || routed_scaling_factor != 1.f) {
      j["n_group"] = n_group;
      j["topk_group"] = topk_group;
      j["routed_scaling_factor"] = shortest_double(routed_scaling_factor);
    }
  }
  return j.dump();
}

ModelConfig ModelConfig::from_json(const std::string& json_text) {
  const std::string what = "model config JSON";
  const json j = parse_json(json_text, what);
  ALEM_CHECK(j.is_object(), what + " is not an object");
  ModelConfig c;
  c.architecture = required<std::string>(j, "architecture", what);
  c.name = optional<std::string>(j, "name", "", what);
  c.vocab_size = required<int>(j, "vocab_size", what);
  c.hidden_size = required<int>(j, "hidden_size", what);
  c.num_layers = required<int>(j, "num_layers", what);
  c.num_heads = required<int>(j, "num_heads", what);
  c.num_kv_heads = required<int>(j, "num_kv_heads", what);
  c.head_dim = required<int>(j, "head_dim", what);
  c.intermediate_size = required<int>(j, "intermediate_size", what);
  c.max_position_embeddings = required<int>(j, "max_position_embeddings", what);
  c.rms_norm_eps = required<float>(j, "rms_norm_eps", what);
  c.rope_theta = required<float>(j, "rope_theta", what);
  if (auto it = j.find("rope_scaling"); it != j.end() && it->is_object()) {
    const json& r = *it;
    c.rope_scaling.type = optional<std::string>(r, "type", "none", what);
    c.rope_scaling.factor = optional<float>(r, "factor", 1.f, what);
    c.rope_scaling.low_freq_factor = optional<float>(r, "low_freq_factor", 1.f, what);
    c.rope_scaling.high_freq_factor = optional<float>(r, "high_freq_factor", 4.f, what);
    c.rope_scaling.original_max_position = optional<int>(r, "original_max_position", 8192, what);
  }
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false, what);
  c.attention_bias = optional<bool>(j, "attention_bias", false, what);
  c.qk_norm = optional<bool>(j, "qk_norm", false, what);
  c.bos_token_id = optional<int>(j, "bos_token_id", -1, what);
  c.eos_token_ids = optional<std::vector<int>>(j, "eos_token_ids", {}, what);
  c.sliding_window = optional<int>(j, "sliding_window", 0, what);
  c.num_experts = optional<int>(j, "num_experts", 0, what);
  c.num_experts_per_tok = optional<int>(j, "num_experts_per_tok", 0, what);
  c.moe_intermediate_size = optional<int>(j, "moe_intermediate_size", 0, what);
  c.norm_topk_prob = optional<bool>(j, "norm_topk_prob", false, what);
  c.decoder_sparse_step = optional<int>(j, "decoder_sparse_step", 1, what);
  c.mlp_only_layers = optional<std::vector<int>>(j, "mlp_only_layers", {}, what);
  c.shared_expert_intermediate_size = optional<int>(j, "shared_expert_intermediate_size", 0, what);
  c.n_group = optional<int>(j, "n_group", 1, what);
  c.topk_group = optional<int>(j, "topk_group", 1, what);
  c.routed_scaling_factor = optional<float>(j, "routed_scaling_factor", 1.f, what);
  c.validate();
  return c;
}

ModelConfig ModelConfig::from_hf_config_json(const std::string& json_text) {
  const std::string what = "Hugging Face config.json";
  const json j = parse_json(json_text, what);
  ALEM_CHECK(j.is_object(), what + " is not an object");
  std::string hf_arch;
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    hf_arch = (*it)[0].get<std::string>();
  }
  const std::string model_type = optional<std::string>(j, "model_type", "", what);
  ModelConfig c;
  if (const RefusedArchitecture* refused = find_refused_architecture(hf_arch, model_type)) {
    ALEM_FAIL(what + ": architecture '" + (hf_arch.empty() ? model_type : hf_arch) +
              "' is not supported: " + std::string(refused->reason));
  }
  const ArchitectureInfo* arch = find_hf_architecture(hf_arch, model_type);
  ALEM_CHECK(arch != nullptr, what + ": architecture '" + (hf_arch.empty() ? model_type : hf_arch) +
                                  "' is not supported (" + architecture_names(true) + ")");
  c.architecture = std::string(arch->name);
  c.name = optional<std::string>(j, "_name_or_path", "", what);
  c.vocab_size = required<int>(j, "vocab_size", what);
  c.hidden_size = required<int>(j, "hidden_size", what);
  c.num_layers = required<int>(j, "num_hidden_layers", what);
  c.num_heads = required<int>(j, "num_attention_heads", what);
  c.num_kv_heads = optional<int>(j, "num_key_value_heads", c.num_heads, what);
  c.head_dim =
      optional<int>(j, "head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0, what);
  c.intermediate_size = required<int>(j, "intermediate_size", what);
  c.max_position_embeddings = required<int>(j, "max_position_embeddings", what);
  c.rms_norm_eps = optional<float>(j, "rms_norm_eps", 1e-6f, what);
  // transformers 5 folds rope_theta and rope_scaling into "rope_parameters".
  json rope = json::object();
  if (auto it = j.find("rope_scaling"); it != j.end() && it->is_object()) rope = *it;
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) rope = *it;
  c.rope_theta =
      optional<float>(j, "rope_theta", optional<float>(rope, "rope_theta", 10000.f, what), what);
  std::string rope_type = optional<std::string>(rope, "rope_type", "", what);
  if (rope_type.empty()) rope_type = optional<std::string>(rope, "type", "default", what);
  if (rope_type == "llama3") {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = required<float>(rope, "factor", what + " rope_scaling");
    c.rope_scaling.low_freq_factor = optional<float>(rope, "low_freq_factor", 1.f, what);
    c.rope_scaling.high_freq_factor = optional<float>(rope, "high_freq_factor", 4.f, what);
    c.rope_scaling.original_max_position =
        optional<int>(rope, "original_max_position_embeddings", 8192, what);
  } else {
    ALEM_CHECK(rope_type == "default" || rope_type == "none",
               what + ": rope scaling type '" + rope_type + "' is not supported (llama3 only)");
  }
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false, what);
  c.attention_bias =
      arch->always_attention_bias ? true : optional<bool>(j, "attention_bias", false, what);
  c.qk_norm = arch->qk_norm;
  if (arch->sliding_window) c.sliding_window = optional<int>(j, "sliding_window", 0, what);
  if (arch->mixture_of_experts) {
    const MoeFamily& moe = arch->moe;
    // transformers 5 writes num_experts as "num_local_experts" (its attribute map); Mixtral's
    // own key is num_local_experts.
    c.num_experts = optional<int>(
        j, "num_experts",
        optional<int>(j, "num_local_experts", optional<int>(j, "n_routed_experts", 0, what), what),
        what);
    c.num_experts_per_tok = required<int>(j, "num_experts_per_tok", what);
    c.moe_intermediate_size = required<int>(j, std::string(moe.expert_size_key).c_str(), what);
    c.norm_topk_prob = moe.always_norm_topk || optional<bool>(j, "norm_topk_prob", false, what);
    if (moe.dense_layer_switches) {
      c.decoder_sparse_step = optional<int>(j, "decoder_sparse_step", 1, what);
      c.mlp_only_layers = optional<std::vector<int>>(j, "mlp_only_layers", {}, what);
    }
    if (!moe.shared_expert_count_key.empty()) {  // DeepSeek-V3 style: n x the expert size
      const int n = required<int>(j, std::string(moe.shared_expert_count_key).c_str(), what);
      check_positive(n, "n_shared_experts");
      c.shared_expert_intermediate_size = n * c.moe_intermediate_size;
    } else if (!moe.shared_expert.empty()) {
      c.shared_expert_intermediate_size = required<int>(j, "shared_expert_intermediate_size", what);
    }
    if (!moe.leading_dense_key.empty()) {
      const int k = optional<int>(j, std::string(moe.leading_dense_key).c_str(), 0, what);
      ALEM_CHECK(k >= 0 && k < c.num_layers,
                 what + ": " + std::string(moe.leading_dense_key) + " " + std::to_string(k) +
                     " leaves no sparse layer of " + std::to_string(c.num_layers));
      for (int l = 0; l < k; ++l) c.mlp_only_layers.push_back(l);
    }
    if (moe.routing == MoeRoutingRule::kGroupedSigmoid) {
      const std::string scoring = optional<std::string>(j, "scoring_func", "sigmoid", what);
      ALEM_CHECK(scoring == "sigmoid" || scoring == "noaux_tc",
                 what + ": scoring_func '" + scoring + "' is not " + c.architecture +
                     "'s sigmoid routing");
      c.n_group = optional<int>(j, "n_group", 1, what);
      c.topk_group = optional<int>(j, "topk_group", 1, what);
      c.routed_scaling_factor = optional<float>(j, "routed_scaling_factor", 1.f, what);
    }
  }
  check_full_attention(j, c, *arch, what);
  // Qwen2-MoE's sliding window applies only with use_sliding_window, which alem does not run.
  ALEM_CHECK(!optional<bool>(j, "use_sliding_window", false, what) || arch->sliding_window,
             what + ": use_sliding_window is set, but alem runs " + c.architecture +
                 " with full attention only");
  c.bos_token_id = optional<int>(j, "bos_token_id", -1, what);
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_array()) {
      c.eos_token_ids = checked<std::vector<int>>(*it, what + ": 'eos_token_id'");
    } else {
      c.eos_token_ids.push_back(checked<int>(*it, what + ": 'eos_token_id'"));
    }
  }
  c.validate();
  return c;
}

namespace {

// Parameters of the model with `experts_per_sparse_layer` experts counted in each sparse layer.
int64_t count_parameters(const ModelConfig& c, int64_t experts_per_sparse_layer) {
  const int64_t h = c.hidden_size;
  const int64_t q_out = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_out = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  int64_t attention = h * q_out + 2 * h * kv_out + q_out * h  // q, k, v, o
                      + 2 * h;                                // two RMSNorm weights
  if (c.attention_bias) attention += q_out + 2 * kv_out;
  if (c.qk_norm) attention += 2 * static_cast<int64_t>(c.head_dim);
  int64_t total = static_cast<int64_t>(c.vocab_size) * h + h;
  for (int l = 0; l < c.num_layers; ++l) {
    total += attention;
    if (c.is_moe_layer(l)) {
      const MoeFamily& moe = moe_family(c);
      total += int64_t{c.num_experts} * h  // router
               + experts_per_sparse_layer * 3 * h * c.moe_intermediate_size;
      if (!moe.router_bias.empty()) total += c.num_experts;  // score correction bias
      if (c.shared_expert_intermediate_size > 0) {           // shared expert(s) and a gate
        total += 3 * h * c.shared_expert_intermediate_size;
        if (!moe.shared_expert_gate.empty()) total += h;
      }
    } else {
      total += 3 * h * c.intermediate_size;  // gate, up, down
    }
  }
  if (!c.tie_word_embeddings) total += static_cast<int64_t>(c.vocab_size) * h;
  return total;
}

}  // namespace

int64_t ModelConfig::parameter_count() const {
  return count_parameters(*this, num_experts);
}

int64_t ModelConfig::active_parameter_count() const {
  return count_parameters(*this, num_experts_per_tok);
}

std::string layer_tensor_name(int layer, const std::string& suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

}  // namespace alem
