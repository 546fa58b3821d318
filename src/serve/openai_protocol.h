// The OpenAI wire format as vLLM speaks it: parsing and validating the bodies of
// POST /v1/completions and POST /v1/chat/completions, and writing responses, streaming chunks
// and errors. A COCOON worker and the official `openai` client see alem through this file, so it
// follows vLLM's choices where OpenAI leaves room (defaults, error shape, extra sampling keys,
// usage fields). Pure functions over JSON: no tokenizer, no engine, no sockets, so every rule
// here is unit-tested directly (tests/unit/test_openai_protocol.cc).
//
// Validation errors never quote the client's prompt or messages back into logs: messages name
// the field and, for numbers, the value; the HTTP layer sends them to the client only.
#pragma once

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/request_state.h"
#include "engine/sampling_params.h"
#include "model/chat_template.h"

namespace alem::serve {

// An error answered to the client as `{"error": {"message", "type", "param", "code"}}` with the
// HTTP status. `param` names the offending request field ("" when none).
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;  // "" -> null; e.g. "model_not_found"

  static ApiError bad_request(std::string message, std::string param = {});
  static ApiError model_not_found(const std::string& model);
  static ApiError payload_too_large(size_t limit_bytes);
  static ApiError overloaded(const std::string& why);   // 429
  static ApiError unavailable(const std::string& why);  // 503
  static ApiError internal(const std::string& why);     // 500
  nlohmann::json to_json() const;
  std::string body() const;  // to_json() as text
};

// Thrown by the parsing functions below; carries the ApiError to answer.
class ApiException : public std::exception {
 public:
  explicit ApiException(ApiError error) : error_(std::move(error)) {}
  const ApiError& error() const { return error_; }
  const char* what() const noexcept override { return error_.message.c_str(); }

 private:
  ApiError error_;
};

enum class Endpoint { kCompletions, kChatCompletions };

// One prompt of a completions request: text to tokenize, or token ids given by the client.
struct PromptInput {
  std::string text;
  std::vector<int32_t> token_ids;
  bool is_tokens = false;
};

// A validated request. Sampling fields are copied into `sampling` (max_tokens there is only a
// placeholder until resolve_max_tokens() runs, since the default depends on the prompt length).
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::vector<PromptInput> prompts;     // completions: one or more (a batch)
  std::vector<ChatMessage> messages;    // chat
  bool add_generation_prompt = true;    // chat (vLLM extra)
  std::optional<bool> enable_thinking;  // chat: chat_template_kwargs.enable_thinking
  std::optional<int32_t> max_tokens;    // max_completion_tokens wins over max_tokens
  SamplingParams sampling;
  std::vector<std::string> stop;            // stop strings, matched on the decoded text
  bool include_stop_str_in_output = false;  // vLLM extra
  bool skip_special_tokens = true;          // vLLM extra
  bool echo = false;  // completions: the prompt's text comes before each choice's text
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string user;            // OpenAI `user`; also salts the prefix cache

  // Choices the request makes in all: prompts (1 for chat) x n.
  int total_choices() const {
    return n * static_cast<int>(endpoint == Endpoint::kChatCompletions ? 1 : prompts.size());
  }
  // Zeroes every piece of client text held here (prompts, messages, stop strings, user).
  void wipe();
};

// Limits that validation applies.
struct ProtocolLimits {
  int max_n = 8;               // choices per prompt
  int max_batch_prompts = 16;  // prompts per completions request
  int max_stop_strings = 16;
  int max_stop_string_bytes = 256;
};

// True when a request's `model` names the served model: its full name, or, for a name such as
// "HuggingFaceTB/SmolLM2-135M-Instruct", its base name after the last '/' (what a COCOON worker
// forwards).
bool model_name_matches(const std::string& requested, const std::string& served);

// Parses and validates a request body. `served_model` (or its base name) is the only model name
// accepted (404 otherwise). Throws ApiException: 400 for malformed JSON (with line, column and byte
// offset), a body that is not an object, a field of the wrong type (naming the field), a missing
// prompt/messages, out-of-range values (n, temperature, top_p, ...) and unsupported features
// (echo with logprobs, top_logprobs over 20, suffix, best_of != n, tools, non-text content parts,
// and fields that would change the output but are not implemented: logit_bias, guided_*,
// logits_processors, bad_words, allowed_token_ids, ... -- each 400 names its field); 404 for an
// unknown model. Malformed JSON, nesting deeper than kMaxJsonDepth and numbers that overflow a
// double are 400 with the line and column, never quoting the body (core/json_input.h). Other
// unknown keys (metadata, store, service_tier, reasoning_effort, verbosity, prediction,
// parallel_tool_calls, which change nothing here) are accepted and ignored, as vLLM does. null
// counts as absent.
ApiRequest parse_request(std::string_view body, Endpoint endpoint, const std::string& served_model,
                         const ProtocolLimits& limits = {});

// Checks the prompt against the context and fixes max_tokens. Absent: chat gets the rest of the
// context, completions min(16, rest) (vLLM's defaults). Throws ApiException 400 naming both
// lengths when prompt_tokens >= max_model_len or prompt_tokens + max_tokens > max_model_len, and
// for an empty prompt.
int32_t resolve_max_tokens(const ApiRequest& request, int64_t prompt_tokens, int64_t max_model_len);

// Token ids given by the client must exist in the vocabulary. Throws ApiException 400.
void check_token_ids(const std::vector<int32_t>& ids, int32_t vocab_size);

// ---- responses ----

// Finish reasons are the scheduler's (engine/request_state.h): "stop", "length", "abort",
// "error"; kNone is written as null.
struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
  int64_t reasoning_tokens = 0;  // part of completion_tokens (reasoning models, serve/reasoning.h)
  nlohmann::json to_json() const;
};

// One finished choice of a non-streaming response.
struct ChoiceResult {
  int index = 0;
  std::string text;
  FinishReason finish_reason = FinishReason::kStop;
  // Reasoning models only: message.reasoning_content ("" is written as null). Absent for other
  // models, whose responses keep their shape.
  std::optional<std::string> reasoning{};
  // The choice's logprobs object (serve/logprobs_json.h), null when not asked for; the stop
  // string or stop token id that ended it (vLLM's stop_reason), null for eos, length and others.
  nlohmann::json logprobs = nullptr;
  nlohmann::json stop_reason = nullptr;
};

// "cmpl-<32 hex>" / "chatcmpl-<32 hex>", random.
std::string make_response_id(Endpoint endpoint);

// The whole non-streaming response body.
nlohmann::json completion_response(Endpoint endpoint, const std::string& id, int64_t created,
                                   const std::string& model,
                                   const std::vector<ChoiceResult>& choices, const Usage& usage);

// One streaming chunk for one choice. Chat: `first` adds the assistant role to the delta;
// `text` goes into delta.content (omitted when empty and not first); `reasoning` into
// delta.reasoning_content (omitted when empty); finish_reason null unless given. With
// include_usage every chunk carries "usage": null, as OpenAI does. `logprobs` is the chunk's
// logprobs object (its tokens only; null when not asked for); the final chunk (finish_reason
// set) also carries `stop_reason`.
nlohmann::json stream_chunk(Endpoint endpoint, const std::string& id, int64_t created,
                            const std::string& model, int index, const std::string& text,
                            bool first, FinishReason finish_reason, bool include_usage,
                            const std::string& reasoning = {},
                            const nlohmann::json& logprobs = nullptr,
                            const nlohmann::json& stop_reason = nullptr);
// The chunk after every choice has finished, when include_usage: empty choices and the usage.
nlohmann::json usage_chunk(Endpoint endpoint, const std::string& id, int64_t created,
                           const std::string& model, const Usage& usage);

// JSON text for the wire: compact, invalid UTF-8 replaced by U+FFFD (never throws on text).
std::string dump_json(const nlohmann::json& value);
// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& value);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// GET /v1/models.
nlohmann::json models_response(const std::string& served_model, int64_t created,
                               int64_t max_model_len);

}  // namespace alem::serve
