// Range checks for SamplingParams, with messages that name the field, the bad value and the
// allowed range, so an API client sees exactly what to fix.
#include "engine/sampling_params.h"

#include <cmath>

#include "core/error.h"

namespace alem {
namespace {

std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  std::string s = std::to_string(v);
  // Trim trailing zeros of std::to_string's fixed six decimals ("0.500000" -> "0.5").
  if (s.find('.') != std::string::npos) {
    while (!s.empty() && s.back() == '0') s.pop_back();
    if (!s.empty() && s.back() == '.') s.pop_back();
  }
  return s;
}

}  // namespace

void SamplingParams::validate() const {
  ALEM_CHECK(!std::isnan(temperature) && temperature >= 0.0f && temperature <= 100.0f,
             "temperature must be in [0, 100] (0 = greedy), got " + number(temperature));
  ALEM_CHECK(!std::isnan(top_p) && top_p > 0.0f && top_p <= 1.0f,
             "top_p must be in (0, 1], got " + number(top_p));
  ALEM_CHECK(!std::isnan(min_p) && min_p >= 0.0f && min_p <= 1.0f,
             "min_p must be in [0, 1], got " + number(min_p));
  ALEM_CHECK(top_k >= -1,
             "top_k must be -1 or 0 (disabled) or a positive count, got " + std::to_string(top_k));
  ALEM_CHECK(!std::isnan(presence_penalty) && presence_penalty >= -2.0f && presence_penalty <= 2.0f,
             "presence_penalty must be in [-2, 2], got " + number(presence_penalty));
  ALEM_CHECK(
      !std::isnan(frequency_penalty) && frequency_penalty >= -2.0f && frequency_penalty <= 2.0f,
      "frequency_penalty must be in [-2, 2], got " + number(frequency_penalty));
  ALEM_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f,
             "repetition_penalty must be a finite number > 0 (1 = off), got " +
                 number(repetition_penalty));
  ALEM_CHECK(max_tokens >= 1, "max_tokens must be at least 1, got " + std::to_string(max_tokens));
  for (int32_t id : stop_token_ids) {
    ALEM_CHECK(id >= 0, "stop_token_ids must be non-negative token ids, got " + std::to_string(id));
  }
  ALEM_CHECK(logprobs >= -1 && logprobs <= 20,
             "logprobs must be in [0, 20] (or -1 = none), got " + std::to_string(logprobs));
}

}  // namespace alem
