// Chat prompt rendering (see chat_template.h): the model's Jinja template through
// src/model/jinja/, or built-in ChatML when the store has no template. The rendered prompt keeps
// track of which bytes came from the messages, so the token form can refuse to read control
// tokens out of message text. Parsed templates are cached by their text.
#include "model/chat_template.h"

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/jinja/jinja.h"

namespace alem {
namespace {

// Used when the store has no template: ChatML, as SmolLM2's template minus its default system
// message.
constexpr const char* kBuiltinChatML =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void check_roles(const std::vector<ChatMessage>& messages) {
  static const std::array<const char*, 4> allowed = {"system", "user", "assistant", "tool"};
  for (size_t i = 0; i < messages.size(); ++i) {
    bool known = false;
    for (const char* role : allowed) known = known || messages[i].role == role;
    ALEM_CHECK(known, "chat message " + std::to_string(i) +
                          " has an unsupported role (allowed: system, user, assistant, tool)");
  }
}

const std::string& template_text(const TokenizerData& data) {
  static const std::string builtin = kBuiltinChatML;
  return data.chat_template.empty() ? builtin : data.chat_template;
}

// Parsed templates by text. A process serves one model, so this stays tiny; it is capped anyway.
std::shared_ptr<const jinja::Template> parsed(const std::string& text) {
  static std::mutex mutex;
  static std::map<std::string, std::shared_ptr<const jinja::Template>> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(text); it != cache.end()) return it->second;
  }
  auto tpl = std::make_shared<const jinja::Template>(text);  // throws on a syntax error
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 8) cache.clear();
  cache.emplace(text, tpl);
  return tpl;
}

std::string token_text_or_empty(const TokenizerData& data, int id) {
  if (id < 0 || static_cast<size_t>(id) >= data.tokens.size()) return {};
  return data.tokens[static_cast<size_t>(id)];
}

// The optional keys of a message (tool calls, tool results, names, earlier reasoning), all
// client text, so marked as data.
void add_history_fields(const ChatMessage& m, jinja::Dict& d) {
  auto data = [](const std::string& s) { return jinja::Value::string(jinja::Str::from_data(s)); };
  if (!m.tool_calls.empty()) {
    jinja::List calls;
    for (const ChatToolCall& c : m.tool_calls) {
      jinja::Dict function;
      function.set(jinja::Str::literal("name"), data(c.name));
      function.set(jinja::Str::literal("arguments"), data(c.arguments));
      jinja::Dict call;
      call.set(jinja::Str::literal("id"), data(c.id));
      call.set(jinja::Str::literal("type"), data(c.type));
      call.set(jinja::Str::literal("function"), jinja::Value::dict(std::move(function)));
      calls.push_back(jinja::Value::dict(std::move(call)));
    }
    d.set(jinja::Str::literal("tool_calls"), jinja::Value::list(std::move(calls)));
  }
  if (!m.tool_call_id.empty()) d.set(jinja::Str::literal("tool_call_id"), data(m.tool_call_id));
  if (!m.name.empty()) d.set(jinja::Str::literal("name"), data(m.name));
  if (m.reasoning_content) {
    d.set(jinja::Str::literal("reasoning_content"), data(*m.reasoning_content));
  }
}

jinja::Str render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                  const TokenizerData& data, const nlohmann::json* kwargs) {
  check_roles(messages);
  const auto tpl = parsed(template_text(data));
  jinja::Dict context;
  jinja::List list;
  list.reserve(messages.size());
  for (const ChatMessage& m : messages) {
    jinja::Dict d;
    d.set(jinja::Str::literal("role"), jinja::Value::string(jinja::Str::from_data(m.role)));
    d.set(jinja::Str::literal("content"), jinja::Value::string(jinja::Str::from_data(m.content)));
    add_history_fields(m, d);
    list.push_back(jinja::Value::dict(std::move(d)));
  }
  // What transformers passes: messages, tools, documents, add_generation_prompt, the special
  // tokens, then chat_template_kwargs.
  context.set(jinja::Str::literal("messages"), jinja::Value::list(std::move(list)));
  context.set(jinja::Str::literal("tools"), jinja::Value::none());
  context.set(jinja::Str::literal("documents"), jinja::Value::none());
  context.set(jinja::Str::literal("add_generation_prompt"),
              jinja::Value::boolean(add_generation_prompt));
  const std::string bos = token_text_or_empty(data, data.bos_token_id);
  const std::string eos = token_text_or_empty(data, data.eos_token_id);
  if (!bos.empty()) context.set(jinja::Str::literal("bos_token"), jinja::Value::string(bos));
  if (!eos.empty()) context.set(jinja::Str::literal("eos_token"), jinja::Value::string(eos));
  if (kwargs && !kwargs->is_null()) {
    ALEM_CHECK(kwargs->is_object(), "chat template: chat_template_kwargs must be an object");
    for (auto it = kwargs->begin(); it != kwargs->end(); ++it) {
      context.set(jinja::Str::literal(it.key()), jinja::Value::from_json(it.value(), true));
    }
  }
  return tpl->render(context);
}

}  // namespace

void check_chat_template(const TokenizerData& data) {
  parsed(template_text(data));
}

std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, const TokenizerData& data,
                                const nlohmann::json* template_kwargs) {
  return render(messages, add_generation_prompt, data, template_kwargs).text;
}

std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages,
                                 bool add_generation_prompt, const TokenizerData& data,
                                 const Tokenizer& tokenizer,
                                 const nlohmann::json* template_kwargs) {
  const jinja::Str prompt = render(messages, add_generation_prompt, data, template_kwargs);
  // Control tokens by first byte, longest first (leftmost-longest, as Tokenizer::encode).
  std::array<std::vector<std::pair<std::string, int32_t>>, 256> controls;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    if (!tokenizer.is_control(id)) continue;
    const std::string& text = tokenizer.token_text(id);
    if (!text.empty()) controls[static_cast<unsigned char>(text[0])].emplace_back(text, id);
  }
  for (auto& list : controls) {
    std::stable_sort(list.begin(), list.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  std::vector<int32_t> ids;
  std::string text;  // text between two control tokens is one stretch, as HF pre-tokenizes it
  auto flush_text = [&] {
    const std::vector<int32_t> text_ids = tokenizer.encode(text, /*parse_special=*/false);
    ids.insert(ids.end(), text_ids.begin(), text_ids.end());
    text.clear();
  };
  const std::string& s = prompt.text;
  size_t span = 0;  // next data span at or after pos
  size_t pos = 0;
  while (pos < s.size()) {
    while (span < prompt.data.size() && prompt.data[span].end <= pos) ++span;
    if (span < prompt.data.size() && prompt.data[span].begin <= pos) {
      const size_t end = prompt.data[span].end;  // message text: never a control token
      text.append(s, pos, end - pos);
      pos = end;
      continue;
    }
    const size_t limit = span < prompt.data.size() ? prompt.data[span].begin : s.size();
    const std::pair<std::string, int32_t>* hit = nullptr;
    for (const auto& candidate : controls[static_cast<unsigned char>(s[pos])]) {
      if (pos + candidate.first.size() <= limit &&
          s.compare(pos, candidate.first.size(), candidate.first) == 0) {
        hit = &candidate;
        break;
      }
    }
    if (hit) {
      flush_text();
      ids.push_back(hit->second);
      pos += hit->first.size();
    } else {
      text += s[pos++];
    }
  }
  flush_text();
  return ids;
}

}  // namespace alem
