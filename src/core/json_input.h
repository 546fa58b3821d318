// JSON that comes from outside the process (HTTP bodies, opened sealed requests, config files,
// tokenizer files, collateral): one place that parses it with a bound on nesting depth and walks
// it without recursion. A body of 110,000 nested arrays must be a clear error, never a stack
// overflow, and an error message must never quote the input (it may hold a prompt).
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

namespace alem {

// Deeper than any real request, config or tokenizer file (HF tokenizer.json nests about 6 deep;
// an OpenAI request with a JSON schema in response_format a few dozen).
constexpr int kMaxJsonDepth = 128;

// Why a JSON text was refused. what() names the position and the kind of fault, never bytes of
// the text itself.
class JsonInputError : public std::runtime_error {
 public:
  JsonInputError(const std::string& reason, size_t byte, size_t line, size_t column);
  size_t byte() const { return byte_; }
  size_t line() const { return line_; }
  size_t column() const { return column_; }
  // The bare reason ("syntax error while parsing value - invalid literal", "nesting deeper than
  // 128 levels", "number out of range").
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
  size_t byte_, line_, column_;
};

// Parses `text` as one JSON value. Throws JsonInputError on malformed text, on nesting deeper
// than max_depth (checked while parsing, before the tree grows), and on numbers that do not fit
// a double (1e999). Never recurses on the input's depth.
nlohmann::json parse_json_bounded(std::string_view text, int max_depth = kMaxJsonDepth);

// Zeroes every string (and object key's value string) held in `value`, without recursion.
void wipe_json_strings(nlohmann::json& value);

// The deepest nesting in `value`, found without recursion (a root scalar is depth 0).
int json_depth(const nlohmann::json& value);

}  // namespace alem
