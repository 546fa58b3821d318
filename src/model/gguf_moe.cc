// GGUF's stacked expert tensors to the store's per-expert matrices (see gguf_moe.h).
#include "model/gguf_moe.h"

#include <algorithm>

#include "core/error.h"
#include "model/architecture.h"
#include "model/gguf_quant.h"
#include "model/gguf_reader.h"
#include "model/model_config.h"
#include "model/model_store_writer.h"
#include "model/weights.h"

namespace alem {
namespace {

enum class MoeTensorKind { kNone, kRouter, kGate, kUp, kDown };

// "blk.{layer}.{ffn_gate_inp|ffn_gate_exps|ffn_up_exps|ffn_down_exps}.weight".
MoeTensorKind parse_moe_tensor(const std::string& name, int* layer) {
  if (name.rfind("blk.", 0) != 0) return MoeTensorKind::kNone;
  const size_t dot = name.find('.', 4);
  if (dot == std::string::npos || dot == 4 || dot - 4 > 6) return MoeTensorKind::kNone;
  const std::string digits = name.substr(4, dot - 4);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return MoeTensorKind::kNone;
  }
  const std::string rest = name.substr(dot + 1);
  MoeTensorKind kind = MoeTensorKind::kNone;
  if (rest == "ffn_gate_inp.weight") kind = MoeTensorKind::kRouter;
  if (rest == "ffn_gate_exps.weight") kind = MoeTensorKind::kGate;
  if (rest == "ffn_up_exps.weight") kind = MoeTensorKind::kUp;
  if (rest == "ffn_down_exps.weight") kind = MoeTensorKind::kDown;
  if (kind != MoeTensorKind::kNone) *layer = std::stoi(digits);
  return kind;
}

ExpertMatrix expert_matrix(MoeTensorKind kind) {
  return kind == MoeTensorKind::kGate ? ExpertMatrix::kGate
         : kind == MoeTensorKind::kUp ? ExpertMatrix::kUp
                                      : ExpertMatrix::kDown;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Checks a stacked expert tensor against the config: GGUF dims (fastest first) are
// [hidden, ffn, experts] for gate/up and [ffn, hidden, experts] for down.
void check_expert_dims(const ModelConfig& c, const GgufTensorInfo& t, MoeTensorKind kind) {
  const int64_t h = c.hidden_size, f = c.moe_intermediate_size;
  const std::vector<int64_t> want = kind == MoeTensorKind::kDown
                                        ? std::vector<int64_t>{f, h, c.num_experts}
                                        : std::vector<int64_t>{h, f, c.num_experts};
  ALEM_CHECK(t.dims == want, "GGUF tensor '" + t.name + "' has dimensions " + dims_text(t.dims) +
                                 ", expected " + dims_text(want) +
                                 " (GGUF order) for this model's experts");
}

// A matrix of ggml blocks from their bytes, checked against its shape.
WeightMatrix block_matrix(const uint8_t* bytes, size_t size, int64_t rows, int64_t cols,
                          DType dtype, const std::string& tensor) {
  WeightMatrix m;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  ALEM_CHECK(size == static_cast<size_t>(rows) * dtype_row_bytes(dtype, cols),
             "GGUF tensor '" + tensor + "' has " + std::to_string(size) + " bytes for a [" +
                 std::to_string(rows) + ", " + std::to_string(cols) +
                 "] matrix, not rows of whole " + dtype_name(dtype) + " blocks");
  m.data.resize(size);
  std::copy(bytes, bytes + size, m.data.data());
  return m;
}

}  // namespace

void read_gguf_moe_config(const GgufFile& gguf, ModelConfig& config) {
  const std::string p = gguf.architecture() + ".";
  const int64_t experts = gguf.get_int(p + "expert_count", 0);
  if (experts <= 0) return;
  const ArchitectureInfo* family = nullptr;
  for (const ArchitectureInfo& a : supported_architectures()) {
    const std::string_view gguf_name = a.gguf_name.empty() ? a.name : a.gguf_name;
    if (a.mixture_of_experts && gguf_name == gguf.architecture()) family = &a;
  }
  ALEM_CHECK(family != nullptr, "GGUF file " + gguf.path() + " has " + std::to_string(experts) +
                                    " experts but alem knows no mixture-of-experts family of "
                                    "architecture '" +
                                    gguf.architecture() + "'");
  const MoeFamily& moe = family->moe;
  config.architecture = std::string(family->name);
  config.num_experts = static_cast<int>(experts);
  config.num_experts_per_tok = static_cast<int>(gguf.get_int(p + "expert_used_count"));
  config.moe_intermediate_size =
      moe.expert_size_key == "intermediate_size"
          ? config.intermediate_size
          : static_cast<int>(gguf.get_int(p + "expert_feed_forward_length"));
  // llama.cpp renormalises when expert_weights_norm is absent for qwen3moe, not for dots1.
  const bool grouped = moe.routing == MoeRoutingRule::kGroupedSigmoid;
  config.norm_topk_prob =
      moe.always_norm_topk || gguf.get_bool(p + "expert_weights_norm", !grouped);
  if (grouped) {  // DeepSeek-V3 routing: sigmoid gating, groups, scale
    const int64_t gating = gguf.get_int(p + "expert_gating_func", 2);
    ALEM_CHECK(gating == 2, "GGUF file " + gguf.path() + ": " + p + "expert_gating_func " +
                                std::to_string(gating) + " is not sigmoid (2), which " +
                                config.architecture + " routes by");
    config.n_group = static_cast<int>(gguf.get_int(p + "expert_group_count", 1));
    config.topk_group = static_cast<int>(gguf.get_int(p + "expert_group_used_count", 1));
    config.routed_scaling_factor =
        static_cast<float>(gguf.get_float(p + "expert_weights_scale", 1.0));
  }
  if (!moe.shared_expert_count_key.empty()) {  // n shared experts of the expert size, one FFN
    const int64_t shared = gguf.get_int(p + "expert_shared_count", 0);
    ALEM_CHECK(shared > 0, "GGUF file " + gguf.path() + " has no " + p +
                               "expert_shared_count, which a " + config.architecture +
                               " model needs");
    config.shared_expert_intermediate_size =
        static_cast<int>(shared) * config.moe_intermediate_size;
  }
  config.decoder_sparse_step = 1;
  config.mlp_only_layers.clear();
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const bool sparse =
        gguf.find_tensor("blk." + std::to_string(layer) + ".ffn_gate_inp.weight") != nullptr;
    if (!sparse) config.mlp_only_layers.push_back(layer);
  }
}

bool add_gguf_moe_tensor_shapes(const ModelConfig& config, const GgufTensorInfo& t,
                                std::map<std::string, std::vector<int64_t>>& present) {
  int layer = -1;
  const MoeTensorKind kind = parse_moe_tensor(t.name, &layer);
  if (kind == MoeTensorKind::kNone) return false;
  ALEM_CHECK(config.num_experts > 0 && layer < config.num_layers && config.is_moe_layer(layer),
             "GGUF tensor '" + t.name +
                 "' belongs to a sparse layer, but the metadata makes layer " +
                 std::to_string(layer) + " dense");
  DType kept = DType::F32;
  ALEM_CHECK(ggml_dequantize_supported(t.type) || ggml_type_as_dtype(t.type, &kept),
             "GGUF tensor '" + t.name + "' has type " + ggml_type_name(t.type) +
                 ", which alem can neither keep nor dequantize");
  if (kind == MoeTensorKind::kRouter) {
    present[router_tensor_name(config, layer)] = t.hf_shape();
    return true;
  }
  check_expert_dims(config, t, kind);
  for (int e = 0; e < config.num_experts; ++e) {
    present[expert_tensor_name(config, layer, e, expert_matrix(kind))] = {t.dims[1], t.dims[0]};
  }
  return true;
}

bool write_gguf_moe_tensor(const GgufFile& gguf, const ModelConfig& config, const GgufTensorInfo& t,
                           ModelStoreWriter& writer, DType dtype) {
  int layer = -1;
  const MoeTensorKind kind = parse_moe_tensor(t.name, &layer);
  if (kind == MoeTensorKind::kNone) return false;
  // Blocks of the file's own type are copied as they are; anything else is expanded to f32 (one
  // expert at a time) and stored as `dtype` (rounded or quantised by the writer).
  DType file_dtype = DType::F32;
  const bool copy_blocks =
      dtype_is_block(dtype) && ggml_type_as_dtype(t.type, &file_dtype) && file_dtype == dtype;
  if (kind == MoeTensorKind::kRouter) {
    if (copy_blocks) {
      const std::vector<uint8_t> bytes = gguf.raw_rows(t.name);
      writer.add_matrix(
          router_tensor_name(config, layer),
          block_matrix(bytes.data(), bytes.size(), t.rows(), t.cols(), dtype, t.name));
    } else {
      const std::vector<float> values = gguf.dequantize(t.name);
      writer.add_matrix(router_tensor_name(config, layer), values.data(), t.rows(), t.cols(),
                        dtype);
    }
    return true;
  }
  check_expert_dims(config, t, kind);
  const int64_t rows = t.dims[1], cols = t.dims[0];  // one expert's [rows, cols], HF orientation
  const uint64_t expert_bytes = ggml_bytes_for(t.type, rows * cols);
  ALEM_CHECK(t.bytes == expert_bytes * static_cast<uint64_t>(config.num_experts),
             "GGUF tensor '" + t.name + "' has " + std::to_string(t.bytes) + " bytes, not " +
                 std::to_string(config.num_experts) + " experts of " +
                 std::to_string(expert_bytes));
  const uint8_t* data = gguf.tensor_data(t);
  std::vector<float> values;
  for (int e = 0; e < config.num_experts; ++e) {
    const uint8_t* expert = data + static_cast<size_t>(e) * expert_bytes;
    const std::string name = expert_tensor_name(config, layer, e, expert_matrix(kind));
    if (copy_blocks) {
      writer.add_matrix(name, block_matrix(expert, expert_bytes, rows, cols, dtype, t.name));
      continue;
    }
    values.resize(static_cast<size_t>(rows * cols));
    dequantize_ggml(t.type, expert, expert_bytes, values.data(), rows * cols);
    writer.add_matrix(name, values.data(), rows, cols, dtype);
  }
  return true;
}

}  // namespace alem
