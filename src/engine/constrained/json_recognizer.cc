// The pushdown automaton of json_recognizer.h. Each stack frame is one open JSON value (or an
// object key); a frame that can only tell it has ended by seeing the next byte (a number, or an
// enum literal that is a prefix of another) hands that byte back to its parent ("refeed").
#include "engine/constrained/json_recognizer.h"

#include <string>

namespace alem::constrained {
namespace {

enum FrameKind : uint8_t {
  kValueFrame,
  kObjectFrame,
  kArrayFrame,
  kStringFrame,
  kNumberFrame,
  kLiteralFrame
};
enum ObjectSub : uint8_t { kKeyOrEnd, kKey, kColon, kCommaOrEnd };
enum ArraySub : uint8_t { kFirst, kCommaOrClose };
enum StringSub : uint8_t { kChars, kEscape, kHex1, kHex2, kHex3, kHex4 };
enum NumberSub : uint8_t { kStart, kMinus, kZero, kInt, kDot, kFrac, kExpMark, kExpSign, kExp };
enum Flags : uint8_t { kIsKey = 1, kBuiltinLiteral = 2 };

constexpr int kMaxIntDigits = 16, kMaxFracDigits = 16, kMaxExpDigits = 2;
constexpr size_t kMaxStack = 2 * kMaxNesting + 2;

const std::vector<std::string>& builtin_literals() {
  static const std::vector<std::string> k = {"true", "false", "null"};
  return k;
}

bool is_digit(uint8_t b) {
  return b >= '0' && b <= '9';
}
bool is_hex(uint8_t b) {
  return is_digit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F');
}
uint64_t low_bits(size_t n) {
  return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1;
}

}  // namespace

JsonRecognizer::JsonRecognizer(const JsonSchema* schema) : schema_(schema) {
  stack_.reserve(8);
  Frame root;
  root.kind = kValueFrame;
  root.node = schema->root;
  stack_.push_back(root);
}

const std::vector<std::string>& JsonRecognizer::literals_of(const Frame& f) const {
  return (f.flags & kBuiltinLiteral) ? builtin_literals() : schema_->nodes[f.node].literals;
}

bool JsonRecognizer::push(const Frame& f) {
  if (stack_.size() >= kMaxStack) return false;
  stack_.push_back(f);
  return true;
}

bool JsonRecognizer::feed(std::string_view bytes) {
  for (char c : bytes) {
    if (!feed(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool JsonRecognizer::feed(uint8_t byte) {
  const uint8_t newlines = ws_newlines_, spaces = ws_spaces_;
  if (!step(byte)) return false;
  started_ = true;
  if (ws_newlines_ == newlines && ws_spaces_ == spaces) ws_newlines_ = ws_spaces_ = 0;
  return true;
}

bool JsonRecognizer::whitespace(uint8_t byte) {
  if (byte == ' ' || byte == '\t') {
    if (ws_spaces_ >= kMaxSpacesInRun) return false;
    ++ws_spaces_;
    return true;
  }
  if (byte == '\n') {
    if (ws_newlines_ >= 1) return false;
    ++ws_newlines_;
    return true;
  }
  return false;  // '\r' and everything else
}

bool JsonRecognizer::complete() const {
  if (stack_.empty()) return started_;
  if (stack_.size() != 1) return false;
  const Frame& f = stack_.back();
  if (f.kind == kNumberFrame) {
    return f.sub == kZero || f.sub == kInt || f.sub == kFrac || f.sub == kExp;
  }
  if (f.kind == kLiteralFrame) {
    const auto& lits = literals_of(f);
    for (size_t i = 0; i < lits.size(); ++i) {
      if ((f.mask >> i & 1) && lits[i].size() == static_cast<size_t>(f.count)) return true;
    }
  }
  return false;
}

bool JsonRecognizer::step(uint8_t byte) {
  while (!stack_.empty()) {
    Frame& f = stack_.back();
    bool refeed = false;
    bool ok = false;
    switch (f.kind) {
      case kValueFrame:
        ok = value_start(f, byte);
        break;
      case kObjectFrame:
        ok = object_byte(f, byte);
        break;
      case kArrayFrame:
        ok = array_byte(f, byte);
        break;
      case kStringFrame:
        ok = string_byte(f, byte);
        break;
      case kNumberFrame:
        ok = number_byte(f, byte, refeed);
        break;
      case kLiteralFrame:
        ok = literal_byte(f, byte, refeed);
        break;
    }
    if (!ok) return false;
    if (!refeed) return true;
    stack_.pop_back();  // the value ended before this byte; its parent reads the byte
  }
  return false;  // nothing may follow the top-level value
}

// The JSON types a value starting with this byte can have.
uint8_t types_starting_with(uint8_t byte) {
  switch (byte) {
    case '{':
      return kObject;
    case '[':
      return kArray;
    case '"':
      return kString;
    case 't':
    case 'f':
      return kBoolean;
    case 'n':
      return kNull;
    default:
      return (byte == '-' || is_digit(byte)) ? (kNumber | kInteger) : 0;
  }
}

bool JsonRecognizer::value_start(Frame& f, uint8_t byte) {
  if (byte == ' ' || byte == '\t' || byte == '\n' || byte == '\r') return whitespace(byte);
  // anyOf / $ref: the alternative whose type this first byte shows (types are disjoint).
  const uint8_t starts = types_starting_with(byte);
  for (int hops = 0; !schema_->nodes[f.node].alternatives.empty(); ++hops) {
    int32_t picked = -1;
    for (int32_t alt : schema_->nodes[f.node].alternatives) {
      if (schema_->nodes[alt].types & starts) {
        picked = alt;
        break;
      }
    }
    if (picked < 0 || hops > kMaxSchemaNodes) return false;
    f.node = picked;
  }
  const SchemaNode& node = schema_->nodes[f.node];
  if (!node.literals.empty()) {
    f.kind = kLiteralFrame;
    f.mask = low_bits(node.literals.size());
    f.count = 0;
    bool refeed = false;
    return literal_byte(f, byte, refeed) && !refeed;
  }
  const uint8_t t = node.types;
  if (byte == '{' && (t & kObject)) {
    if (stack_.size() > kMaxNesting) return false;
    f.kind = kObjectFrame;
    f.sub = kKeyOrEnd;
    f.mask = 0;
    return true;
  }
  if (byte == '[' && (t & kArray)) {
    if (stack_.size() > kMaxNesting) return false;
    f.kind = kArrayFrame;
    f.sub = kFirst;
    f.count = 0;
    return true;
  }
  if (byte == '"' && (t & kString)) {
    f.kind = kStringFrame;
    f.sub = kChars;
    f.count = 0;
    f.extra = 0;
    f.mask = node.pattern ? static_cast<uint64_t>(node.pattern->start) : 0;
    return true;
  }
  if ((byte == '-' || is_digit(byte)) && (t & (kNumber | kInteger))) {
    f.kind = kNumberFrame;
    f.sub = kStart;
    f.count = 0;
    bool refeed = false;
    return number_byte(f, byte, refeed);
  }
  uint64_t mask = 0;
  if (t & kBoolean) mask |= 3;
  if (t & kNull) mask |= 4;
  if (mask != 0 && (byte == 't' || byte == 'f' || byte == 'n')) {
    f.kind = kLiteralFrame;
    f.flags |= kBuiltinLiteral;
    f.mask = mask;
    f.count = 0;
    bool refeed = false;
    return literal_byte(f, byte, refeed);
  }
  return false;
}

bool JsonRecognizer::literal_byte(Frame& f, uint8_t byte, bool& refeed) {
  const auto& lits = literals_of(f);
  const size_t pos = static_cast<size_t>(f.count);
  uint64_t next = 0;
  bool ends_here = false;
  for (size_t i = 0; i < lits.size(); ++i) {
    if (!(f.mask >> i & 1)) continue;
    if (lits[i].size() == pos) ends_here = true;
    if (lits[i].size() > pos && static_cast<uint8_t>(lits[i][pos]) == byte)
      next |= uint64_t{1} << i;
  }
  if (next == 0) {
    refeed = ends_here;  // the literal was complete; the byte is the parent's
    return ends_here;
  }
  f.mask = next;
  ++f.count;
  bool longer = false;
  for (size_t i = 0; i < lits.size(); ++i) {
    if ((next >> i & 1) && lits[i].size() > pos + 1) longer = true;
  }
  if (!longer) stack_.pop_back();  // every alternative left ends here: the value is done
  return true;
}

bool JsonRecognizer::number_byte(Frame& f, uint8_t byte, bool& refeed) {
  const bool integer_only = !(schema_->nodes[f.node].types & kNumber);
  const bool digit = is_digit(byte);
  switch (f.sub) {
    case kStart:
      if (byte == '-') {
        f.sub = kMinus;
        return true;
      }
      [[fallthrough]];
    case kMinus:
      if (byte == '0') {
        f.sub = kZero;
        return true;
      }
      if (digit) {
        f.sub = kInt;
        f.count = 1;
        return true;
      }
      return false;
    case kInt:
      if (digit) return ++f.count <= kMaxIntDigits;
      [[fallthrough]];
    case kZero:
      if (!integer_only && byte == '.') {
        f.sub = kDot;
        return true;
      }
      if (!integer_only && (byte == 'e' || byte == 'E')) {
        f.sub = kExpMark;
        return true;
      }
      refeed = true;
      return true;
    case kDot:
      if (!digit) return false;
      f.sub = kFrac;
      f.count = 1;
      return true;
    case kFrac:
      if (digit) return ++f.count <= kMaxFracDigits;
      if (byte == 'e' || byte == 'E') {
        f.sub = kExpMark;
        return true;
      }
      refeed = true;
      return true;
    case kExpMark:
      if (byte == '+' || byte == '-') {
        f.sub = kExpSign;
        return true;
      }
      [[fallthrough]];
    case kExpSign:
      if (!digit) return false;
      f.sub = kExp;
      f.count = 1;
      return true;
    case kExp:
      if (digit) return ++f.count <= kMaxExpDigits;
      refeed = true;
      return true;
  }
  return false;
}

void JsonRecognizer::close_string_key(Frame& key) {
  Frame& object = stack_[stack_.size() - 2];
  const SchemaNode& node = schema_->nodes[object.node];
  object.extra = -1;
  for (size_t i = 0; i < node.properties.size(); ++i) {
    if ((key.mask >> i & 1) && node.properties[i].first.size() == static_cast<size_t>(key.count)) {
      object.extra = static_cast<int32_t>(i);
      object.mask |= uint64_t{1} << i;
    }
  }
}

bool JsonRecognizer::string_byte(Frame& f, uint8_t byte) {
  const bool key = f.flags & kIsKey;
  const SchemaNode* node = key ? nullptr : &schema_->nodes[f.node];
  // A new character (code point) begins: count it against maxLength.
  auto begin_char = [&]() {
    if (key) return true;
    if (node->max_length >= 0 && f.count >= node->max_length) return false;
    ++f.count;
    return true;
  };
  if (key && !(f.sub == kChars && (f.extra & 3) == 0 && byte == '"')) {
    // Match the key's raw bytes against the property names still possible.
    const SchemaNode& object = schema_->nodes[stack_[stack_.size() - 2].node];
    uint64_t next = 0;
    for (size_t i = 0; i < object.properties.size(); ++i) {
      const std::string& name = object.properties[i].first;
      if ((f.mask >> i & 1) && name.size() > static_cast<size_t>(f.count) &&
          static_cast<uint8_t>(name[f.count]) == byte) {
        next |= uint64_t{1} << i;
      }
    }
    f.mask = next;
    ++f.count;
    if (next == 0 && !object.additional_allowed) return false;
  }
  // A pattern's DFA reads the string's content (escapes decoded); its state is in f.mask.
  const RegexDfa* pattern = node ? node->pattern.get() : nullptr;
  auto pattern_reads = [&](uint8_t content_byte) {
    if (!pattern) return true;
    const int32_t next = pattern->next[f.mask * 256 + content_byte];
    if (next < 0) return false;
    f.mask = static_cast<uint64_t>(next);
    return true;
  };
  switch (f.sub) {
    case kChars: {
      const int due = f.extra & 3;
      if (due > 0) {
        const int lo = (f.extra >> 8) & 0xFF, hi = (f.extra >> 16) & 0xFF;
        if (byte < lo || byte > hi) return false;
        if (!pattern_reads(byte)) return false;
        f.extra = (due - 1) | (0x80 << 8) | (0xBF << 16);
        return true;
      }
      if (byte == '"') {
        if (key) {
          const SchemaNode& object = schema_->nodes[stack_[stack_.size() - 2].node];
          bool exact = false;
          for (size_t i = 0; i < object.properties.size(); ++i) {
            if ((f.mask >> i & 1) &&
                object.properties[i].first.size() == static_cast<size_t>(f.count)) {
              exact = true;
            }
          }
          if (!exact && !object.additional_allowed) return false;
          close_string_key(f);
        } else if (f.count < node->min_length ||
                   (pattern && !pattern->accepting[static_cast<int32_t>(f.mask)])) {
          return false;
        }
        stack_.pop_back();
        return true;
      }
      if (byte == '\\') {
        if (!begin_char()) return false;
        f.sub = kEscape;
        return true;
      }
      if (byte < 0x20) return false;
      int more = 0, lo = 0x80, hi = 0xBF;
      if (byte < 0x80) {
        more = 0;
      } else if (byte >= 0xC2 && byte <= 0xDF) {
        more = 1;
      } else if (byte >= 0xE0 && byte <= 0xEF) {
        more = 2;
        if (byte == 0xE0) lo = 0xA0;
        if (byte == 0xED) hi = 0x9F;
      } else if (byte >= 0xF0 && byte <= 0xF4) {
        more = 3;
        if (byte == 0xF0) lo = 0x90;
        if (byte == 0xF4) hi = 0x8F;
      } else {
        return false;
      }
      if (!begin_char() || !pattern_reads(byte)) return false;
      f.extra = more | (lo << 8) | (hi << 16);
      return true;
    }
    case kEscape: {
      if (byte == 'u') {
        if (pattern) return false;  // the model writes the character itself (json_schema.h)
        f.sub = kHex1;
        return true;
      }
      static constexpr char kEscapes[] = "\"\"\\\\//b\bf\fn\nr\rt\t";
      for (size_t i = 0; i + 1 < sizeof(kEscapes); i += 2) {
        if (byte == static_cast<uint8_t>(kEscapes[i])) {
          if (!pattern_reads(static_cast<uint8_t>(kEscapes[i + 1]))) return false;
          f.sub = kChars;
          return true;
        }
      }
      return false;
    }
    case kHex1:
    case kHex2:
    case kHex3:
    case kHex4:
      if (!is_hex(byte)) return false;
      f.sub = f.sub == kHex4 ? static_cast<uint8_t>(kChars) : static_cast<uint8_t>(f.sub + 1);
      return true;
  }
  return false;
}

bool JsonRecognizer::object_byte(Frame& f, uint8_t byte) {
  if (byte == ' ' || byte == '\t' || byte == '\n' || byte == '\r') return whitespace(byte);
  const SchemaNode& node = schema_->nodes[f.node];
  const uint64_t all = low_bits(node.properties.size());
  const uint64_t unseen = all & ~f.mask;
  auto close = [&]() {
    if ((node.required & ~f.mask) != 0) return false;
    stack_.pop_back();
    return true;
  };
  auto open_key = [&]() {
    if (unseen == 0 && !node.additional_allowed) return false;
    f.sub = kColon;
    Frame key;
    key.kind = kStringFrame;
    key.flags = kIsKey;
    key.mask = unseen;
    return push(key);
  };
  switch (f.sub) {
    case kKeyOrEnd:
      if (byte == '}') return close();
      if (byte == '"') return open_key();
      return false;
    case kKey:
      return byte == '"' && open_key();
    case kColon: {
      if (byte != ':') return false;
      f.sub = kCommaOrEnd;
      Frame value;
      value.kind = kValueFrame;
      value.node = f.extra >= 0 ? node.properties[f.extra].second : node.additional;
      return push(value);
    }
    case kCommaOrEnd:
      if (byte == '}') return close();
      if (byte == ',' && (unseen != 0 || node.additional_allowed)) {
        f.sub = kKey;
        return true;
      }
      return false;
  }
  return false;
}

bool JsonRecognizer::array_byte(Frame& f, uint8_t byte) {
  if (byte == ' ' || byte == '\t' || byte == '\n' || byte == '\r') return whitespace(byte);
  const SchemaNode& node = schema_->nodes[f.node];
  if (byte == ']') {
    if (f.count < node.min_items) return false;
    stack_.pop_back();
    return true;
  }
  Frame value;
  value.kind = kValueFrame;
  value.node = node.items;
  if (f.sub == kCommaOrClose) {
    if (byte != ',' || (node.max_items >= 0 && f.count >= node.max_items)) return false;
    ++f.count;
    return push(value);
  }
  // The first element starts with this byte.
  if (node.max_items == 0) return false;
  f.sub = kCommaOrClose;
  ++f.count;
  if (!push(value)) return false;
  return value_start(stack_.back(), byte);
}

}  // namespace alem::constrained
