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

struct ArchitectureInfo {
  std::string_view name;           // alem's name, equal to GGUF general.architecture
  std::string_view hf_class;       // config.json "architectures"[0]
  std::string_view hf_model_type;  // config.json "model_type"
  bool always_attention_bias;      // q/k/v biases whatever config.json says (Qwen2)
  bool qk_norm;                    // per-head RMSNorm on q and k (Qwen3)
  bool mixture_of_experts;         // sparse FFN layers with a router and experts (Qwen3-MoE)
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

// "model.layers.{layer}.mlp.experts.{expert}.{suffix}" (suffix e.g. "gate_proj.weight").
std::string expert_tensor_name(int layer, int expert, const std::string& suffix);
// "model.layers.{layer}.mlp.gate.weight": the router of a sparse layer, [num_experts][hidden].
std::string router_tensor_name(int layer);

}  // namespace alem
