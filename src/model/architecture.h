// The model families alem runs, in one table: each family's names (alem/GGUF, Hugging Face
// class and model_type), its structural switches, and the tensors a model of a given config
// must hold (Hugging Face names, shapes, and how tensor/expert parallelism splits each one).
// Adding a family means one row here, its switches in ModelConfig, and its test; the importers
// (convert.cc, gguf_reader.cc), ModelConfig and the shard plan read this file instead of
// keeping their own lists.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace alem {

struct ModelConfig;

// How a family's router turns logits into experts and weights (engine/moe_routing.h).
enum class MoeRoutingRule {
  kSoftmax,         // softmax, top-k, optional renormalisation (Qwen3-MoE, Qwen2-MoE, Mixtral)
  kGroupedSigmoid,  // DeepSeek-V3: sigmoid, correction bias for the choice, grouped top-k,
                    // routed_scaling_factor (dots.llm1)
};

// How a mixture-of-experts family names its sparse-layer tensors (under "model.layers.{i}.")
// and routes: the router "{router}", expert E's matrices "{experts}E.{gate|up|down}".
struct MoeFamily {
  std::string_view router;          // "mlp.gate.weight" (Qwen3-MoE), "block_sparse_moe.gate.weight"
  std::string_view experts;         // "mlp.experts." or "block_sparse_moe.experts."
  std::string_view gate, up, down;  // "gate_proj.weight"... or Mixtral's "w1.weight" (gate),
                                    // "w3.weight" (up), "w2.weight" (down)
  // config.json key of the expert FFN size ("moe_intermediate_size"; Mixtral: its experts'
  // "intermediate_size", every layer sparse).
  std::string_view expert_size_key;
  // Top-k weights always renormalised to sum to 1 (Mixtral: a softmax over the selected
  // logits); otherwise config.json's norm_topk_prob decides (Qwen3-MoE).
  bool always_norm_topk;
  // config.json's dense-layer switches (decoder_sparse_step, mlp_only_layers) apply.
  bool dense_layer_switches;
  // Shared expert (Qwen2-MoE): a SiLU FFN of config.shared_expert_intermediate_size that every
  // token of a sparse layer goes through beside its routed experts, "{shared_expert}{gate|up|
  // down}" in the expert matrices' names, its output scaled by sigmoid("{shared_expert_gate}" . x)
  // ([1, hidden]). Empty: the family has none.
  std::string_view shared_expert = {};
  std::string_view shared_expert_gate = {};
  MoeRoutingRule routing = MoeRoutingRule::kSoftmax;
  // DeepSeek-V3 style (dots.llm1): the router's score correction bias, [num_experts], under
  // "model.layers.{i}." ("mlp.gate.e_score_correction_bias"); config.json's count of leading
  // dense layers ("first_k_dense_replace", stored as mlp_only_layers 0..k-1); and its count of
  // shared experts ("n_shared_experts"), which run as one gate-less FFN of that many times
  // moe_intermediate_size (stored as shared_expert_intermediate_size). Empty: none.
  std::string_view router_bias = {};
  std::string_view leading_dense_key = {};
  std::string_view shared_expert_count_key = {};
};

// A family alem refuses by name, and why (DeepSeek-V2/V3: multi-head latent attention).
struct RefusedArchitecture {
  std::string_view hf_class;
  std::string_view hf_model_type;
  std::string_view reason;
};
const std::vector<RefusedArchitecture>& refused_architectures();
// The refusal for a config.json's class (or model_type when the class is empty); nullptr when
// the family is not one alem refuses by name.
const RefusedArchitecture* find_refused_architecture(std::string_view hf_class,
                                                     std::string_view model_type);

struct ArchitectureInfo {
  std::string_view name;           // alem's name, equal to GGUF general.architecture
  std::string_view hf_class;       // config.json "architectures"[0]
  std::string_view hf_model_type;  // config.json "model_type"
  bool always_attention_bias;      // q/k/v biases whatever config.json says (Qwen2)
  bool qk_norm;                    // per-head RMSNorm on q and k (Qwen3)
  bool mixture_of_experts;         // sparse FFN layers with a router and experts (Qwen3-MoE)
                                   // (Qwen2-MoE adds a shared expert, dots.llm1 DeepSeek-V3
                                   // routing: MoeFamily)
  bool sliding_window;             // config.json's sliding_window applies (Mixtral)
  MoeFamily moe = {};              // mixture-of-experts families only
  // GGUF general.architecture when it differs from `name` (llama.cpp writes Mixtral as
  // "llama" with expert tensors); empty: `name`.
  std::string_view gguf_name = {};
};

// Every supported family, in a fixed order.
const std::vector<ArchitectureInfo>& supported_architectures();
// By alem/GGUF name; nullptr when unknown.
const ArchitectureInfo* find_architecture(std::string_view name);
// By config.json's class name, or by model_type when the class is empty; nullptr when unknown.
const ArchitectureInfo* find_hf_architecture(std::string_view hf_class,
                                             std::string_view model_type);
// "llama, qwen2, qwen3, qwen3moe" (or the HF class names), for error messages.
std::string architecture_names(bool hf_class_names = false);

// How a tensor is split over ranks (see engine/shard_plan.h for the arithmetic).
enum class ShardRule {
  kReplicated,      // every rank holds all of it (norms, the MoE router)
  kColumnParallel,  // rows split over tp (q/k/v heads, gate/up columns)
  kRowParallel,     // columns split over tp (o_proj, down_proj)
  kVocabParallel,   // rows split over tp (embedding, LM head)
  kExpertColumn,    // whole expert on one ep rank; its rows split over tp / ep
  kExpertRow,       // whole expert on one ep rank; its columns split over tp / ep
};

struct ExpectedTensor {
  std::string name;
  std::vector<int64_t> shape;
  ShardRule rule = ShardRule::kReplicated;
};

// The tensors (HF names and shapes) a model of this config must have in the store.
std::vector<ExpectedTensor> expected_tensors(const ModelConfig& config);

// The three matrices of one expert: gate and up [expert ffn][hidden], down [hidden][expert ffn].
enum class ExpertMatrix { kGate, kUp, kDown };
// The family's name of one expert matrix of a sparse layer, e.g.
// "model.layers.1.mlp.experts.3.gate_proj.weight" (Qwen3-MoE) or
// "model.layers.1.block_sparse_moe.experts.3.w1.weight" (Mixtral).
std::string expert_tensor_name(const ModelConfig& config, int layer, int expert,
                               ExpertMatrix which);
// The router of a sparse layer, [num_experts][hidden]: "model.layers.{layer}.mlp.gate.weight"
// (Qwen3-MoE), "model.layers.{layer}.block_sparse_moe.gate.weight" (Mixtral).
std::string router_tensor_name(const ModelConfig& config, int layer);
// The shared expert's matrices of a sparse layer (families with one, e.g.
// "model.layers.1.mlp.shared_expert.gate_proj.weight") and its gate, [1][hidden]
// ("model.layers.1.mlp.shared_expert_gate.weight"). Throw alem::Error for other families.
std::string shared_expert_tensor_name(const ModelConfig& config, int layer, ExpertMatrix which);
std::string shared_expert_gate_tensor_name(const ModelConfig& config, int layer);
// The router's score correction bias of a sparse layer, [num_experts] (families with one, e.g.
// "model.layers.1.mlp.gate.e_score_correction_bias"). Throws alem::Error for other families.
std::string router_bias_tensor_name(const ModelConfig& config, int layer);
// The family of a mixture-of-experts config; throws alem::Error for a dense one.
const MoeFamily& moe_family(const ModelConfig& config);

}  // namespace alem
