// JsonRecognizer: an incremental, byte-at-a-time JSON recognizer (a pushdown automaton) that
// follows a compiled JsonSchema (json_schema.h). It answers, after each byte, whether the text
// so far can still be completed into a valid value (every accepted prefix can) and whether it
// already is one. Token masking (token_constraint.h) copies the state and runs a candidate
// token's bytes through the copy; a copy is a small vector assignment.
//
// Beyond JSON itself it enforces, so that a model cannot stall or loop in whitespace: a run of
// whitespace between tokens holds at most one newline and kMaxSpacesInRun spaces or tabs; no
// whitespace after the top-level value (only the end of sequence may follow); numbers have at
// most 16 integer digits, 16 fraction digits and 2 exponent digits (so every number fits a
// double); nesting is at most kMaxNesting deep. Strings must be valid UTF-8 and contain no raw
// control characters.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "engine/constrained/json_schema.h"

namespace alem::constrained {

constexpr int kMaxSpacesInRun = 16;
constexpr int kMaxNesting = 32;

class JsonRecognizer {
 public:
  // `schema` must outlive the recognizer (hold the shared_ptr).
  explicit JsonRecognizer(const JsonSchema* schema);

  // Feeds one byte. Returns false (and leaves the state unspecified: use a copy) when no valid
  // output starts with the bytes so far plus this one.
  bool feed(uint8_t byte);
  // Feeds bytes in order; false at the first byte that is refused.
  bool feed(std::string_view bytes);
  // The bytes fed so far form one complete value that the schema accepts (the output may end
  // here; a top-level number could still go on).
  bool complete() const;
  // Nothing more than the end can follow (a closed top-level object, array, string or literal).
  bool finished() const { return stack_.empty() && started_; }

 private:
  struct Frame {
    uint8_t kind = 0;  // FrameKind
    uint8_t sub = 0;   // state within the frame
    uint8_t flags = 0;
    int32_t node = 0;
    int32_t count = 0;  // array items, string code points, number digits, literal position
    uint64_t mask = 0;  // object: properties seen; literal / key: alternatives still possible
    int32_t extra = 0;  // string: UTF-8 continuation bytes due + first-byte range; key: position
  };
  bool step(uint8_t byte);
  bool value_start(Frame& f, uint8_t byte);
  bool object_byte(Frame& f, uint8_t byte);
  bool array_byte(Frame& f, uint8_t byte);
  bool string_byte(Frame& f, uint8_t byte);
  bool number_byte(Frame& f, uint8_t byte, bool& refeed);
  bool literal_byte(Frame& f, uint8_t byte, bool& refeed);
  bool whitespace(uint8_t byte);
  bool push(const Frame& f);
  void close_string_key(Frame& key);
  const std::vector<std::string>& literals_of(const Frame& f) const;

  const JsonSchema* schema_;
  std::vector<Frame> stack_;
  bool started_ = false;
  uint8_t ws_newlines_ = 0;
  uint8_t ws_spaces_ = 0;
};

}  // namespace alem::constrained
