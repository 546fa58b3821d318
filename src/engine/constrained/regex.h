// Regular expressions for constrained decoding (vLLM's guided_regex and guided_choice, and the
// `regex` / `choice` members of structured_outputs): a pattern is parsed once, turned into a
// Thompson NFA over UTF-8 bytes, determinised into a DFA whose states can all still reach a
// match, and cached by pattern text. Token masking (token_constraint.h) runs a candidate
// token's bytes through a copy of the state, which is one integer.
//
// Syntax (a subset of Python's `re`, with RE2's ASCII meaning of the shorthand classes):
// literals (any UTF-8 text), `.` (any code point but newline), classes `[...]` and `[^...]`
// with ranges and escapes, `\d \D \w \W \s \S`, escapes `\n \t \r \f \v \xHH \uHHHH` and of any
// punctuation, groups `(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`, alternation `|`,
// quantifiers `* + ? {n} {n,} {n,m}` (a trailing `?`, lazy, changes nothing about the language),
// `^` at the start and `$` at the end. Refused with a message naming the construct:
// backreferences, lookaround, word boundaries, `\p{..}` classes, possessive quantifiers, inline
// flags, and anchors anywhere else. No regex matches the empty language silently: a pattern
// that can match nothing is refused.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace alem::constrained {

// Limits, so one request cannot make compilation expensive.
constexpr int kMaxRegexBytes = 8 * 1024;
constexpr int kMaxRegexRepeat = 1000;  // the largest n or m in {n,m}
constexpr int kMaxNfaStates = 50'000;  // after repetitions are expanded
constexpr int kMaxDfaStates = 4'096;   // 1 KiB per state: 4 MiB at most
constexpr int kMaxRegexNesting = 64;   // groups inside groups

enum class RegexMatch {
  kFull,    // the whole output must match (guided_regex: fullmatch)
  kSearch,  // the pattern may match anywhere unless anchored (JSON Schema's `pattern`)
};

struct RegexDfa {
  // next[state * 256 + byte]: the state after the byte, or -1 when no match can follow.
  std::vector<int32_t> next;
  std::vector<uint8_t> accepting;  // the bytes so far are a match
  std::vector<uint8_t> can_grow;   // some byte leads to a state that can still match
  int32_t start = 0;
  int32_t num_states() const { return static_cast<int32_t>(accepting.size()); }
};

// Compiles a pattern. Throws alem::Error naming the offending construct (and its offset).
RegexDfa compile_regex(std::string_view pattern, RegexMatch mode);

// The strings of `dfa` that are min_chars to max_chars code points long (max_chars -1: no
// limit), as a DFA whose every live prefix can still reach such a string. Throws when none is
// left or the product needs more than kMaxDfaStates states.
RegexDfa with_length_limits(const RegexDfa& dfa, int32_t min_chars, int32_t max_chars);

// The same, cached by (pattern, mode); thread-safe; refusals are not cached.
std::shared_ptr<const RegexDfa> cached_regex(const std::string& pattern, RegexMatch mode);

// A pattern that matches exactly one of the given strings (guided_choice). Throws alem::Error
// for an empty list or an empty string among them.
std::string choice_regex(const std::vector<std::string>& choices);

// Where a DFA is while output bytes arrive.
class RegexRecognizer {
 public:
  explicit RegexRecognizer(const RegexDfa* dfa) : dfa_(dfa), state_(dfa->start) {}
  bool feed(uint8_t byte) {
    if (state_ < 0) return false;
    state_ = dfa_->next[static_cast<size_t>(state_) * 256 + byte];
    return state_ >= 0;
  }
  bool feed(std::string_view bytes) {
    for (char c : bytes) {
      if (!feed(static_cast<uint8_t>(c))) return false;
    }
    return true;
  }
  bool complete() const { return state_ >= 0 && dfa_->accepting[state_]; }
  bool finished() const { return complete() && !dfa_->can_grow[state_]; }
  int32_t state() const { return state_; }

 private:
  const RegexDfa* dfa_;
  int32_t state_;
};

namespace regex_detail {

// The parsed pattern: a tree of code-point sets, concatenations, alternations and repetitions.
struct RegexNode {
  enum Kind : uint8_t { kEmpty, kSet, kConcat, kAlternate, kRepeat };
  Kind kind = kEmpty;
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // kSet: sorted, disjoint code points
  std::vector<int32_t> children;                      // kConcat, kAlternate; kRepeat: one
  int32_t min = 0, max = -1;                          // kRepeat; max -1: unbounded
};

struct RegexTree {
  std::vector<RegexNode> nodes;
  int32_t root = 0;
  bool anchored_start = false;
  bool anchored_end = false;
};

// regex_parser.cc
RegexTree parse_regex(std::string_view pattern, RegexMatch mode);

}  // namespace regex_detail

}  // namespace alem::constrained
