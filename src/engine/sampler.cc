// Implements the sampler steps of sampler.h. All sums run in double and in a canonical token
// order (by id, or by descending logit with ties to the lower id), so results do not depend on
// how the vocabulary was split or how candidates arrived.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace alem {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Strict "better than": higher logit, ties to the lower token id.
bool better(const Candidate& a, const Candidate& b) {
  if (a.logit != b.logit) return a.logit > b.logit;
  return a.token_id < b.token_id;
}
bool lower_id(const Candidate& a, const Candidate& b) {
  return a.token_id < b.token_id;
}

// Keeps the best `k` candidates (sorted best first); keeps all, sorted, when there are fewer.
void keep_top_k(std::vector<Candidate>& cands, int64_t k) {
  if (static_cast<int64_t>(cands.size()) > k) {
    std::partial_sort(cands.begin(), cands.begin() + k, cands.end(), better);
    cands.resize(static_cast<size_t>(k));
  } else {
    std::sort(cands.begin(), cands.end(), better);
  }
}

// exp(x) for float x to about 2 ulp, written branch-free so loops over it vectorise: Cody-Waite
// range reduction x = n ln2 + r, a degree-6 polynomial for exp(r), and 2^n put into the
// exponent bits. Inputs below -87 (including -inf) give exactly 0; the callers never pass x > 0.
inline float exp_nonpositive(float x) {
  const float clamped = std::max(x, -87.0f);
  const float n = (clamped * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.0f ? 0.0f : p * scale;
}

// Sum of exp_nonpositive((x[i] - shift) * scale) over i, in 8 interleaved double lanes (a fixed
// order, so equal inputs give bit-equal sums), optionally storing each term in out[i].
double sum_exp(const float* x, int64_t n, float shift, float scale, float* out) {
  constexpr int kLanes = 8;
  double lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  float terms[kLanes];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) terms[l] = exp_nonpositive((x[i + l] - shift) * scale);
    for (int l = 0; l < kLanes; ++l) lanes[l] += terms[l];
    if (out) std::memcpy(out + i, terms, sizeof(terms));
  }
  for (; i < n; ++i) {
    const float t = exp_nonpositive((x[i] - shift) * scale);
    lanes[i % kLanes] += t;
    if (out) out[i] = t;
  }
  double sum = 0.0;
  for (double lane : lanes) sum += lane;
  return sum;
}

void fill_stats(const float* x, int64_t n, CandidateSet& set) {
  float max_logit = kNegInf;
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    bad |= !(x[i] < std::numeric_limits<float>::infinity());  // NaN or +inf
    max_logit = x[i] > max_logit ? x[i] : max_logit;
  }
  ALEM_CHECK(!bad, "logits contain NaN or +inf (vocab slice of " + std::to_string(n) + ")");
  set.max_logit = max_logit;
  set.sum_exp = max_logit == kNegInf ? 0.0 : sum_exp(x, n, max_logit, 1.0f, nullptr);
  set.vocab_covered = n;
}

}  // namespace

// ---- TokenCounts ----------------------------------------------------------------------------

void TokenCounts::add_prompt(std::span<const int32_t> prompt_tokens) {
  for (int32_t id : prompt_tokens) entries_[id].in_prompt = true;
}

void TokenCounts::add_output(int32_t token_id) {
  ++entries_[token_id].output_count;
}

// ---- Rng ------------------------------------------------------------------------------------

uint64_t Rng::next_u64() {
  // SplitMix64 (Steele, Lea, Flood 2014): the counter-th element of the Weyl sequence, mixed.
  ++counter_;
  uint64_t z = seed_ + counter_ * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Rng::uniform() {
  return static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
}

// ---- penalties ------------------------------------------------------------------------------

void apply_penalties(float* logits_slice, int64_t vocab_begin, int64_t n,
                     const SamplingParams& params, const TokenCounts& counts) {
  if (!params.has_penalties() || counts.empty()) return;
  const int64_t vocab_end = vocab_begin + n;
  for (const auto& [token_id, entry] : counts.entries()) {
    if (token_id < vocab_begin || token_id >= vocab_end) continue;
    float& x = logits_slice[token_id - vocab_begin];
    if (params.repetition_penalty != 1.0f && (entry.in_prompt || entry.output_count > 0)) {
      x = x > 0.0f ? x / params.repetition_penalty : x * params.repetition_penalty;
    }
    if (entry.output_count > 0) {
      x -= params.frequency_penalty * static_cast<float>(entry.output_count);
      x -= params.presence_penalty;
    }
  }
}

// ---- candidates -----------------------------------------------------------------------------

CandidateSet local_candidates(const float* logits_slice, int64_t vocab_begin, int64_t n,
                              const SamplingParams& params) {
  ALEM_CHECK(n >= 0 && vocab_begin >= 0, "vocab slice must have non-negative begin and size");
  ALEM_CHECK(vocab_begin + n <= std::numeric_limits<int32_t>::max(),
             "vocab slice exceeds the int32 token id range");
  CandidateSet set;
  fill_stats(logits_slice, n, set);
  auto id_of = [&](int64_t i) { return static_cast<int32_t>(vocab_begin + i); };

  if (params.greedy()) {
    set.kind = CandidateKind::kArgmax;
    if (n > 0) {
      int64_t best = 0;
      for (int64_t i = 1; i < n; ++i) {
        if (logits_slice[i] > logits_slice[best]) best = i;  // ties keep the lower id
      }
      set.candidates.push_back({logits_slice[best], id_of(best)});
    }
    return set;
  }

  set.candidates.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) set.candidates[i] = {logits_slice[i], id_of(i)};
  if (params.top_k_enabled()) {
    set.kind = CandidateKind::kTopK;
    set.top_k = params.top_k;
    keep_top_k(set.candidates, params.top_k);
  } else {
    set.kind = CandidateKind::kAll;  // already in id order
  }
  return set;
}

CandidateSet merge(const std::vector<CandidateSet>& parts) {
  ALEM_CHECK(!parts.empty(), "merge needs at least one candidate set");
  CandidateSet out;
  out.kind = parts.front().kind;
  out.top_k = parts.front().top_k;
  out.max_logit = kNegInf;
  size_t total = 0;
  for (const CandidateSet& p : parts) {
    ALEM_CHECK(p.kind == out.kind && p.top_k == out.top_k,
               "merge: candidate sets were made with different sampling params");
    out.max_logit = std::max(out.max_logit, p.max_logit);
    out.vocab_covered += p.vocab_covered;
    total += p.candidates.size();
  }
  for (const CandidateSet& p : parts) {
    if (p.max_logit != kNegInf)
      out.sum_exp += p.sum_exp * std::exp(double(p.max_logit) - out.max_logit);
  }
  out.candidates.reserve(total);
  for (const CandidateSet& p : parts) {
    out.candidates.insert(out.candidates.end(), p.candidates.begin(), p.candidates.end());
  }
  switch (out.kind) {
    case CandidateKind::kArgmax:
      keep_top_k(out.candidates, 1);
      break;
    case CandidateKind::kTopK:
      keep_top_k(out.candidates, out.top_k);
      break;
    case CandidateKind::kAll:
      if (!std::is_sorted(out.candidates.begin(), out.candidates.end(), lower_id)) {
        std::sort(out.candidates.begin(), out.candidates.end(), lower_id);
      }
      break;
  }
  return out;
}

// ---- choice ---------------------------------------------------------------------------------

int32_t choose(const CandidateSet& set, const SamplingParams& params, Rng& rng, float* logprob) {
  ALEM_CHECK(!set.candidates.empty(), "choose: the candidate set is empty");
  ALEM_CHECK(set.max_logit != kNegInf, "choose: every logit is -inf, nothing can be sampled");
  const double log_normaliser = double(set.max_logit) + std::log(set.sum_exp);
  auto result = [&](const Candidate& c) {
    if (logprob) *logprob = static_cast<float>(double(c.logit) - log_normaliser);
    return c.token_id;
  };

  if (params.greedy()) {
    return result(*std::min_element(set.candidates.begin(), set.candidates.end(), better));
  }

  // Canonical order (by id) so every sum below is the same however the set was assembled.
  std::vector<Candidate> cands = set.candidates;
  if (!std::is_sorted(cands.begin(), cands.end(), lower_id)) {
    std::sort(cands.begin(), cands.end(), lower_id);
  }
  const float best_logit = std::min_element(cands.begin(), cands.end(), better)->logit;
  const double inv_temperature = 1.0 / params.temperature;

  // Temperature: weight relative to the best token, w = p / p_max, in (0, 1].
  struct Weighted {
    double weight;
    int32_t index;  // into cands
  };
  std::vector<float> logits(cands.size()), weights(cands.size());
  for (size_t i = 0; i < cands.size(); ++i) logits[i] = cands[i].logit;
  sum_exp(logits.data(), static_cast<int64_t>(logits.size()), best_logit,
          static_cast<float>(inv_temperature), weights.data());
  std::vector<Weighted> kept;
  kept.reserve(cands.size());
  for (size_t i = 0; i < cands.size(); ++i) {
    // min_p: p >= min_p * p_max  <=>  w >= min_p. w == 0 tokens (-inf logits) can never win.
    if (weights[i] > 0.0f && weights[i] >= params.min_p) {
      kept.push_back({weights[i], static_cast<int32_t>(i)});
    }
  }
  auto heavier = [&](const Weighted& a, const Weighted& b) {
    if (a.weight != b.weight) return a.weight > b.weight;
    return cands[a.index].token_id < cands[b.index].token_id;
  };

  // top_k, over what min_p left.
  bool sorted_desc = false;
  if (params.top_k_enabled() && static_cast<int64_t>(kept.size()) > params.top_k) {
    std::partial_sort(kept.begin(), kept.begin() + params.top_k, kept.end(), heavier);
    kept.resize(static_cast<size_t>(params.top_k));
    sorted_desc = true;
  }

  double total = 0.0;
  for (const Weighted& k : kept) total += k.weight;

  // top_p on the renormalised distribution: keep token i (best first) while the mass of the
  // tokens before it is < top_p; always keeps the best one.
  if (params.top_p < 1.0f) {
    const double threshold = double(params.top_p) * total;
    size_t sorted = sorted_desc ? kept.size() : 0;
    size_t keep = kept.size();
    double before = 0.0;
    for (size_t i = 0; i < kept.size(); ++i) {
      if (i == sorted) {  // sort lazily, in growing chunks: the nucleus is usually small
        const size_t upto = std::min(kept.size(), std::max<size_t>(64, sorted * 4));
        std::partial_sort(kept.begin() + sorted, kept.begin() + upto, kept.end(), heavier);
        sorted = upto;
      }
      if (i > 0 && before >= threshold) {
        keep = i;
        break;
      }
      before += kept[i].weight;
    }
    kept.resize(keep);
    total = 0.0;
    for (const Weighted& k : kept) total += k.weight;
  }

  const double target = rng.uniform() * total;
  double cumulative = 0.0;
  for (const Weighted& k : kept) {
    cumulative += k.weight;
    if (cumulative > target) return result(cands[k.index]);
  }
  return result(cands[kept.back().index]);  // rounding left target at the very top
}

int32_t sample_full(const float* logits, int64_t vocab_size, const SamplingParams& params,
                    const TokenCounts& counts, Rng& rng, float* logprob) {
  if (params.has_penalties() && !counts.empty()) {
    std::vector<float> penalised(logits, logits + vocab_size);
    apply_penalties(penalised.data(), 0, vocab_size, params, counts);
    return choose(local_candidates(penalised.data(), 0, vocab_size, params), params, rng, logprob);
  }
  return choose(local_candidates(logits, 0, vocab_size, params), params, rng, logprob);
}

// ---- bytes ----------------------------------------------------------------------------------

namespace {

template <typename T>
void put(std::vector<uint8_t>& out, const T& value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <typename T>
T get(const uint8_t* data, size_t size, size_t& pos) {
  ALEM_CHECK(size - pos >= sizeof(T), "candidate set bytes truncated at " + std::to_string(pos));
  T value;
  std::memcpy(&value, data + pos, sizeof(T));
  pos += sizeof(T);
  return value;
}

}  // namespace

std::vector<uint8_t> serialize_candidates(const CandidateSet& set) {
  std::vector<uint8_t> out;
  out.reserve(32 + set.candidates.size() * 8);
  put<uint8_t>(out, static_cast<uint8_t>(set.kind));
  put<int32_t>(out, set.top_k);
  put<float>(out, set.max_logit);
  put<double>(out, set.sum_exp);
  put<int64_t>(out, set.vocab_covered);
  put<uint64_t>(out, set.candidates.size());
  for (const Candidate& c : set.candidates) {
    put<float>(out, c.logit);
    put<int32_t>(out, c.token_id);
  }
  return out;
}

CandidateSet deserialize_candidates(const uint8_t* data, size_t size) {
  size_t pos = 0;
  CandidateSet set;
  const auto kind = get<uint8_t>(data, size, pos);
  ALEM_CHECK(kind <= static_cast<uint8_t>(CandidateKind::kAll),
             "candidate set bytes carry an unknown kind " + std::to_string(kind));
  set.kind = static_cast<CandidateKind>(kind);
  set.top_k = get<int32_t>(data, size, pos);
  set.max_logit = get<float>(data, size, pos);
  set.sum_exp = get<double>(data, size, pos);
  set.vocab_covered = get<int64_t>(data, size, pos);
  const auto count = get<uint64_t>(data, size, pos);
  ALEM_CHECK(count <= (size - pos) / 8, "candidate set bytes shorter than their candidate count");
  set.candidates.resize(static_cast<size_t>(count));
  for (Candidate& c : set.candidates) {
    c.logit = get<float>(data, size, pos);
    c.token_id = get<int32_t>(data, size, pos);
  }
  ALEM_CHECK(pos == size, "candidate set bytes have " + std::to_string(size - pos) + " extra");
  return set;
}

}  // namespace alem
