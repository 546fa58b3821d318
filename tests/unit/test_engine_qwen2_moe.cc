// Qwen2-MoE (Qwen2MoeForCausalLM), alem's third mixture-of-experts family and the one with a
// shared expert, against Hugging Face transformers (tests/data/golden/tiny-qwen2-moe.json,
// written by scripts/reference/make_qwen2_moe_reference.py on the random
// tests/data/tiny-qwen2-moe): the family's row of model/architecture.cc (mlp.shared_expert.*,
// mlp.shared_expert_gate, q/k/v biases, a dense first layer), greedy tokens and every step's top-20
// logits and logsumexp on one rank (f32 and bf16 stores) and over in-process fake groups with
// tensor, expert and pipeline parallelism.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "engine/moe_ffn.h"
#include "engine/shard_plan.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/architecture.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "moe_golden.h"

namespace alem {
namespace {

using namespace test;  // the golden helpers

const char* const kModel = kQwen2MoeModel;

TEST(Qwen2Moe, ConfigAndTensorsFromHuggingFace) {
  ModelStoreReader store(tiny_store(kModel, DType::BF16));
  const ModelConfig& c = store.config();
  EXPECT_EQ(c.architecture, "qwen2moe");
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);
  EXPECT_EQ(c.shared_expert_intermediate_size, 64);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.mlp_only_layers, std::vector<int>{0});
  EXPECT_EQ(c.num_moe_layers(), 2);
  EXPECT_EQ(shared_expert_tensor_name(c, 1, ExpertMatrix::kDown),
            "model.layers.1.mlp.shared_expert.down_proj.weight");
  EXPECT_EQ(shared_expert_gate_tensor_name(c, 2), "model.layers.2.mlp.shared_expert_gate.weight");
  EXPECT_EQ(store.tensor_info(shared_expert_gate_tensor_name(c, 1)).shape,
            (std::vector<int64_t>{1, 64}));
  EXPECT_EQ(verify_store(tiny_store(kModel, DType::BF16)), "");
  EXPECT_EQ(stored_expert_dtype(store, c), DType::BF16);
  EXPECT_EQ(ModelConfig::from_json(c.to_json()).shared_expert_intermediate_size, 64);
  expect_config_round_trip_and_counts(store);
}

TEST(Qwen2Moe, FamilyRulesAreChecked) {
  ModelStoreReader store(tiny_store(kModel, DType::BF16));
  ModelConfig c = store.config();
  c.shared_expert_intermediate_size = 0;  // the family always has a shared expert
  EXPECT_THROW(c.validate(), Error);
  ModelConfig q3 = c;
  q3.architecture = "qwen3moe";  // Qwen3-MoE has none
  q3.shared_expert_intermediate_size = 64;
  EXPECT_THROW(q3.validate(), Error);
  const std::string base =
      R"({"architectures":["Qwen2MoeForCausalLM"],"vocab_size":64,"hidden_size":16,)"
      R"("num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":32,)"
      R"("max_position_embeddings":64,"num_experts":4,"num_experts_per_tok":2,)"
      R"("moe_intermediate_size":16)";
  EXPECT_THROW(ModelConfig::from_hf_config_json(base + "}"), Error);  // no shared expert size
  const ModelConfig ok =
      ModelConfig::from_hf_config_json(base + R"(,"shared_expert_intermediate_size":32})");
  EXPECT_EQ(ok.shared_expert_intermediate_size, 32);
  EXPECT_TRUE(ok.attention_bias);
  try {
    ModelConfig::from_hf_config_json(
        base + R"(,"shared_expert_intermediate_size":32,"use_sliding_window":true})");
    ADD_FAILURE() << "use_sliding_window accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("use_sliding_window"), std::string::npos) << e.message();
  }
  // tp must divide the shared expert too.
  c = store.config();
  ModelConfig odd = c;
  odd.shared_expert_intermediate_size = 66;
  EXPECT_THROW(make_shard_plan(odd, 4, 0, 1, 0, false, {}, 1), Error);
  const ShardPlan p = make_shard_plan(c, 4, 3, 1, 0, false, {}, 2);
  EXPECT_EQ(p.shared_ffn_size, 16);
  EXPECT_EQ(p.shared_ffn_begin, 48);
  EXPECT_EQ(p.expert_begin, 4);
}

class Qwen2MoeGolden : public ::testing::TestWithParam<DType> {};

TEST_P(Qwen2MoeGolden, OneRankMatchesTransformers) {
  check_golden_one_rank(kModel, tiny_store(kModel, GetParam()),
                        std::string(kModel) + " " + dtype_name(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Stores, Qwen2MoeGolden, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return dtype_name(info.param); });

// Every rank of the layout in its own thread over fake groups (tp, ep and pp combined).
TEST(Qwen2Moe, ShardedLayoutsMatchTransformers) {
  expect_golden_layouts(kModel, tiny_store(kModel, DType::BF16),
                        {{2, 1, 1}, {2, 1, 2}, {4, 1, 4}, {2, 2, 2}});  // {tp, pp, ep}
}

}  // namespace
}  // namespace alem
