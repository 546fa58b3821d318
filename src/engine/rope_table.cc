// Rotary tables: inv_freq[i] = theta^(-2i/d), optionally rescaled per Llama-3
// (low frequencies divided by `factor`, high ones kept, a smooth blend between).
#include "engine/rope_table.h"

#include <cmath>

#include "core/error.h"

namespace alem {

RopeTable make_rope_table(const ModelConfig& config, int max_positions) {
  ALEM_CHECK(config.head_dim % 2 == 0, "head_dim must be even for RoPE");
  RopeTable table;
  table.max_positions = max_positions;
  table.half_dim = config.head_dim / 2;
  std::vector<float> inv_freq(table.half_dim);
  for (int i = 0; i < table.half_dim; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config.head_dim);
    inv_freq[i] = 1.0f / std::pow(config.rope_theta, exponent);
  }
  const RopeScaling& s = config.rope_scaling;
  if (s.type == "llama3") {
    const float old_context = static_cast<float>(s.original_max_position);
    const float low_freq_wavelen = old_context / s.low_freq_factor;
    const float high_freq_wavelen = old_context / s.high_freq_factor;
    for (float& f : inv_freq) {
      const float wavelen = 2.0f * static_cast<float>(M_PI) / f;
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        f = f / s.factor;
      } else {
        const float smooth =
            (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0f - smooth) * f / s.factor + smooth * f;
      }
    }
  } else {
    ALEM_CHECK(s.type == "none" || s.type.empty() || s.type == "default",
               "unsupported rope scaling '" + s.type + "' (supported: none, llama3)");
  }
  table.cos.resize(static_cast<size_t>(max_positions) * table.half_dim);
  table.sin.resize(table.cos.size());
  for (int p = 0; p < max_positions; ++p) {
    for (int i = 0; i < table.half_dim; ++i) {
      const float angle = static_cast<float>(p) * inv_freq[i];
      table.cos[static_cast<size_t>(p) * table.half_dim + i] = std::cos(angle);
      table.sin[static_cast<size_t>(p) * table.half_dim + i] = std::sin(angle);
    }
  }
  return table;
}

}  // namespace alem
