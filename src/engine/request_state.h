// RequestState: everything the scheduler knows about one generation request, from admission to
// its finish: the tokens so far, its sampling params, how much of it sits in the KV cache, and
// its usage for billing. Kept in its own header so the engine loop and the API layer can read
// request state without depending on the scheduler's internals.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/sampling_params.h"

namespace alem {

enum class RequestStatus : uint8_t {
  kWaiting,    // queued, never admitted yet
  kRunning,    // holds KV blocks; scheduled every step it fits
  kPreempted,  // was running, lost its blocks; queued again (front) to recompute from scratch
  kFinished,
};

enum class FinishReason : uint8_t {
  kNone,    // not finished
  kStop,    // end-of-sequence token (unless ignore_eos) or one of stop_token_ids
  kLength,  // max_tokens reached, or the context limit max_model_len
  kAbort,   // the client went away (abort)
  kError,   // the engine failed on this request
};

// OpenAI finish_reason strings: "stop", "length"; "abort" and "error" as vLLM reports them.
inline const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

// A token and its log-probability (log_softmax of the raw logits over the whole vocabulary).
struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.f;
};

// What a request that asked for logprobs gets with each generated token: the chosen token's
// logprob and the `SamplingParams::logprobs` most likely tokens, best first.
struct TokenLogprobs {
  float logprob = 0.f;
  std::vector<TokenLogprob> top;
};

// Billing figures, as COCOON reads them from the OpenAI usage object.
struct RequestUsage {
  int32_t prompt_tokens = 0;
  int32_t cached_tokens = 0;  // prompt tokens served from the prefix cache on first admission
  int32_t completion_tokens = 0;
};

// Where one request spent its time, for the metrics (vLLM's request_queue_time_seconds,
// request_prefill_time_seconds, request_decode_time_seconds). Set on finished events; a phase
// the request never reached is -1.
struct RequestTimings {
  double queue_seconds = -1;    // added to the scheduler -> first admitted
  double prefill_seconds = -1;  // first admitted -> first generated token
  double decode_seconds = -1;   // first generated token -> finished
};

struct RequestState {
  int64_t id = 0;
  SamplingParams params;
  std::string cache_salt;  // prefix-cache namespace: requests only share KV within one salt
  // The request's random stream: params.seed when set, else drawn at add time. The sampler's
  // Rng for the next token is Rng(sampling_seed) after num_output_tokens() draws, so it can be
  // rebuilt anywhere (any rank, after preemption) from this state alone.
  uint64_t sampling_seed = 0;
  std::vector<int32_t> tokens;  // prompt tokens, then the generated ones
  int32_t num_prompt_tokens = 0;

  RequestStatus status = RequestStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  int32_t num_computed_tokens = 0;        // leading tokens whose KV is in the cache
  int32_t num_cached_prompt_tokens = -1;  // from the prefix cache at first admission (-1: not yet)
  int32_t num_preemptions = 0;
  int64_t arrival_index = 0;  // FCFS order
  // For RequestTimings (steady clock): added, first admitted, first token (unset: not yet).
  std::chrono::steady_clock::time_point added_time{};
  std::optional<std::chrono::steady_clock::time_point> admitted_time, first_token_time;

  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  std::span<const int32_t> prompt() const { return {tokens.data(), size_t(num_prompt_tokens)}; }
  std::span<const int32_t> output() const {
    return {tokens.data() + num_prompt_tokens, size_t(num_output_tokens())};
  }
  bool finished() const { return status == RequestStatus::kFinished; }
  RequestTimings timings(std::chrono::steady_clock::time_point now) const {
    using Seconds = std::chrono::duration<double>;
    RequestTimings t;
    if (admitted_time) {
      t.queue_seconds = Seconds(*admitted_time - added_time).count();
      if (first_token_time) {
        t.prefill_seconds = Seconds(*first_token_time - *admitted_time).count();
        t.decode_seconds = Seconds(now - *first_token_time).count();
      }
    }
    return t;
  }
  RequestUsage usage() const {
    return {num_prompt_tokens, num_cached_prompt_tokens < 0 ? 0 : num_cached_prompt_tokens,
            num_output_tokens()};
  }
};

}  // namespace alem
