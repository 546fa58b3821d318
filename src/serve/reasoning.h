// Reasoning models (Qwen3 and others that think in `<think> ... </think>`): which generated
// tokens are reasoning and which are the answer. The network bills reasoning tokens at their own
// price (usage.completion_tokens_details.reasoning_tokens), so the split is made on token ids,
// exactly, never on decoded text: `<think>` and `</think>` are single tokens of the model's
// vocabulary, looked up by their spelling when the model is loaded. A model whose vocabulary has
// no such pair gets no parser, and its answers are served exactly as before.
//
// The rules follow vLLM's qwen3 reasoning parser (and SGLang's), made token-exact:
// - The prompt decides where generation starts: when the last think marker in the generation
//   prompt is `</think>` (Qwen3 with enable_thinking=false renders an empty
//   `<think>\n\n</think>\n\n` block), reasoning has ended and everything generated is content;
//   when it is `<think>` (templates that open the block themselves, e.g. Qwen3-*-Thinking-2507),
//   generation starts inside the reasoning.
// - Otherwise a generated `<think>` opens the reasoning; the first `</think>` closes it and what
//   follows is content. There is one reasoning block: later markers are content text.
// - Both markers that open and close the block count as reasoning tokens (they belong to it, not
//   to the answer), so reasoning_tokens + answer tokens == completion_tokens, always. An answer
//   cut by max_tokens inside the block is reasoning to its end.
#pragma once

#include <cstdint>
#include <vector>

#include "model/tokenizer.h"

namespace alem::serve {

// The think markers of a model's vocabulary; ids -1 when absent.
struct ReasoningTokens {
  int32_t think_start = -1;  // "<think>"
  int32_t think_end = -1;    // "</think>"
  int32_t turn_start = -1;   // "<|im_start|>": where the generation prompt begins, if known

  // Looks the markers up by their exact spelling in the vocabulary.
  static ReasoningTokens find(const Tokenizer& tokenizer);
  // True when the model has both markers: its chat answers get a reasoning parser.
  bool enabled() const { return think_start >= 0 && think_end >= 0; }
};

// Where a generated token goes.
enum class TokenRole {
  kContent,    // answer text
  kReasoning,  // reasoning text
  kMarker,     // the <think> / </think> that opens or closes the block: reasoning, no text
};

// The state of one sequence's split. Feed every generated token in order.
class ReasoningParser {
 public:
  // `prompt` is the token ids of the prompt; only its generation prompt (after the last
  // turn_start, or all of it when the model has none) is looked at.
  ReasoningParser(const ReasoningTokens& tokens, const std::vector<int32_t>& prompt);

  TokenRole push(int32_t token_id);

  bool in_reasoning() const { return state_ == State::kReasoning; }
  // Tokens counted as reasoning so far (markers included).
  int64_t reasoning_tokens() const { return reasoning_tokens_; }

 private:
  enum class State { kBefore, kReasoning, kAfter };
  ReasoningTokens tokens_;
  State state_ = State::kBefore;
  int64_t reasoning_tokens_ = 0;
};

}  // namespace alem::serve
