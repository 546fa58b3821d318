// engine/moe_routing against transformers' own DeepSeek-V3 router (Dots1TopkRouter), on the
// random logits and correction biases of tests/data/moe_routing_reference.json (written by
// scripts/reference/make_dots1_reference.py): the chosen experts equal, the weights within
// 1e-6 relative, over grouped and ungrouped cases with and without renormalisation and scaling.
// Also the softmax rule on a hand-checked row, and that a bias reorders the choice but never
// the weights.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/moe_routing.h"
#include "test_env.h"

namespace alem {
namespace {

ModelConfig grouped_config(int experts, int top_k, int n_group, int topk_group, bool norm,
                           float scale) {
  ModelConfig c;
  c.architecture = "dots1";
  c.num_experts = experts;
  c.num_experts_per_tok = top_k;
  c.n_group = n_group;
  c.topk_group = topk_group;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = scale;
  return c;
}

TEST(MoeRouting, GroupedSigmoidMatchesTransformers) {
  std::ifstream in(test::data_dir() + "/moe_routing_reference.json");
  ASSERT_TRUE(in.good()) << "tests/data/moe_routing_reference.json missing";
  const nlohmann::json ref = nlohmann::json::parse(in);
  int tokens = 0;
  for (const nlohmann::json& c : ref.at("cases")) {
    const int E = c.at("experts"), K = c.at("top_k");
    const MoeRouting routing(grouped_config(E, K, c.at("n_group"), c.at("topk_group"), c.at("norm"),
                                            c.at("scale").get<float>()),
                             c.at("bias").get<std::vector<float>>());
    const auto logits = c.at("logits").get<std::vector<std::vector<float>>>();
    const auto chosen = c.at("chosen").get<std::vector<std::vector<int32_t>>>();
    const auto weights = c.at("weights").get<std::vector<std::vector<float>>>();
    EXPECT_GT(c.at("bias_changes_choice").get<int>(), 0);  // the bias matters in these cases
    for (size_t t = 0; t < logits.size(); ++t) {
      std::vector<int32_t> ids(K);
      std::vector<float> w(K);
      routing.route(logits[t].data(), 1, ids.data(), w.data());
      // transformers' order is unspecified (topk sorted=False): compare by expert id.
      std::vector<std::pair<int32_t, float>> got;
      for (int k = 0; k < K; ++k) got.emplace_back(ids[k], w[k]);
      std::sort(got.begin(), got.end());
      for (int k = 0; k < K; ++k) {
        EXPECT_EQ(got[k].first, chosen[t][k]) << "case E" << E << " token " << t;
        EXPECT_NEAR(got[k].second, weights[t][k], 1e-6 * std::fabs(weights[t][k]) + 1e-7)
            << "case E" << E << " token " << t << " expert " << got[k].first;
      }
      ++tokens;
    }
  }
  EXPECT_EQ(tokens, 4 * 32);
}

// Two groups of two; group 0 = {0, 1}, group 1 = {2, 3}. Experts 0 and 1 score best, but the
// bias lifts group 1 above group 0 and only one group is kept: experts 2 and 3 are chosen, and
// weighted by their scores without the bias, renormalised and scaled.
TEST(MoeRouting, BiasChoosesButDoesNotWeigh) {
  const float logits[4] = {4.f, 2.f, 0.5f, 0.f};
  const std::vector<float> bias = {0.f, 0.f, 0.6f, 0.6f};
  const MoeRouting routing(grouped_config(4, 2, 2, 1, true, 2.f), bias);
  int32_t ids[2];
  float w[2];
  routing.route(logits, 1, ids, w);
  const float s2 = 1.f / (1.f + std::exp(-0.5f)), s3 = 0.5f;
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], 2.f * s2 / (s2 + s3), 1e-6);
  EXPECT_NEAR(w[1], 2.f * s3 / (s2 + s3), 1e-6);
  // Without the bias group 0 (sigmoid(4) + sigmoid(2) = 1.86) beats group 1 (0.62 + 0.5).
  const MoeRouting unbiased(grouped_config(4, 2, 2, 1, false, 1.f));
  unbiased.route(logits, 1, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  EXPECT_NEAR(w[0], 1.f / (1.f + std::exp(-4.f)), 1e-6);
}

TEST(MoeRouting, SoftmaxTopK) {
  ModelConfig c;
  c.architecture = "qwen3moe";
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  const float logits[4] = {1.f, 3.f, 2.f, 0.f};
  double z = 0;
  for (float l : logits) z += std::exp(l);
  int32_t ids[2];
  float w[2];
  MoeRouting(c).route(logits, 1, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(2.0) / z, 1e-6);
  c.norm_topk_prob = true;
  MoeRouting(c).route(logits, 1, ids, w);
  EXPECT_NEAR(w[0] + w[1], 1.f, 1e-6);
  EXPECT_NEAR(w[0], std::exp(1.0) / (std::exp(1.0) + 1), 1e-6);
  // A correction bias belongs to the grouped rule only.
  EXPECT_THROW(MoeRouting(c, {0.f, 0.f, 0.f, 0.f}), Error);
}

}  // namespace
}  // namespace alem
