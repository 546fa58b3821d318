// POST /tokenize and POST /detokenize as vLLM serves them, so clients can count tokens and
// check prompts against the context before they pay for a completion:
//   /tokenize   {model?, prompt}                                        -> {count, max_model_len,
//               {model?, messages, add_generation_prompt?, chat_template_kwargs?}   tokens,
//               token_strs}
//   /detokenize {model?, tokens}                                        -> {prompt}
// A prompt is tokenized exactly as /v1/completions does (BOS when the tokenizer adds one, client
// text never becomes special tokens); messages exactly as /v1/chat/completions does (the chat
// template). Pure functions over the body: the HTTP server routes to them (behind the API key).
#pragma once

#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "serve/completion_session.h"

namespace alem::serve {

// Throws ApiException: 400 for a malformed body, a missing or mistyped prompt/messages, or
// token ids outside the vocabulary; 404 when `model` is given and names another model.
nlohmann::json tokenize_response(std::string_view body, const ServedModel& model,
                                 int64_t max_model_len);
nlohmann::json detokenize_response(std::string_view body, const ServedModel& model);

}  // namespace alem::serve
