// Chat prompt rendering. Models ship a Jinja chat template (GGUF `tokenizer.chat_template`,
// tokenizer_config.json `chat_template`, chat_template.jinja); alem renders it with its own
// interpreter of the Jinja subset Hugging Face templates use (src/model/jinja/, see
// docs/chat-templates.md), byte for byte as transformers' apply_chat_template would. A store
// without a template gets plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n`).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/tokenizer.h"
#include "model/tokenizer_data.h"

namespace alem {

// One tool call of an assistant message in the history, as OpenAI's API writes it.
struct ChatToolCall {
  std::string id;
  std::string type = "function";
  std::string name;       // function.name
  std::string arguments;  // function.arguments: JSON text, passed to the template as given
};

// One message of a chat. Beyond role and content, the fields a history may carry are passed to
// the template as Hugging Face passes a message dict: a key is present only when it was given.
struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  std::vector<ChatToolCall> tool_calls{};  // assistant: message.tool_calls (absent when empty)
  std::string tool_call_id{};              // tool: message.tool_call_id (absent when empty)
  std::string name{};                      // message.name (absent when empty)
  std::optional<std::string> reasoning_content{};  // assistant: message.reasoning_content
};

// Parses the model's chat template (cached for later renders), so that a template alem cannot
// parse fails at start-up rather than on every request. Throws alem::Error
// "chat template: line L, column C: ..." naming where parsing stopped.
void check_chat_template(const TokenizerData& data);

// The prompt text for `messages`, as the model's template renders it. add_generation_prompt
// appends the opening of the assistant's turn. `template_kwargs` (a JSON object or null) adds
// variables such as enable_thinking, as HF's chat_template_kwargs. Throws alem::Error for a
// template error or raise_exception() in the template, or a role other than
// system/user/assistant/tool; messages say where, never quote message text.
std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const TokenizerData& data,
                                const nlohmann::json* template_kwargs = nullptr);

// Token ids of the same prompt, for serving untrusted input: control tokens the template itself
// writes become special tokens, while everything that came from the messages is encoded with
// parse_special=false, so a message that contains "<|im_end|>" cannot close its turn early.
// For messages without such text the ids equal tokenizer.encode(apply_chat_template(...)).
std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const TokenizerData& data,
                                 const Tokenizer& tokenizer,
                                 const nlohmann::json* template_kwargs = nullptr);

}  // namespace alem
