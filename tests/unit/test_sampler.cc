// Tests for SamplingParams::validate and the sampler. Expected values come from references
// written here independently of src/engine/sampler.cc: a brute-force softmax / min_p / top_k /
// top_p in long double (top_p in vLLM's ascending-cumsum form), hand-computed penalties, and
// chi-square goodness-of-fit checks over 20000 seeded draws.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"

namespace alem {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> random_logits(int n, uint32_t seed, float scale = 3.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

// Reference distribution after temperature, min_p, top_k, top_p (vLLM v1 order), computed the
// slow, obvious way. Returns probabilities summing to 1 over the vocabulary (0 = removed).
std::vector<long double> reference_distribution(const std::vector<float>& logits,
                                                const SamplingParams& p) {
  const size_t n = logits.size();
  std::vector<long double> prob(n);
  long double mx = -INFINITY;
  for (float x : logits) mx = std::max<long double>(mx, x / (long double)p.temperature);
  long double z = 0;
  for (size_t i = 0; i < n; ++i)
    z += prob[i] = std::exp(logits[i] / (long double)p.temperature - mx);
  for (auto& q : prob) q /= z;
  // min_p against the top probability.
  const long double pmax = *std::max_element(prob.begin(), prob.end());
  for (auto& q : prob) {
    if (q < p.min_p * pmax) q = 0;
  }
  // top_k: a token survives when fewer than k tokens beat it (ties to the lower id).
  if (p.top_k > 0) {
    std::vector<long double> before = prob;
    for (size_t i = 0; i < n; ++i) {
      int beaten_by = 0;
      for (size_t j = 0; j < n; ++j) {
        if (before[j] > before[i] || (before[j] == before[i] && j < i)) ++beaten_by;
      }
      if (beaten_by >= p.top_k) prob[i] = 0;
    }
  }
  auto renormalise = [&] {
    long double s = std::accumulate(prob.begin(), prob.end(), 0.0L);
    for (auto& q : prob) q /= s;
  };
  renormalise();
  // top_p, vLLM style: sort ascending, drop while the cumulative sum is <= 1 - top_p,
  // never the last (largest) one.
  if (p.top_p < 1.0f) {
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return prob[a] < prob[b]; });
    long double cum = 0;
    for (size_t r = 0; r + 1 < n; ++r) {
      cum += prob[order[r]];
      if (cum <= 1.0L - p.top_p) prob[order[r]] = 0;
    }
    renormalise();
  }
  return prob;
}

// Upper 0.1% points of the chi-square distribution, by degrees of freedom (1..10).
double chi_square_critical_999(int dof) {
  static const double table[] = {0,     10.83, 13.82, 16.27, 18.47, 20.52,
                                 22.46, 24.32, 26.12, 27.88, 29.59};
  EXPECT_GE(dof, 1);
  EXPECT_LE(dof, 10);
  return table[dof];
}

struct ChiSquare {
  double statistic = 0;
  int dof = 0;
  int impossible_hits = 0;  // draws of tokens whose expected probability is 0
};

ChiSquare chi_square(const std::vector<int>& counts, const std::vector<long double>& expected,
                     int draws) {
  ChiSquare r;
  int support = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (expected[i] <= 0) {
      r.impossible_hits += counts[i];
      continue;
    }
    ++support;
    const double e = double(expected[i]) * draws;
    r.statistic += (counts[i] - e) * (counts[i] - e) / e;
  }
  r.dof = std::max(1, support - 1);
  return r;
}

std::vector<int> histogram(const std::vector<float>& logits, const SamplingParams& p, uint64_t seed,
                           int draws) {
  std::vector<int> counts(logits.size(), 0);
  Rng rng(seed);
  TokenCounts none;
  for (int d = 0; d < draws; ++d)
    ++counts.at(sample_full(logits.data(), logits.size(), p, none, rng));
  return counts;
}

// ---- validate -------------------------------------------------------------------------------

void expect_invalid(const SamplingParams& p, const std::string& field) {
  try {
    p.validate();
    ADD_FAILURE() << "validate() accepted a bad " << field;
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(field), std::string::npos) << e.message();
  }
}

TEST(SamplingParams, DefaultsAndEdgesAreValid) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate());
  p.temperature = 0;
  p.top_p = 1;
  p.min_p = 1;
  p.top_k = -1;
  p.presence_penalty = -2;
  p.frequency_penalty = 2;
  p.repetition_penalty = 0.01f;
  p.max_tokens = 1;
  EXPECT_NO_THROW(p.validate());
  p.temperature = 100;
  EXPECT_NO_THROW(p.validate());
  EXPECT_TRUE(SamplingParams{.temperature = 0}.greedy());
  EXPECT_FALSE(SamplingParams{.temperature = 0.5f}.greedy());
}

TEST(SamplingParams, ImpossibleValuesAreRejectedByName) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  expect_invalid(SamplingParams{.temperature = -0.1f}, "temperature");
  expect_invalid(SamplingParams{.temperature = 100.5f}, "temperature");
  expect_invalid(SamplingParams{.temperature = nan}, "temperature");
  expect_invalid(SamplingParams{.top_k = -2}, "top_k");
  expect_invalid(SamplingParams{.top_p = 0.0f}, "top_p");
  expect_invalid(SamplingParams{.top_p = 1.01f}, "top_p");
  expect_invalid(SamplingParams{.top_p = nan}, "top_p");
  expect_invalid(SamplingParams{.min_p = -0.01f}, "min_p");
  expect_invalid(SamplingParams{.min_p = 1.5f}, "min_p");
  expect_invalid(SamplingParams{.repetition_penalty = 0.0f}, "repetition_penalty");
  expect_invalid(SamplingParams{.repetition_penalty = -1.0f}, "repetition_penalty");
  expect_invalid(SamplingParams{.repetition_penalty = nan}, "repetition_penalty");
  expect_invalid(SamplingParams{.presence_penalty = 2.5f}, "presence_penalty");
  expect_invalid(SamplingParams{.presence_penalty = nan}, "presence_penalty");
  expect_invalid(SamplingParams{.frequency_penalty = -2.01f}, "frequency_penalty");
  expect_invalid(SamplingParams{.max_tokens = 0}, "max_tokens");
  expect_invalid(SamplingParams{.stop_token_ids = {3, -1}}, "stop_token_ids");
}

// ---- greedy ---------------------------------------------------------------------------------

TEST(Sampler, GreedyIsArgmaxWithRawLogprob) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    const std::vector<float> logits = random_logits(997, seed);
    size_t best = 0;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    long double z = 0;
    for (float x : logits) z += std::exp((long double)x);
    const double expected_logprob = double(logits[best] - std::log(z));

    SamplingParams p{.temperature = 0};
    Rng rng(seed);
    float logprob = 0;
    EXPECT_EQ(sample_full(logits.data(), logits.size(), p, {}, rng, &logprob), int(best));
    EXPECT_NEAR(logprob, expected_logprob, 1e-4);
    EXPECT_EQ(rng.draws(), 0u) << "greedy must not consume random draws";
  }
}

TEST(Sampler, GreedyTiesGoToTheLowerId) {
  const std::vector<float> logits = {1.0f, 5.0f, -kInf, 5.0f, 2.0f};
  Rng rng(1);
  EXPECT_EQ(sample_full(logits.data(), 5, SamplingParams{.temperature = 0}, {}, rng), 1);
  // Split so that the later tie arrives first in the merge.
  SamplingParams p{.temperature = 0};
  CandidateSet merged = merge(
      {local_candidates(logits.data() + 2, 2, 3, p), local_candidates(logits.data(), 0, 2, p)});
  EXPECT_EQ(choose(merged, p, rng), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    const std::vector<float> logits = random_logits(500, seed + 100, 1.0f);
    const int argmax = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
    Rng rng(seed);
    for (int draw = 0; draw < 10; ++draw) {
      EXPECT_EQ(sample_full(logits.data(), logits.size(),
                            SamplingParams{.temperature = 1.5f, .top_k = 1}, {}, rng),
                argmax);
    }
  }
}

TEST(Sampler, TinyTopPKeepsOnlyTheBest) {
  const std::vector<float> logits = random_logits(300, 7, 0.5f);
  const int argmax = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
  Rng rng(3);
  for (int draw = 0; draw < 50; ++draw) {
    EXPECT_EQ(sample_full(logits.data(), logits.size(),
                          SamplingParams{.temperature = 2.0f, .top_p = 1e-6f}, {}, rng),
              argmax);
  }
}

// ---- distributions --------------------------------------------------------------------------

struct DistributionCase {
  const char* name;
  SamplingParams params;
};

TEST(Sampler, EmpiricalDistributionMatchesReference) {
  // Distinct logits chosen so no top_p / min_p boundary sits on a rounding edge.
  const std::vector<float> logits = {1.2f, -0.3f, 2.1f, 0.4f, -1.7f, 1.9f, 0.0f, -0.8f};
  const DistributionCase cases[] = {
      {"T=1", {.temperature = 1.0f}},
      {"T=0.7", {.temperature = 0.7f}},
      {"T=1.8", {.temperature = 1.8f}},
      {"top_k=3", {.temperature = 1.0f, .top_k = 3}},
      {"top_p=0.8", {.temperature = 1.0f, .top_p = 0.8f}},
      {"min_p=0.2", {.temperature = 1.0f, .min_p = 0.2f}},
      {"T=1.3 top_k=6 top_p=0.85 min_p=0.05",
       {.temperature = 1.3f, .top_k = 6, .top_p = 0.85f, .min_p = 0.05f}},
      {"T=0.5 min_p=0.1 top_p=0.9", {.temperature = 0.5f, .top_p = 0.9f, .min_p = 0.1f}},
  };
  const int draws = 20000;
  uint64_t seed = 1234;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<long double> expected = reference_distribution(logits, c.params);
    const std::vector<int> counts = histogram(logits, c.params, seed++, draws);
    const ChiSquare r = chi_square(counts, expected, draws);
    EXPECT_EQ(r.impossible_hits, 0) << "drew tokens the truncation removed";
    EXPECT_LT(r.statistic, chi_square_critical_999(r.dof)) << "dof " << r.dof;
  }
}

TEST(Sampler, ChiSquareCheckHasPower) {
  // The same check must reject a distribution that is only a little wrong: draws at T=0.85
  // against the T=1 reference.
  const std::vector<float> logits = {1.2f, -0.3f, 2.1f, 0.4f, -1.7f, 1.9f, 0.0f, -0.8f};
  const std::vector<long double> wrong = reference_distribution(logits, {.temperature = 1.0f});
  const std::vector<int> counts = histogram(logits, {.temperature = 0.85f}, 99, 20000);
  const ChiSquare r = chi_square(counts, wrong, 20000);
  EXPECT_GT(r.statistic, chi_square_critical_999(r.dof));
}

TEST(Sampler, ReferenceTruncationsAreNotTrivial) {
  // Guards the test itself: each truncation above really removes tokens.
  const std::vector<float> logits = {1.2f, -0.3f, 2.1f, 0.4f, -1.7f, 1.9f, 0.0f, -0.8f};
  auto support = [&](const SamplingParams& p) {
    auto d = reference_distribution(logits, p);
    return std::count_if(d.begin(), d.end(), [](long double q) { return q > 0; });
  };
  EXPECT_EQ(support({.temperature = 1.0f}), 8);
  EXPECT_EQ(support({.temperature = 1.0f, .top_k = 3}), 3);
  EXPECT_LT(support({.temperature = 1.0f, .top_p = 0.8f}), 8);
  EXPECT_GT(support({.temperature = 1.0f, .top_p = 0.8f}), 1);
  EXPECT_LT(support({.temperature = 1.0f, .min_p = 0.2f}), 8);
  EXPECT_GT(support({.temperature = 1.0f, .min_p = 0.2f}), 1);
}

// ---- vocab-parallel ------------------------------------------------------------------------

// Splits [0, V) at the given interior cut points, runs penalties and candidates per slice,
// merges (through the byte format, as a gather would), then chooses.
int32_t sample_split(std::vector<float> logits, const std::vector<int64_t>& cuts,
                     const SamplingParams& p, const TokenCounts& counts, Rng& rng, float* logprob) {
  std::vector<int64_t> bounds = {0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(static_cast<int64_t>(logits.size()));
  std::vector<CandidateSet> parts;
  // Gather in reverse rank order: merge must not depend on arrival order.
  for (size_t s = bounds.size() - 1; s-- > 0;) {
    const int64_t begin = bounds[s], n = bounds[s + 1] - bounds[s];
    apply_penalties(logits.data() + begin, begin, n, p, counts);
    const std::vector<uint8_t> bytes =
        serialize_candidates(local_candidates(logits.data() + begin, begin, n, p));
    parts.push_back(deserialize_candidates(bytes.data(), bytes.size()));
  }
  return choose(merge(parts), p, rng, logprob);
}

TEST(Sampler, SplitVocabularyGivesTheSameTokensAsUnsplit) {
  const int V = 1000;
  const std::vector<float> logits = random_logits(V, 42, 2.0f);
  TokenCounts counts;
  counts.add_prompt({3, 17, 500, 999});
  for (int32_t t : {17, 17, 250, 640, 0}) counts.add_output(t);
  const SamplingParams cases[] = {
      {.temperature = 0},
      {.temperature = 1.0f},
      {.temperature = 0.8f, .top_k = 40},
      {.temperature = 1.2f, .top_p = 0.9f},
      {.temperature = 1.0f, .min_p = 0.05f},
      {.temperature = 0.9f, .top_k = 100, .top_p = 0.95f, .min_p = 0.01f},
      {.temperature = 1.0f,
       .top_k = 20,
       .repetition_penalty = 1.3f,
       .presence_penalty = 0.5f,
       .frequency_penalty = 0.4f},
      {.temperature = 0.0f, .repetition_penalty = 1.5f, .frequency_penalty = 1.0f},
  };
  const std::vector<std::vector<int64_t>> splits = {
      {500}, {1, 250, 251, 999}, {333, 666}, {17, 640}};
  for (size_t c = 0; c < std::size(cases); ++c) {
    SCOPED_TRACE("case " + std::to_string(c));
    for (const auto& cuts : splits) {
      Rng whole(77 + c), split(77 + c);
      for (int draw = 0; draw < 200; ++draw) {
        float lp_whole = 0, lp_split = 0;
        const int32_t a = sample_full(logits.data(), V, cases[c], counts, whole, &lp_whole);
        const int32_t b = sample_split(logits, cuts, cases[c], counts, split, &lp_split);
        ASSERT_EQ(a, b) << "draw " << draw;
        ASSERT_NEAR(lp_whole, lp_split, 1e-5);
      }
    }
  }
}

// ---- penalties ------------------------------------------------------------------------------

TEST(Sampler, PenaltiesMatchHandComputedValues) {
  // prompt {0, 1}; output 1 once, 2 twice.
  TokenCounts counts;
  counts.add_prompt({0, 1});
  counts.add_output(1);
  counts.add_output(2);
  counts.add_output(2);
  const SamplingParams p{
      .repetition_penalty = 2.0f, .presence_penalty = 0.25f, .frequency_penalty = 0.5f};
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, -2.0f, 0.0f};
  apply_penalties(logits.data(), 0, 6, p, counts);
  // 0: prompt only, positive -> 2/2.            1: seen, negative -> -1*2, then -0.5*1 - 0.25.
  // 2: output x2, positive -> 0.5/2 - 0.5*2 - 0.25.   3, 4, 5: never seen.
  const std::vector<float> expected = {1.0f, -2.75f, -1.0f, 3.0f, -2.0f, 0.0f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(logits[i], expected[i]) << "token " << i;

  // The same on a slice [2, 5): only token 2 of the counts falls in it.
  std::vector<float> slice = {0.5f, 3.0f, -2.0f};
  apply_penalties(slice.data(), 2, 3, p, counts);
  EXPECT_FLOAT_EQ(slice[0], -1.0f);
  EXPECT_FLOAT_EQ(slice[1], 3.0f);
  EXPECT_FLOAT_EQ(slice[2], -2.0f);

  // Zero logit counts as "not positive": multiplied, stays 0, then output penalties apply.
  TokenCounts zero;
  zero.add_output(5);
  std::vector<float> z = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  apply_penalties(z.data(), 0, 6, p, zero);
  EXPECT_FLOAT_EQ(z[5], -0.75f);
  EXPECT_FLOAT_EQ(z[4], 0.0f);
}

TEST(Sampler, PenaltiesChangeTheGreedyChoice) {
  std::vector<float> logits = {4.0f, 3.9f, 1.0f};
  TokenCounts counts;
  counts.add_output(0);
  Rng rng(1);
  EXPECT_EQ(sample_full(logits.data(), 3, {.temperature = 0}, counts, rng), 0);
  EXPECT_EQ(
      sample_full(logits.data(), 3, {.temperature = 0, .presence_penalty = 0.2f}, counts, rng), 1);
  EXPECT_EQ(logits[0], 4.0f) << "sample_full must not modify the caller's logits";
}

// ---- seeds ----------------------------------------------------------------------------------

TEST(Sampler, SameSeedSameSequenceWhateverTheBatch) {
  const std::vector<float> a = random_logits(256, 5, 1.0f);
  const std::vector<float> b = random_logits(256, 6, 1.0f);
  const SamplingParams p{.temperature = 1.0f, .top_p = 0.95f, .seed = 2024};
  auto run_alone = [&](uint64_t seed) {
    Rng rng = Rng::for_request(SamplingParams{.seed = seed}, 0);
    std::vector<int32_t> out;
    for (int i = 0; i < 100; ++i) out.push_back(sample_full(a.data(), 256, p, {}, rng));
    return out;
  };
  // Same request, but now interleaved with another request drawing from its own stream.
  Rng mine = Rng::for_request(p, 0), other(9);
  std::vector<int32_t> interleaved;
  for (int i = 0; i < 100; ++i) {
    sample_full(b.data(), 256, {.temperature = 1.0f}, {}, other);
    interleaved.push_back(sample_full(a.data(), 256, p, {}, mine));
  }
  EXPECT_EQ(run_alone(2024), run_alone(2024));
  EXPECT_EQ(run_alone(2024), interleaved);
  EXPECT_NE(run_alone(2024), run_alone(2025));
}

TEST(Sampler, RngIsUniformAndRestorable) {
  Rng rng(11);
  double sum = 0;
  int low = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    low += u < 0.1;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
  EXPECT_NEAR(low / 100000.0, 0.1, 0.005);
  Rng copy(11);
  copy.set_draws(rng.draws());
  EXPECT_EQ(copy.next_u64(), rng.next_u64());
}

// ---- bad input ------------------------------------------------------------------------------

TEST(Sampler, RejectsLogitsItCannotSample) {
  Rng rng(1);
  const std::vector<float> all_masked = {-kInf, -kInf};
  EXPECT_THROW(sample_full(all_masked.data(), 2, {}, {}, rng), Error);
  const std::vector<float> nan = {0.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(sample_full(nan.data(), 2, {}, {}, rng), Error);
  // Masked tokens are never drawn.
  const std::vector<float> partly = {-kInf, 0.0f, -kInf, 0.0f};
  for (int i = 0; i < 200; ++i) {
    const int32_t t = sample_full(partly.data(), 4, {.temperature = 2.0f}, {}, rng);
    EXPECT_TRUE(t == 1 || t == 3);
  }
  EXPECT_THROW(merge({}), Error);
  EXPECT_THROW(merge({local_candidates(partly.data(), 0, 2, {.temperature = 0}),
                      local_candidates(partly.data() + 2, 2, 2, {.temperature = 1})}),
               Error);
}

TEST(Sampler, CandidateBytesRejectTruncation) {
  const std::vector<float> logits = random_logits(16, 1);
  const auto bytes = serialize_candidates(local_candidates(logits.data(), 0, 16, {}));
  const CandidateSet back = deserialize_candidates(bytes.data(), bytes.size());
  EXPECT_EQ(back.candidates.size(), 16u);
  EXPECT_EQ(back.vocab_covered, 16);
  EXPECT_THROW(deserialize_candidates(bytes.data(), bytes.size() - 1), Error);
  EXPECT_THROW(deserialize_candidates(bytes.data(), 10), Error);
}

}  // namespace
}  // namespace alem
