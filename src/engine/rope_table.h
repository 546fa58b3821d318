// Builds the rotary-embedding cos/sin tables for a model, including the Llama-3 frequency
// scaling, computed in f32 the way Hugging Face transformers does so logits match it closely.
#pragma once

#include "kernels/backend.h"
#include "model/model_config.h"

namespace alem {

RopeTable make_rope_table(const ModelConfig& config, int max_positions);

}  // namespace alem
