// Raw log-probabilities from (possibly vocab-sharded) logit rows; see logprobs.h.
#include "engine/logprobs.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace alem {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Higher logit first, ties to the lower token id (the sampler's order).
bool better(const TokenLogprob& a, const TokenLogprob& b) {
  if (a.logprob != b.logprob) return a.logprob > b.logprob;
  return a.token_id < b.token_id;
}

void keep_best(std::vector<TokenLogprob>& v, size_t n) {
  if (v.size() > n) {
    std::partial_sort(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n), v.end(), better);
    v.resize(n);
  } else {
    std::sort(v.begin(), v.end(), better);
  }
}

template <typename T>
void put(std::vector<uint8_t>& out, const T& value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));
}

template <typename T>
T get(const uint8_t* data, size_t size, size_t& pos) {
  ALEM_CHECK(pos <= size && size - pos >= sizeof(T), "logprob part bytes truncated");
  T value;
  std::memcpy(&value, data + pos, sizeof(T));
  pos += sizeof(T);
  return value;
}

}  // namespace

LogprobPart logprob_part(const float* logits_slice, int64_t vocab_begin, int64_t n, int top_n,
                         int32_t chosen_token) {
  ALEM_CHECK(top_n >= 0 && top_n <= kMaxTopLogprobs,
             "logprobs: top_n must be in [0, " + std::to_string(kMaxTopLogprobs) + "]");
  LogprobPart part;
  float max_logit = kNegInf;
  for (int64_t i = 0; i < n; ++i) max_logit = std::max(max_logit, logits_slice[i]);
  part.max_logit = max_logit;
  if (max_logit != kNegInf) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp(double(logits_slice[i]) - double(max_logit));
    part.sum_exp = sum;
  }
  if (top_n > 0 && n > 0) {
    // A small heap of the best top_n, then sorted.
    std::vector<TokenLogprob> best;
    best.reserve(static_cast<size_t>(top_n) + 1);
    auto worse_on_top = [](const TokenLogprob& a, const TokenLogprob& b) { return better(a, b); };
    for (int64_t i = 0; i < n; ++i) {
      const TokenLogprob c{static_cast<int32_t>(vocab_begin + i), logits_slice[i]};
      if (static_cast<int>(best.size()) < top_n) {
        best.push_back(c);
        std::push_heap(best.begin(), best.end(), worse_on_top);
      } else if (better(c, best.front())) {
        std::pop_heap(best.begin(), best.end(), worse_on_top);
        best.back() = c;
        std::push_heap(best.begin(), best.end(), worse_on_top);
      }
    }
    std::sort(best.begin(), best.end(), better);
    part.top = std::move(best);
  }
  if (chosen_token >= vocab_begin && chosen_token < vocab_begin + n) {
    part.has_chosen = true;
    part.chosen_logit = logits_slice[chosen_token - vocab_begin];
  }
  return part;
}

TokenLogprobs combine_logprob_parts(const std::vector<LogprobPart>& parts, int top_n) {
  float max_logit = kNegInf;
  for (const LogprobPart& p : parts) max_logit = std::max(max_logit, p.max_logit);
  ALEM_CHECK(max_logit != kNegInf, "logprobs: every logit is -inf");
  double sum = 0.0;
  const LogprobPart* owner = nullptr;
  std::vector<TokenLogprob> top;
  for (const LogprobPart& p : parts) {
    if (p.max_logit != kNegInf) sum += p.sum_exp * std::exp(double(p.max_logit) - max_logit);
    if (p.has_chosen && !owner) owner = &p;
    top.insert(top.end(), p.top.begin(), p.top.end());
  }
  ALEM_CHECK(owner, "logprobs: no vocabulary slice holds the chosen token");
  const double log_normaliser = double(max_logit) + std::log(sum);
  keep_best(top, static_cast<size_t>(std::max(top_n, 0)));
  TokenLogprobs out;
  out.logprob = static_cast<float>(double(owner->chosen_logit) - log_normaliser);
  for (TokenLogprob& t : top) t.logprob = static_cast<float>(double(t.logprob) - log_normaliser);
  out.top = std::move(top);
  return out;
}

void serialize_logprob_part(std::vector<uint8_t>& out, const LogprobPart& part) {
  put<float>(out, part.max_logit);
  put<double>(out, part.sum_exp);
  put<uint8_t>(out, part.has_chosen);
  put<float>(out, part.chosen_logit);
  put<uint32_t>(out, static_cast<uint32_t>(part.top.size()));
  for (const TokenLogprob& t : part.top) {
    put<int32_t>(out, t.token_id);
    put<float>(out, t.logprob);
  }
}

LogprobPart deserialize_logprob_part(const uint8_t* data, size_t size, size_t& pos) {
  LogprobPart part;
  part.max_logit = get<float>(data, size, pos);
  part.sum_exp = get<double>(data, size, pos);
  part.has_chosen = get<uint8_t>(data, size, pos) != 0;
  part.chosen_logit = get<float>(data, size, pos);
  const uint32_t count = get<uint32_t>(data, size, pos);
  ALEM_CHECK(count <= kMaxTopLogprobs, "logprob part bytes carry too many top tokens");
  part.top.resize(count);
  for (TokenLogprob& t : part.top) {
    t.token_id = get<int32_t>(data, size, pos);
    t.logprob = get<float>(data, size, pos);
  }
  return part;
}

}  // namespace alem
