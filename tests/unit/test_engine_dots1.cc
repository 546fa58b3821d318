// dots.llm1 (Dots1ForCausalLM), alem's family with DeepSeek-V3 routing, against Hugging Face
// transformers (tests/data/golden/tiny-dots1-{a,b}.json, written by
// scripts/reference/make_dots1_reference.py on the random tests/data/tiny-dots1-*): the
// family's row of model/architecture.cc (sigmoid routing with e_score_correction_bias, grouped
// top-k, routed_scaling_factor, gate-less shared experts of n_shared_experts x
// moe_intermediate_size, first_k_dense_replace dense layers, Qwen3 attention with q/k norm),
// greedy tokens and every step's top-20 logits and logsumexp on one rank (f32 and bf16 stores)
// and over in-process fake groups with tensor, expert and pipeline parallelism, and the configs
// refused by name.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "engine/moe_ffn.h"
#include "engine/shard_plan.h"
#include "model/architecture.h"
#include "model/model_store.h"
#include "moe_golden.h"

namespace alem {
namespace {

using namespace test;  // the golden helpers

const char* const kDots1Models[] = {"tiny-dots1-a", "tiny-dots1-b"};

TEST(Dots1, ConfigAndTensorsFromHuggingFace) {
  ModelStoreReader a(tiny_store("tiny-dots1-a", DType::BF16));
  const ModelConfig& ca = a.config();
  EXPECT_EQ(ca.architecture, "dots1");
  EXPECT_TRUE(ca.qk_norm);
  EXPECT_EQ(ca.head_dim, 16);
  EXPECT_EQ(ca.num_experts, 8);
  EXPECT_EQ(ca.num_experts_per_tok, 2);
  EXPECT_EQ(ca.n_group, 4);
  EXPECT_EQ(ca.topk_group, 2);
  EXPECT_TRUE(ca.norm_topk_prob);
  EXPECT_FLOAT_EQ(ca.routed_scaling_factor, 2.5f);
  EXPECT_EQ(ca.shared_expert_intermediate_size, 32);   // 1 shared expert of 32
  EXPECT_EQ(ca.mlp_only_layers, std::vector<int>{0});  // first_k_dense_replace 1
  EXPECT_TRUE(ca.tie_word_embeddings);
  EXPECT_EQ(router_bias_tensor_name(ca, 1), "model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(a.tensor_info(router_bias_tensor_name(ca, 2)).shape, std::vector<int64_t>{8});
  EXPECT_EQ(shared_expert_tensor_name(ca, 1, ExpertMatrix::kUp),
            "model.layers.1.mlp.shared_experts.up_proj.weight");
  EXPECT_THROW(shared_expert_gate_tensor_name(ca, 1), Error);  // no gate on the shared experts
  EXPECT_EQ(verify_store(tiny_store("tiny-dots1-a", DType::BF16)), "");
  expect_config_round_trip_and_counts(a);

  ModelStoreReader b(tiny_store("tiny-dots1-b", DType::BF16));
  const ModelConfig& cb = b.config();
  EXPECT_EQ(cb.num_experts, 12);
  EXPECT_EQ(cb.num_experts_per_tok, 3);
  EXPECT_EQ(cb.n_group, 1);
  EXPECT_FALSE(cb.norm_topk_prob);
  EXPECT_EQ(cb.shared_expert_intermediate_size, 64);  // 2 shared experts of 32
  EXPECT_EQ(cb.num_moe_layers(), 3);
  expect_config_round_trip_and_counts(b);
}

TEST(Dots1, FamilyRulesAreChecked) {
  ModelStoreReader store(tiny_store("tiny-dots1-a", DType::BF16));
  auto refused = [](const ModelConfig& c) {
    try {
      c.validate();
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  ModelConfig c = store.config();
  c.n_group = 3;  // 8 experts do not fall into 3 groups
  EXPECT_NE(refused(c).find("n_group"), std::string::npos) << refused(c);
  c = store.config();
  c.topk_group = 5;
  EXPECT_NE(refused(c).find("topk_group"), std::string::npos) << refused(c);
  c = store.config();
  c.topk_group = 1;
  c.num_experts_per_tok = 3;  // one kept group of 2 experts cannot give 3
  EXPECT_NE(refused(c).find("topk_group"), std::string::npos) << refused(c);
  c = store.config();
  c.routed_scaling_factor = 0.f;
  EXPECT_NE(refused(c).find("routed_scaling_factor"), std::string::npos) << refused(c);
  ModelConfig q3 = c;
  q3.architecture = "qwen3moe";  // softmax families have no groups or scaling
  q3.shared_expert_intermediate_size = 0;
  q3.routed_scaling_factor = 1.f;
  EXPECT_NE(refused(q3).find("n_group"), std::string::npos) << refused(q3);

  const std::string base =
      R"({"architectures":["Dots1ForCausalLM"],"vocab_size":64,"hidden_size":16,)"
      R"("num_hidden_layers":2,"num_attention_heads":2,"intermediate_size":32,)"
      R"("max_position_embeddings":64,"n_routed_experts":4,"num_experts_per_tok":2,)"
      R"("moe_intermediate_size":8,"n_shared_experts":2,"first_k_dense_replace":1)";
  const ModelConfig ok = ModelConfig::from_hf_config_json(base + "}");
  EXPECT_EQ(ok.shared_expert_intermediate_size, 16);
  EXPECT_EQ(ok.mlp_only_layers, std::vector<int>{0});
  EXPECT_EQ(ok.n_group, 1);
  EXPECT_FLOAT_EQ(ok.routed_scaling_factor, 1.f);
  auto hf_refused = [&](const std::string& extra) {
    try {
      ModelConfig::from_hf_config_json(base + extra + "}");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  EXPECT_NE(hf_refused(R"(,"layer_types":["full_attention","sliding_attention"])")
                .find("sliding_attention"),
            std::string::npos);
  EXPECT_NE(hf_refused(R"(,"sliding_window":16,"max_window_layers":1)").find("sliding"),
            std::string::npos);
  EXPECT_NE(hf_refused(R"(,"scoring_func":"softmax")").find("scoring_func"), std::string::npos);
  EXPECT_NE(hf_refused(R"(,"first_k_dense_replace":3)").find("first_k_dense_replace"),
            std::string::npos);
  EXPECT_EQ(hf_refused(R"(,"scoring_func":"noaux_tc","sliding_window":16,"max_window_layers":2)"),
            "");
  // tp must divide the shared experts like any FFN.
  ModelConfig odd = store.config();
  odd.shared_expert_intermediate_size = 34;
  EXPECT_THROW(make_shard_plan(odd, 4, 0, 1, 0, false, {}, 1), Error);
}

// DeepSeek-V2/V3 and GLM-4.5 need attention alem does not run (MLA; partial rotary): refused by
// name, saying why.
TEST(Dots1, DeepSeekFamiliesAreRefusedByName) {
  for (const char* cls : {"DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"}) {
    try {
      ModelConfig::from_hf_config_json(std::string(R"({"architectures":[")") + cls +
                                       R"("],"vocab_size":64,"hidden_size":16})");
      ADD_FAILURE() << cls << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("multi-head latent attention"), std::string::npos) << e.message();
    }
  }
}

class Dots1Golden : public ::testing::TestWithParam<std::tuple<const char*, DType>> {};

TEST_P(Dots1Golden, OneRankMatchesTransformers) {
  const auto [name, dtype] = GetParam();
  check_golden_one_rank(name, tiny_store(name, dtype), std::string(name) + " " + dtype_name(dtype));
}

INSTANTIATE_TEST_SUITE_P(Models, Dots1Golden,
                         ::testing::Combine(::testing::ValuesIn(kDots1Models),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param)).substr(11) + "_" +
                                  dtype_name(std::get<1>(info.param));
                         });

// Every rank of the layout in its own thread over fake groups (tp, ep and pp combined).
TEST(Dots1, ShardedLayoutsMatchTransformers) {
  for (const char* name : kDots1Models) {
    expect_golden_layouts(name, tiny_store(name, DType::BF16),
                          {{2, 1, 1}, {2, 1, 2}, {4, 1, 4}, {2, 3, 2}});  // {tp, pp, ep}
  }
}

}  // namespace
}  // namespace alem
