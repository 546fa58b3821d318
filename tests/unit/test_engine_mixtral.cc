// Mixtral (MixtralForCausalLM), alem's second mixture-of-experts family, against Hugging Face
// transformers (tests/data/golden/tiny-mixtral.json, written by
// scripts/reference/make_mixtral_reference.py on the random tests/data/tiny-mixtral): the
// family's row of model/architecture.cc (block_sparse_moe.* names, expert size from
// intermediate_size, every layer sparse, top-k always renormalised, sliding window), greedy
// tokens and every step's top-20 logits and logsumexp on one rank (f32 and bf16 stores) and
// over in-process fake groups with tensor, expert and pipeline parallelism.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "core/error.h"
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

TEST(Mixtral, ConfigAndTensorsFromHuggingFace) {
  ModelStoreReader store(tiny_store(kMixtralModel, DType::BF16));
  const ModelConfig& c = store.config();
  EXPECT_EQ(c.architecture, "mixtral");
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 16);  // "head_dim": null in config.json: hidden / heads
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 32);  // Mixtral's experts are of intermediate_size
  EXPECT_TRUE(c.norm_topk_prob);           // always renormalised
  EXPECT_EQ(c.num_moe_layers(), c.num_layers);
  EXPECT_EQ(c.sliding_window, 1024);
  EXPECT_EQ(c.context_limit(), 1024);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(store.has_tensor("model.layers.2.block_sparse_moe.gate.weight"));
  EXPECT_TRUE(store.has_tensor("model.layers.2.block_sparse_moe.experts.7.w2.weight"));
  EXPECT_EQ(expert_tensor_name(c, 1, 3, ExpertMatrix::kUp),
            "model.layers.1.block_sparse_moe.experts.3.w3.weight");
  EXPECT_EQ(router_tensor_name(c, 0), "model.layers.0.block_sparse_moe.gate.weight");
  EXPECT_EQ(verify_store(tiny_store(kMixtralModel, DType::BF16)), "");
  expect_config_round_trip_and_counts(store);
}

TEST(Mixtral, FamilyRulesAreChecked) {
  ModelStoreReader store(tiny_store(kMixtralModel, DType::BF16));
  ModelConfig c = store.config();
  c.norm_topk_prob = false;  // Mixtral always renormalises
  EXPECT_THROW(c.validate(), Error);
  c = store.config();
  c.mlp_only_layers = {0};  // every Mixtral layer is sparse
  EXPECT_THROW(c.validate(), Error);
  c = store.config();
  c.sliding_window = -1;
  EXPECT_THROW(c.validate(), Error);
  // A window shorter than the model's positions limits the context the engine runs.
  const std::string hf =
      R"({"architectures":["MixtralForCausalLM"],"vocab_size":64,"hidden_size":16,)"
      R"("num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":32,)"
      R"("max_position_embeddings":4096,"num_local_experts":4,"num_experts_per_tok":2,)"
      R"("sliding_window":512,"norm_topk_prob":false})";
  const ModelConfig windowed = ModelConfig::from_hf_config_json(hf);
  EXPECT_EQ(windowed.sliding_window, 512);
  EXPECT_EQ(windowed.context_limit(), 512);
  EXPECT_TRUE(windowed.norm_topk_prob);  // the family's rule, whatever the file says
  EXPECT_EQ(windowed.moe_intermediate_size, 32);
  // Without experts a Mixtral config is refused.
  EXPECT_THROW(ModelConfig::from_hf_config_json(
                   R"({"architectures":["MixtralForCausalLM"],"vocab_size":64,"hidden_size":16,)"
                   R"("num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":32,)"
                   R"("max_position_embeddings":64,"num_experts_per_tok":2})"),
               Error);
  // The engine refuses a context past the window (sliding attention is not implemented).
  ModelStoreReader bf16(tiny_store(kMixtralModel, DType::BF16));
  ParallelContext ctx = make_solo_context();
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.max_model_len = 2048;
  try {
    ShardedTransformer model(bf16, ctx, *backend, options);
    ADD_FAILURE() << "a context of 2048 past the window of 1024 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("exceeds the model's context of 1024"), std::string::npos)
        << e.message();
  }
}

// The rule the planner calls (engine/shard_plan.h) is the one the engine applies.
TEST(Mixtral, ExpertParallelRuleIsOneFunction) {
  EXPECT_EQ(expert_parallel_problem(8, 32, 4, 2), "");
  EXPECT_EQ(expert_parallel_problem(8, 32, 4, 4), "");
  EXPECT_EQ(expert_parallel_problem(0, 0, 4, 1), "");  // dense, no ep
  EXPECT_NE(expert_parallel_problem(8, 32, 2, 4).find("does not divide the tensor parallel"),
            std::string::npos);
  EXPECT_NE(expert_parallel_problem(0, 0, 2, 2).find("needs a mixture-of-experts model"),
            std::string::npos);
  EXPECT_NE(expert_parallel_problem(12, 32, 8, 8).find("does not divide the 12 experts"),
            std::string::npos);
  EXPECT_NE(expert_parallel_problem(8, 30, 4, 1).find("moe_intermediate_size 30"),
            std::string::npos);
  EXPECT_NE(expert_parallel_problem(8, 32, 4, 2, DType::I8).find("int8"),
            std::string::npos);  // 32 columns over 2 ranks: half a group each
  ModelStoreReader store(tiny_store(kMixtralModel, DType::BF16));
  for (int tp : {1, 2, 4}) {
    for (int ep : {1, 2, 4, 8}) {
      const std::string why = expert_parallel_problem(8, 32, tp, ep);
      std::string thrown;
      try {
        make_shard_plan(store.config(), tp, 0, 1, 0, false, {}, ep);
      } catch (const Error& e) {
        thrown = e.message();
      }
      EXPECT_EQ(thrown.empty(), why.empty()) << "tp " << tp << " ep " << ep << ": " << thrown;
      if (!why.empty()) {
        EXPECT_NE(thrown.find(why), std::string::npos) << thrown;
      }
    }
  }
}

class MixtralGolden : public ::testing::TestWithParam<DType> {};

TEST_P(MixtralGolden, OneRankMatchesTransformers) {
  check_golden_one_rank(kMixtralModel, tiny_store(kMixtralModel, GetParam()),
                        std::string(kMixtralModel) + " " + dtype_name(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Stores, MixtralGolden, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return dtype_name(info.param); });

// Every rank of the layout in its own thread over fake groups (tp, ep and pp combined).
TEST(Mixtral, ShardedLayoutsMatchTransformers) {
  expect_golden_layouts(kMixtralModel, tiny_store(kMixtralModel, DType::BF16),
                        {{2, 1, 1}, {2, 1, 2}, {4, 1, 4}, {2, 2, 2}, {1, 3, 1}, {2, 3, 2}});
}

}  // namespace
}  // namespace alem
