// SmolLM2-135M kept as Q4_0, Q8_0 and K-quant blocks against Hugging Face transformers reading
// the very same GGUF files (tests/data/golden/smollm2-135m-instruct-{q4_0,q8_0,kmix}.json,
// written by scripts/reference/make_block_golden.py, which also makes the files from the shipped
// Q4_1 GGUF; KMIX holds its 1536-wide down projections as Q4_K, Q5_K and Q6_K, the rest Q8_0 but
// some v and up projections Q4_0, so q/k/v and gate/up mix types as a Q4_K_M file's do). The
// test converts each file with `--dtype auto` semantics (blocks kept), checks that the file's
// SHA-256 is the one the golden data was made from, then teacher-forces the engine along HF's
// greedy continuation: its argmax must equal HF's token at every step where HF's top-2 margin
// exceeds the tolerance, and its top-20 logits and logsumexp must agree within 1e-2 at the
// checkpoints (the block kernels' 16-bit activations; f32 KV cache). Label "slow": about a minute
// per type; skipped with a message when the GGUF files have not been made.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "tests/test_env.h"

namespace alem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string sha256_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char digest[32];
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx, digest, &length);
  EVP_MD_CTX_free(ctx);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < length; ++i) {
    out += hex[digest[i] >> 4];
    out += hex[digest[i] & 15];
  }
  return out;
}

double logsumexp(const float* row, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(row[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(row[i] - m);
  return m + std::log(s);
}

class BlockGolden : public ::testing::TestWithParam<const char*> {};

TEST_P(BlockGolden, MatchesTransformersOnTheSameGguf) {
  const std::string type = GetParam();  // "Q4_0", "Q8_0" or "KMIX"
  std::string lower = type;
  for (char& c : lower) c = static_cast<char>(std::tolower(c));
  const std::string gguf =
      (fs::path(test::gguf_path()).parent_path() / ("SmolLM2-135M-Instruct." + type + ".gguf"))
          .string();
  if (!fs::exists(gguf)) {
    GTEST_SKIP() << gguf
                 << " not made: run .venv-reference/bin/python "
                    "scripts/reference/make_block_golden.py --gguf-only";
  }
  std::ifstream in(test::data_dir() + "/golden/smollm2-135m-instruct-" + lower + ".json");
  ASSERT_TRUE(in.good()) << "golden data missing";
  const json golden = json::parse(in);
  ASSERT_EQ(sha256_of(gguf), golden.at("model").at("gguf_sha256").get<std::string>())
      << gguf << " is not the file the golden data was made from";

  const std::string store_path =
      (fs::temp_directory_path() /
       ("alem_block_golden_" + std::to_string(::getpid()) + "_" + lower + ".h5"))
          .string();
  ConvertOptions convert_options;
  convert_options.keep_gguf_types = true;
  convert_gguf(gguf, store_path, convert_options);
  ModelStoreReader store(store_path);
  if (type == "KMIX") {  // the 1536-wide down projections as K-quants, the rest Q8_0
    EXPECT_EQ(store.tensor_info("model.layers.0.mlp.down_proj.weight").dtype, DType::Q4_K);
    EXPECT_EQ(store.tensor_info("model.layers.1.mlp.down_proj.weight").dtype, DType::Q5_K);
    EXPECT_EQ(store.tensor_info("model.layers.29.mlp.down_proj.weight").dtype, DType::Q6_K);
    EXPECT_EQ(store.tensor_info("model.layers.0.mlp.up_proj.weight").dtype, DType::Q8_0);
    // Types mixed inside the groups the engine multiplies as one, kept as they are (no bf16).
    EXPECT_EQ(store.tensor_info("model.layers.0.self_attn.v_proj.weight").dtype, DType::Q4_0);
    EXPECT_EQ(store.tensor_info("model.layers.0.self_attn.q_proj.weight").dtype, DType::Q8_0);
    EXPECT_EQ(store.tensor_info("model.layers.1.mlp.up_proj.weight").dtype, DType::Q4_0);
    EXPECT_EQ(store.tensor_info("model.layers.1.mlp.gate_proj.weight").dtype, DType::Q8_0);
    EXPECT_EQ(store.tensor_info("model.embed_tokens.weight").dtype, DType::Q8_0);
  } else {
    EXPECT_EQ(dtype_name(store.tensor_info("model.layers.0.mlp.down_proj.weight").dtype), lower);
    EXPECT_EQ(dtype_name(store.tensor_info("model.embed_tokens.weight").dtype), lower);
  }
  ParallelContext ctx = make_solo_context();
  auto backend = make_backend(test::backend_name());
  EngineOptions options;
  options.max_model_len = 1024;
  options.kv_cache_dtype = DType::F32;
  ShardedTransformer model(store, ctx, *backend, options);
  const int64_t V = store.config().vocab_size;
  constexpr double kTolerance = 1e-2;

  int prompts_checked = 0;
  for (const json& prompt : golden.at("prompts")) {
    const std::string name = prompt.at("name");
    const auto ids = prompt.at("prompt_ids").get<std::vector<int32_t>>();
    const json& result = prompt.at("results").at("f32");
    const auto hf_tokens = result.at("generated_ids").get<std::vector<int32_t>>();
    const auto margins = result.at("step_margin").get<std::vector<double>>();
    ASSERT_GE(hf_tokens.size(), 16u);
    std::map<int, const json*> checkpoints;
    for (const json& cp : result.at("checkpoints")) {
      checkpoints[cp.at("predicts_generated_index").get<int>()] = &cp;
    }
    StepSequence seq;
    seq.request_id = 9;
    seq.sample = true;
    for (int b = 0; b < model.num_kv_blocks(); ++b) seq.block_table.push_back(b);
    int matched = 0;
    double worst = 0;
    for (size_t j = 0; j < hf_tokens.size(); ++j) {
      StepPlan plan;
      if (j == 0) {
        plan.tokens = ids;
        seq.start_pos = 0;
        seq.num_tokens = static_cast<int32_t>(ids.size());
      } else {
        plan.tokens = {hf_tokens[j - 1]};
        seq.start_pos = static_cast<int32_t>(ids.size() + j - 1);
        seq.num_tokens = 1;
      }
      plan.sequences = {seq};
      StepLogits logits = model.forward(plan);
      const float* row = logits.row(0);
      const auto argmax = static_cast<int32_t>(std::max_element(row, row + V) - row);
      if (argmax == hf_tokens[j]) {
        ++matched;
      } else {
        EXPECT_LT(margins[j], kTolerance)
            << name << ": step " << j << " alem picks " << argmax << ", HF " << hf_tokens[j]
            << " (margin " << margins[j] << ")";
      }
      if (auto cp = checkpoints.find(static_cast<int>(j)); cp != checkpoints.end()) {
        const auto top_ids = cp->second->at("top_ids").get<std::vector<int32_t>>();
        const auto top_logits = cp->second->at("top_logits").get<std::vector<double>>();
        for (size_t k = 0; k < top_ids.size(); ++k) {
          const double diff = std::fabs(row[top_ids[k]] - top_logits[k]);
          worst = std::max(worst, diff);
          EXPECT_LT(diff, kTolerance) << name << " step " << j << " token " << top_ids[k];
        }
        const double lse = std::fabs(logsumexp(row, V) - cp->second->at("logsumexp").get<double>());
        worst = std::max(worst, lse);
        EXPECT_LT(lse, kTolerance) << name << " step " << j << " logsumexp";
      }
    }
    EXPECT_GE(matched, 16) << name;
    std::printf("[%s] %-12s greedy steps matched %d/%zu, worst logit diff %.2e\n", type.c_str(),
                name.c_str(), matched, hf_tokens.size(), worst);
    ++prompts_checked;
  }
  EXPECT_GE(prompts_checked, 6);
  fs::remove(store_path);
}

INSTANTIATE_TEST_SUITE_P(Types, BlockGolden, ::testing::Values("Q4_0", "Q8_0", "KMIX"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace alem
