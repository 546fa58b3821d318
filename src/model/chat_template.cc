// ChatML rendering (see chat_template.h). SmolLM2-Instruct's Jinja template, which this mirrors:
//   {% for message in messages %}
//     {% if loop.first and messages[0]['role'] != 'system' %}
//       {{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging
//           Face<|im_end|>\n' }}
//     {% endif %}
//     {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//   {% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// The prompt is built as a list of parts, each either a template marker (a special token) or
// text, so the same rendering serves both the string form and the injection-safe token form.
#include "model/chat_template.h"

#include <array>

#include "core/error.h"

namespace alem {
namespace {

constexpr const char* kImStart = "<|im_start|>";
constexpr const char* kImEnd = "<|im_end|>";
constexpr const char* kSmolLMDefaultSystem =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

struct PromptPart {
  std::string text;
  bool is_marker;  // a special token the template writes, not text from a message
};

void check_roles(const std::vector<ChatMessage>& messages) {
  static const std::array<const char*, 4> allowed = {"system", "user", "assistant", "tool"};
  for (size_t i = 0; i < messages.size(); ++i) {
    bool known = false;
    for (const char* role : allowed) known = known || messages[i].role == role;
    ALEM_CHECK(known, "chat message " + std::to_string(i) +
                          " has an unsupported role (allowed: system, user, assistant, tool)");
  }
}

std::vector<PromptPart> render_chatml(const std::vector<ChatMessage>& messages,
                                      bool add_generation_prompt,
                                      const std::string& template_text) {
  std::vector<PromptPart> parts;
  auto turn = [&](const std::string& role, const std::string& content) {
    parts.push_back({kImStart, true});
    parts.push_back({role + "\n" + content, false});
    parts.push_back({kImEnd, true});
    parts.push_back({"\n", false});
  };
  const bool has_default_system = template_text.find(kSmolLMDefaultSystem) != std::string::npos;
  if (has_default_system && !messages.empty() && messages.front().role != "system") {
    turn("system", kSmolLMDefaultSystem);
  }
  for (const ChatMessage& message : messages) turn(message.role, message.content);
  if (add_generation_prompt) {
    parts.push_back({kImStart, true});
    parts.push_back({"assistant\n", false});
  }
  return parts;
}

std::vector<PromptPart> render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                               const TokenizerData& data) {
  switch (detect_chat_template(data.chat_template)) {
    case ChatTemplateKind::ChatML:
      check_roles(messages);
      return render_chatml(messages, add_generation_prompt, data.chat_template);
  }
  ALEM_FAIL("chat template: unhandled template kind");
}

}  // namespace

ChatTemplateKind detect_chat_template(const std::string& template_text) {
  ALEM_CHECK(!template_text.empty(),
             "chat template: the model has no chat template (tokenizer.chat_template is empty)");
  if (template_text.find(kImStart) != std::string::npos &&
      template_text.find(kImEnd) != std::string::npos) {
    return ChatTemplateKind::ChatML;
  }
  ALEM_FAIL("chat template: unrecognised template (" + std::to_string(template_text.size()) +
            " bytes); alem renders only ChatML (<|im_start|>/<|im_end|>) templates");
}

std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const TokenizerData& data) {
  std::string prompt;
  for (const PromptPart& part : render(messages, add_generation_prompt, data)) prompt += part.text;
  return prompt;
}

std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const TokenizerData& data,
                                 const Tokenizer& tokenizer) {
  std::vector<int32_t> ids;
  std::string text;  // text between two markers is one stretch, as HF pre-tokenizes it
  auto flush_text = [&] {
    const std::vector<int32_t> text_ids = tokenizer.encode(text, /*parse_special=*/false);
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    text.clear();
  };
  for (const PromptPart& part : render(messages, add_generation_prompt, data)) {
    if (!part.is_marker) {
      text += part.text;
      continue;
    }
    flush_text();
    const int32_t marker = tokenizer.token_id(part.text);
    ALEM_CHECK(marker >= 0, "chat template: the vocabulary has no token " + part.text);
    ids.push_back(marker);
  }
  flush_text();
  return ids;
}

}  // namespace alem
