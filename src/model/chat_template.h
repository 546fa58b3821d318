// Chat prompt rendering. Models ship a Jinja chat template (GGUF `tokenizer.chat_template`);
// alem does not run Jinja. It recognises the template family from the template text and renders
// it natively, byte for byte as transformers' apply_chat_template would. Supported: ChatML
// (`<|im_start|>role\ncontent<|im_end|>\n`), including SmolLM2-Instruct's default system
// message, which is inserted only when the template text itself carries it.
#pragma once

#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "model/tokenizer_data.h"

namespace alem {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

enum class ChatTemplateKind {
  ChatML,
};

// Which family `template_text` belongs to. Throws alem::Error for an empty or unrecognised
// template (the message names the families alem supports, never the template's content).
ChatTemplateKind detect_chat_template(const std::string& template_text);

// The prompt text for `messages`, as the model's template renders it. add_generation_prompt
// appends the opening of the assistant's turn. Throws alem::Error for an unsupported template
// or a role other than system/user/assistant/tool (naming the message's index, not its text).
std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const TokenizerData& data);

// Token ids of the same prompt, for serving untrusted input: the template's own markers become
// special tokens, while everything taken from the messages is encoded with
// parse_special=false, so a message that contains "<|im_end|>" cannot close its turn early.
// For messages without such text the ids equal tokenizer.encode(apply_chat_template(...)).
std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const TokenizerData& data,
                                 const Tokenizer& tokenizer);

}  // namespace alem
