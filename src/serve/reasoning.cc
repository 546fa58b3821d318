// The token-level reasoning split (see the header for the rules).
#include "serve/reasoning.h"

namespace alem::serve {

ReasoningTokens ReasoningTokens::find(const Tokenizer& tokenizer) {
  ReasoningTokens t;
  t.think_start = tokenizer.token_id("<think>");
  t.think_end = tokenizer.token_id("</think>");
  t.turn_start = tokenizer.token_id("<|im_start|>");
  if (!t.enabled()) t.think_start = t.think_end = -1;  // both or neither
  return t;
}

ReasoningParser::ReasoningParser(const ReasoningTokens& tokens, const std::vector<int32_t>& prompt)
    : tokens_(tokens) {
  // vLLM's is_reasoning_end, limited to the generation prompt: the last marker wins.
  for (size_t i = prompt.size(); i-- > 0;) {
    const int32_t id = prompt[i];
    if (id == tokens_.think_end) {
      state_ = State::kAfter;
      break;
    }
    if (id == tokens_.think_start) {
      state_ = State::kReasoning;
      break;
    }
    if (id == tokens_.turn_start) break;
  }
}

TokenRole ReasoningParser::push(int32_t token_id) {
  switch (state_) {
    case State::kBefore:
      if (token_id == tokens_.think_start) {
        state_ = State::kReasoning;
        ++reasoning_tokens_;
        return TokenRole::kMarker;
      }
      return TokenRole::kContent;
    case State::kReasoning:
      ++reasoning_tokens_;
      if (token_id == tokens_.think_end) {
        state_ = State::kAfter;
        return TokenRole::kMarker;
      }
      // A repeated <think> inside the block is reasoning too, but carries no text.
      return token_id == tokens_.think_start ? TokenRole::kMarker : TokenRole::kReasoning;
    case State::kAfter:
      break;
  }
  return TokenRole::kContent;
}

}  // namespace alem::serve
