// The two JSON shapes OpenAI gives log-probabilities in, built from the engine's per-token
// logprobs (engine/request_state.h TokenLogprobs): chat's `logprobs.content[]` entries
// ({token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}) and the legacy completions
// object ({tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}). Kept apart
// from openai_protocol.cc so that file stays about requests and the response frame.
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/request_state.h"
#include "model/tokenizer.h"

namespace alem::serve {

// One generated token with its logprobs, as the session collects them.
struct TokenLogprobEntry {
  int32_t token_id = 0;
  float logprob = 0.f;
  std::vector<TokenLogprob> top;  // best first
};

// {"content": [...]} for a chat choice or chunk. A token's text is its raw bytes (which may be
// part of a UTF-8 character: the text then shows U+FFFD once written, `bytes` stays exact).
nlohmann::json chat_logprobs_json(const Tokenizer& tokenizer,
                                  const std::vector<TokenLogprobEntry>& entries, size_t begin,
                                  size_t end);

// The legacy completions object for entries [begin, end). `text_offset` is where the first
// token starts in the choice's text and is advanced past the last one (bytes of token text).
// top_logprobs dicts hold the N most likely tokens and the chosen one, as vLLM's do.
nlohmann::json completion_logprobs_json(const Tokenizer& tokenizer,
                                        const std::vector<TokenLogprobEntry>& entries, size_t begin,
                                        size_t end, int64_t& text_offset);

}  // namespace alem::serve
