// OpenAI's logprobs JSON shapes (see the header).
#include "serve/logprobs_json.h"

#include <cmath>

namespace alem::serve {
namespace {

using json = nlohmann::json;

json byte_list(const std::string& text) {
  json bytes = json::array();
  for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// -inf (a token the model rules out) is not JSON; OpenAI clients read -9999 as "never".
json logprob_value(float logprob) {
  return std::isfinite(logprob) ? json(logprob) : json(-9999.0);
}

}  // namespace

json chat_logprobs_json(const Tokenizer& tokenizer, const std::vector<TokenLogprobEntry>& entries,
                        size_t begin, size_t end) {
  json content = json::array();
  for (size_t i = begin; i < end && i < entries.size(); ++i) {
    const TokenLogprobEntry& e = entries[i];
    const std::string& text = tokenizer.token_text(e.token_id);
    json top = json::array();
    for (const TokenLogprob& t : e.top) {
      const std::string& t_text = tokenizer.token_text(t.token_id);
      top.push_back(
          {{"token", t_text}, {"logprob", logprob_value(t.logprob)}, {"bytes", byte_list(t_text)}});
    }
    content.push_back({{"token", text},
                       {"logprob", logprob_value(e.logprob)},
                       {"bytes", byte_list(text)},
                       {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}};
}

json completion_logprobs_json(const Tokenizer& tokenizer,
                              const std::vector<TokenLogprobEntry>& entries, size_t begin,
                              size_t end, int64_t& text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       offsets = json::array();
  for (size_t i = begin; i < end && i < entries.size(); ++i) {
    const TokenLogprobEntry& e = entries[i];
    const std::string& text = tokenizer.token_text(e.token_id);
    tokens.push_back(text);
    token_logprobs.push_back(logprob_value(e.logprob));
    json top = json::object();
    for (const TokenLogprob& t : e.top) {
      const std::string& t_text = tokenizer.token_text(t.token_id);
      if (!top.contains(t_text)) top[t_text] = logprob_value(t.logprob);
    }
    if (!top.contains(text)) top[text] = logprob_value(e.logprob);
    top_logprobs.push_back(std::move(top));
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(text.size());
  }
  return json{{"tokens", std::move(tokens)},
              {"token_logprobs", std::move(token_logprobs)},
              {"top_logprobs", std::move(top_logprobs)},
              {"text_offset", std::move(offsets)}};
}

}  // namespace alem::serve
