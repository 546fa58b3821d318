// alem_random_model: writes an HDF5 model store with random bf16 weights in the shape of a real
// model, for speed benchmarks where the weights' values do not matter (scripts/gpu-check.sh
// runs Qwen3-8B's shape on a GPU). Weights are drawn uniformly with the standard deviation of a
// freshly initialised model (0.02), norm weights are 1, so activations stay finite; the
// tokenizer is a placeholder of numbered tokens (benchmarks send token ids, not text).
//
//   alem_random_model --shape qwen3-8b [--layers N] --out model.h5
//   alem_random_model --shape tiny-qwen3 --out tiny.h5      (a few MB, for checking the tool)
//
// --layers N keeps the shape of each layer and the vocabulary but stores only N decoder layers
// (the benchmark reports the per-layer cost and the full-depth estimate beside it).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/model_config.h"
#include "model/model_store_writer.h"
#include "model/tokenizer_data.h"

namespace {

using alem::ModelConfig;

ModelConfig shape_config(const std::string& shape) {
  ModelConfig c;
  c.architecture = "qwen3";
  c.qk_norm = true;
  c.tie_word_embeddings = false;
  c.rms_norm_eps = 1e-6f;
  c.rope_theta = 1000000.f;
  c.bos_token_id = -1;
  if (shape == "qwen3-8b") {  // Qwen/Qwen3-8B config.json
    c.name = "random-qwen3-8b-shape";
    c.vocab_size = 151936;
    c.hidden_size = 4096;
    c.num_layers = 36;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.intermediate_size = 12288;
    c.max_position_embeddings = 40960;
  } else if (shape == "tiny-qwen3") {
    c.name = "random-tiny-qwen3";
    c.vocab_size = 512;
    c.hidden_size = 256;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.intermediate_size = 512;
    c.max_position_embeddings = 4096;
  } else {
    ALEM_FAIL("unknown --shape '" + shape + "' (qwen3-8b or tiny-qwen3)");
  }
  c.eos_token_ids = {c.vocab_size - 1};
  return c;
}

alem::TokenizerData placeholder_tokenizer(int vocab) {
  alem::TokenizerData t;
  t.pre_tokenizer = "qwen2";
  for (int i = 0; i < vocab; ++i) {
    t.tokens.push_back(std::string(1, 't').append(std::to_string(i)));
    t.token_kinds.push_back(static_cast<int32_t>(alem::TokenKind::Normal));
  }
  t.eos_token_id = vocab - 1;
  return t;
}

// Uniform values with standard deviation `stddev` (xorshift64*, fast enough for 8B values).
void fill_random(std::vector<float>& v, uint64_t seed, float stddev) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  const float half_width = stddev * 1.7320508f;  // uniform [-a, a] has std a / sqrt(3)
  for (float& x : v) {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    const uint64_t r = s * 0x2545F4914F6CDD1Dull;
    x = (static_cast<float>(r >> 40) * (1.0f / 16777216.0f) * 2.f - 1.f) * half_width;
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape, out;
  int layers = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--shape") {
      shape = value();
    } else if (arg == "--out") {
      out = value();
    } else if (arg == "--layers") {
      layers = std::stoi(value());
    } else {
      std::fprintf(
          stderr,
          "usage: alem_random_model --shape qwen3-8b|tiny-qwen3 [--layers N] --out FILE.h5\n");
      return 2;
    }
  }
  if (shape.empty() || out.empty()) {
    std::fprintf(
        stderr,
        "usage: alem_random_model --shape qwen3-8b|tiny-qwen3 [--layers N] --out FILE.h5\n");
    return 2;
  }
  try {
    ModelConfig c = shape_config(shape);
    if (layers > 0) {
      ALEM_CHECK(layers <= c.num_layers,
                 "--layers is above the shape's " + std::to_string(c.num_layers) + " layers");
      c.num_layers = layers;
    }
    c.validate();
    alem::ModelStoreWriter writer(out, c, placeholder_tokenizer(c.vocab_size), "random:" + shape);
    const auto bf16 = alem::DType::BF16;
    uint64_t seed = 1;
    std::vector<float> values;
    auto matrix = [&](const std::string& name, int64_t rows, int64_t cols) {
      values.resize(static_cast<size_t>(rows * cols));
      fill_random(values, seed++, 0.02f);
      writer.add_matrix(name, values.data(), rows, cols, bf16);
    };
    auto ones = [&](const std::string& name, int64_t count) {
      std::vector<float> v(static_cast<size_t>(count), 1.f);
      writer.add_vector(name, v.data(), count);
    };
    const int64_t H = c.hidden_size, hd = c.head_dim;
    const int64_t q_rows = int64_t{c.num_heads} * hd, kv_rows = int64_t{c.num_kv_heads} * hd;
    matrix("model.embed_tokens.weight", c.vocab_size, H);
    for (int l = 0; l < c.num_layers; ++l) {
      auto name = [&](const char* suffix) { return alem::layer_tensor_name(l, suffix); };
      ones(name("input_layernorm.weight"), H);
      ones(name("post_attention_layernorm.weight"), H);
      ones(name("self_attn.q_norm.weight"), hd);
      ones(name("self_attn.k_norm.weight"), hd);
      matrix(name("self_attn.q_proj.weight"), q_rows, H);
      matrix(name("self_attn.k_proj.weight"), kv_rows, H);
      matrix(name("self_attn.v_proj.weight"), kv_rows, H);
      matrix(name("self_attn.o_proj.weight"), H, q_rows);
      matrix(name("mlp.gate_proj.weight"), c.intermediate_size, H);
      matrix(name("mlp.up_proj.weight"), c.intermediate_size, H);
      matrix(name("mlp.down_proj.weight"), H, c.intermediate_size);
      std::fprintf(stderr, "layer %d of %d written\n", l + 1, c.num_layers);
    }
    ones("model.norm.weight", H);
    matrix("lm_head.weight", c.vocab_size, H);
    const int64_t tensors = writer.tensor_count();
    const std::string digest = writer.finish();
    std::printf("%s: %s, %d layers, %lld tensors, digest %s\n", out.c_str(), c.name.c_str(),
                c.num_layers, static_cast<long long>(tensors), digest.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alem_random_model: %s\n", e.what());
    return 1;
  }
  return 0;
}
