// Grammar-constrained sampling for one sequence: the bridge between the output's automaton (a
// JsonRecognizer for a JSON Schema, a RegexRecognizer for a pattern) and the sampler. At each step
// only tokens whose bytes keep the output a valid prefix may be drawn, and the end-of-sequence (or
// a stop token) only once the value is complete.
//
// Cost: a constrained row asks every TP rank for its whole vocabulary slice as candidates
// (CandidateKind::kAll, the same as plain temperature sampling already does), and then only the
// candidates the draw needs are checked, best logit first: greedy stops at the first valid one;
// temperature sampling walks down until the untested tokens' probability mass is below 1e-6 of
// the valid mass found (or top_k valid tokens are found), so the full-vocabulary pass only
// happens when the model's favourites are all invalid. Unconstrained rows do not pass here.
//
// Every TP rank makes the same choice from the same merged set, state and RNG, and advances its
// own copy of the state with the chosen token, so ranks stay in step without sending state.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/constrained/json_recognizer.h"
#include "engine/constrained/json_schema.h"
#include "engine/constrained/regex.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"

namespace alem {
class Tokenizer;
}

namespace alem::constrained {

// The bytes of every token of a model, computed once per model. Special (Control) tokens have
// no bytes here: they are never allowed, except the end-of-sequence ids when the value is done.
struct TokenTable {
  std::vector<std::string> bytes;  // by token id
  std::vector<uint8_t> special;    // 1: a control token
};

// The table of a tokenizer's vocabulary (raw bytes of each token; control tokens marked).
std::shared_ptr<const TokenTable> make_token_table(const Tokenizer& tokenizer);

// Where one output is in the automaton it must follow; copies are cheap (a vector or an int).
class OutputState {
 public:
  explicit OutputState(const JsonSchema* schema) : state_(JsonRecognizer(schema)) {}
  explicit OutputState(const RegexDfa* dfa) : state_(RegexRecognizer(dfa)) {}
  bool feed(std::string_view bytes) {
    return std::visit([&](auto& s) { return s.feed(bytes); }, state_);
  }
  bool complete() const {
    return std::visit([](const auto& s) { return s.complete(); }, state_);
  }
  bool finished() const {
    return std::visit([](const auto& s) { return s.finished(); }, state_);
  }

 private:
  std::variant<JsonRecognizer, RegexRecognizer> state_;
};

// The constraint a SamplingParams asks for: params.json_schema or params.regex.
class RowConstraint {
 public:
  // Compiles (cached) the schema or pattern; throws alem::Error when it is outside the subset.
  RowConstraint(const SamplingParams& params, std::shared_ptr<const TokenTable> table,
                std::vector<int32_t> end_ids);

  // Params for local_candidates: every token of the slice (kAll), whatever the request's
  // sampling settings, so the choice below can skip invalid ones.
  static SamplingParams candidate_params(const SamplingParams& params);

  // Draws the next token from the merged full-vocabulary set (as sampler.h's choose(): greedy,
  // then temperature, min_p, top_k, top_p, one uniform draw), among valid tokens only. When no
  // token is valid (cannot happen with a byte-level vocabulary) the first end id is returned.
  int32_t choose(const CandidateSet& set, const SamplingParams& params, Rng& rng) const;

  // Advances the state with the token that was chosen.
  void advance(int32_t token);

  bool allowed(int32_t token) const;
  const OutputState& state() const { return state_; }

 private:
  RowConstraint(const SamplingParams& params, std::shared_ptr<const JsonSchema> schema,
                std::shared_ptr<const RegexDfa> regex, std::shared_ptr<const TokenTable> table,
                std::vector<int32_t> end_ids);

  std::shared_ptr<const JsonSchema> schema_;  // one of these two is set
  std::shared_ptr<const RegexDfa> regex_;
  std::shared_ptr<const TokenTable> table_;
  std::vector<int32_t> end_ids_;
  OutputState state_;
  mutable OutputState scratch_;
};

}  // namespace alem::constrained
