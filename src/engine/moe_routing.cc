// The routing rules of the mixture-of-experts families (see moe_routing.h), following
// transformers' Qwen3MoeTopKRouter / MixtralTopKRouter (softmax) and Dots1TopkRouter /
// DeepseekV3TopkRouter (grouped sigmoid). Ties go to the lower expert or group id.
#include "engine/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "model/architecture.h"

namespace alem {

MoeRouting::MoeRouting(const ModelConfig& config, std::vector<float> correction_bias)
    : rule_(moe_family(config).routing),
      num_experts_(config.num_experts),
      top_k_(config.num_experts_per_tok),
      norm_topk_prob_(config.norm_topk_prob),
      n_group_(config.n_group),
      topk_group_(config.topk_group),
      routed_scaling_factor_(config.routed_scaling_factor),
      correction_bias_(std::move(correction_bias)) {
  ALEM_CHECK(top_k_ > 0 && top_k_ <= num_experts_, "MoE routing: top-k " + std::to_string(top_k_) +
                                                       " of " + std::to_string(num_experts_) +
                                                       " experts");
  if (rule_ == MoeRoutingRule::kGroupedSigmoid) {
    ALEM_CHECK(correction_bias_.empty() || correction_bias_.size() == size_t(num_experts_),
               "MoE routing: e_score_correction_bias has " +
                   std::to_string(correction_bias_.size()) + " values for " +
                   std::to_string(num_experts_) + " experts");
    if (correction_bias_.empty()) correction_bias_.assign(num_experts_, 0.f);
  } else {
    ALEM_CHECK(correction_bias_.empty(),
               "MoE routing: a score correction bias needs the "
               "grouped sigmoid routing of DeepSeek-V3");
  }
  scores_.resize(num_experts_);
  choice_.resize(num_experts_);
  group_scores_.resize(n_group_);
  order_.resize(num_experts_);
  groups_.resize(n_group_);
}

void MoeRouting::route(const float* logits, int64_t T, int32_t* chosen, float* weights) const {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits + t * num_experts_;
    int32_t* c = chosen + t * top_k_;
    float* w = weights + t * top_k_;
    if (rule_ == MoeRoutingRule::kSoftmax) {
      route_softmax(row, c, w);
    } else {
      route_grouped_sigmoid(row, c, w);
    }
  }
}

void MoeRouting::route_softmax(const float* row, int32_t* chosen, float* weights) const {
  const int64_t E = num_experts_, K = top_k_;
  const float max = *std::max_element(row, row + E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) {
    scores_[e] = std::exp(row[e] - max);
    sum += scores_[e];
  }
  for (int64_t e = 0; e < E; ++e) scores_[e] = static_cast<float>(scores_[e] / sum);
  std::iota(order_.begin(), order_.end(), 0);
  std::partial_sort(order_.begin(), order_.begin() + K, order_.end(), [&](int32_t a, int32_t b) {
    return scores_[a] > scores_[b] || (scores_[a] == scores_[b] && a < b);
  });
  float picked = 0;
  for (int64_t k = 0; k < K; ++k) picked += scores_[order_[k]];
  for (int64_t k = 0; k < K; ++k) {
    chosen[k] = order_[k];
    weights[k] = norm_topk_prob_ ? scores_[order_[k]] / picked : scores_[order_[k]];
  }
}

void MoeRouting::route_grouped_sigmoid(const float* row, int32_t* chosen, float* weights) const {
  const int E = num_experts_, K = top_k_, G = n_group_, per_group = num_experts_ / n_group_;
  for (int e = 0; e < E; ++e) {
    scores_[e] = 1.f / (1.f + std::exp(-row[e]));
    choice_[e] = scores_[e] + correction_bias_[e];
  }
  // Each group's rank: the sum of its two best choice scores.
  for (int g = 0; g < G; ++g) {
    const float* s = choice_.data() + g * per_group;
    float best = -INFINITY, second = -INFINITY;
    for (int i = 0; i < per_group; ++i) {
      if (s[i] > best) {
        second = best;
        best = s[i];
      } else if (s[i] > second) {
        second = s[i];
      }
    }
    group_scores_[g] = best + second;
  }
  std::iota(groups_.begin(), groups_.end(), 0);
  std::partial_sort(groups_.begin(), groups_.begin() + topk_group_, groups_.end(),
                    [&](int32_t a, int32_t b) {
                      return group_scores_[a] > group_scores_[b] ||
                             (group_scores_[a] == group_scores_[b] && a < b);
                    });
  // The experts of the kept groups, best choice score first.
  int n = 0;
  for (int i = 0; i < topk_group_; ++i) {
    for (int e = groups_[i] * per_group; e < (groups_[i] + 1) * per_group; ++e) order_[n++] = e;
  }
  std::partial_sort(order_.begin(), order_.begin() + K, order_.begin() + n,
                    [&](int32_t a, int32_t b) {
                      return choice_[a] > choice_[b] || (choice_[a] == choice_[b] && a < b);
                    });
  float picked = 0;
  for (int k = 0; k < K; ++k) picked += scores_[order_[k]];
  const float denominator = norm_topk_prob_ ? picked + 1e-20f : 1.f;
  for (int k = 0; k < K; ++k) {
    chosen[k] = order_[k];
    weights[k] = scores_[order_[k]] / denominator * routed_scaling_factor_;
  }
}

}  // namespace alem
