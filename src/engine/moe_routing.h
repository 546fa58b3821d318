// MoeRouting: how a mixture-of-experts family turns one token's router logits into the experts
// it goes to and their weights, in one place, apart from the expert FFNs and their dispatch
// (engine/moe_ffn.h). Two rules, as transformers implements them:
//
// - softmax (Qwen3-MoE, Qwen2-MoE, Mixtral): probabilities = softmax(logits); the k largest
//   (lower expert id first on ties); divided by their sum when norm_topk_prob.
// - DeepSeek-V3 (dots.llm1; DeepSeek-V3, GLM-4.5 route the same way): scores = sigmoid(logits);
//   the choice uses scores + e_score_correction_bias, the weights the scores without it. The
//   experts fall into n_group equal groups; each group is ranked by the sum of its two best
//   choice scores, the topk_group best groups are kept, and the k best experts of those groups
//   chosen. The k scores are divided by (their sum + 1e-20) when norm_topk_prob, then multiplied
//   by routed_scaling_factor.
#pragma once

#include <cstdint>
#include <vector>

#include "model/architecture.h"
#include "model/model_config.h"

namespace alem {

class MoeRouting {
 public:
  // The family's rule from `config`; `correction_bias` is e_score_correction_bias
  // ([num_experts], DeepSeek-V3 routing only; empty otherwise).
  MoeRouting(const ModelConfig& config, std::vector<float> correction_bias = {});

  // logits [T][num_experts] -> chosen [T][top_k] expert ids and weights [T][top_k].
  void route(const float* logits, int64_t T, int32_t* chosen, float* weights) const;

  int num_experts() const { return num_experts_; }
  int top_k() const { return top_k_; }

 private:
  void route_softmax(const float* logits, int32_t* chosen, float* weights) const;
  void route_grouped_sigmoid(const float* logits, int32_t* chosen, float* weights) const;

  MoeRoutingRule rule_;
  int num_experts_ = 0;
  int top_k_ = 0;
  bool norm_topk_prob_ = false;
  int n_group_ = 1;
  int topk_group_ = 1;
  float routed_scaling_factor_ = 1.f;
  std::vector<float> correction_bias_;
  // Per-token scratch.
  mutable std::vector<float> scores_, choice_, group_scores_;
  mutable std::vector<int32_t> order_, groups_;
};

}  // namespace alem
