// Mixture-of-experts models in GGUF: llama.cpp stores a sparse layer's experts as three 3-D
// tensors (blk.N.ffn_gate_exps / ffn_up_exps: [experts, expert ffn, hidden]; ffn_down_exps:
// [experts, hidden, expert ffn], outermost first) and its router as blk.N.ffn_gate_inp
// ([experts, hidden]). alem's store keeps one 2-D matrix per expert under the family's own
// names (model/architecture.h), so a rank reads its experts alone; this file maps one to the
// other, keeping the file's ggml blocks when asked. Families: `qwen3moe`, `llama` with experts,
// which is how llama.cpp writes Mixtral, and `dots1`. Kept apart from gguf_reader.cc/convert.cc,
// which call these three functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace alem {

class GgufFile;
struct GgufTensorInfo;
struct ModelConfig;
class ModelStoreWriter;

// Fills the mixture-of-experts fields of `config` (already read as a dense model of the file's
// general.architecture) from the GGUF metadata: {arch}.expert_count, expert_used_count,
// expert_feed_forward_length (qwen3moe; Mixtral's experts are feed_forward_length), and
// expert_weights_norm (qwen3moe; true when absent, as llama.cpp routes); for dots1 also
// expert_shared_count, expert_weights_scale, expert_gating_func (must be sigmoid) and
// expert_group_count / expert_group_used_count. A `llama` file with
// experts becomes architecture "mixtral". Layers without a router (ffn_gate_inp) are dense
// (mlp_only_layers). Does nothing for a file without experts.
void read_gguf_moe_config(const GgufFile& gguf, ModelConfig& config);

// For a stacked expert tensor or a router: adds the store tensors it becomes (names and HF
// shapes for `config`) to `present` and returns true; false for any other tensor. Throws
// alem::Error for an expert tensor of the wrong rank or shape, or of a type alem cannot expand.
bool add_gguf_moe_tensor_shapes(const ModelConfig& config, const GgufTensorInfo& tensor,
                                std::map<std::string, std::vector<int64_t>>& present);

// Writes a stacked expert tensor as one matrix per expert (or a router as its matrix) of stored
// type `dtype` and returns true; false for any other tensor. When `dtype` is the file's own block
// type (Q4_0, Q8_0, ... whatever ggml_type_as_dtype keeps), each expert's blocks are copied byte
// for byte; otherwise each expert is expanded to f32 and stored as `dtype` (rounded, or quantised
// by the writer).
bool write_gguf_moe_tensor(const GgufFile& gguf, const ModelConfig& config,
                           const GgufTensorInfo& tensor, ModelStoreWriter& writer, DType dtype);

}  // namespace alem
