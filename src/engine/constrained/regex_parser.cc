// Parses the regular-expression subset of regex.h into a tree of code-point sets, with errors
// that name the construct and its byte offset (never more of the pattern than the construct).
#include <algorithm>

#include "core/error.h"
#include "engine/constrained/regex.h"

namespace alem::constrained::regex_detail {
namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
constexpr uint32_t kMaxCodePoint = 0x10FFFF;

Ranges normalized(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const auto& [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, hi);
    } else {
      out.emplace_back(lo, hi);
    }
  }
  return out;
}

Ranges complement(const Ranges& sorted) {
  Ranges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : sorted) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.emplace_back(next, kMaxCodePoint);
  return out;
}

Ranges shorthand(char c) {
  switch (c) {
    case 'd':
      return {{'0', '9'}};
    case 'w':
      return {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    case 's':
      return {{'\t', '\r'}, {' ', ' '}};
    default:
      return {};
  }
}

class Parser {
 public:
  Parser(std::string_view p, RegexMatch mode) : p_(p), mode_(mode) {}

  RegexTree run() {
    ALEM_CHECK(p_.size() <= static_cast<size_t>(kMaxRegexBytes),
               "regex: longer than " + std::to_string(kMaxRegexBytes) + " bytes");
    tree_.nodes.push_back({});  // node 0: the empty string
    tree_.root = alternation(0);
    ALEM_CHECK(pos_ == p_.size(), fail_text("an unmatched ')'"));
    return std::move(tree_);
  }

 private:
  std::string fail_text(const std::string& what) const {
    return "regex: " + what + " at offset " + std::to_string(pos_);
  }
  [[noreturn]] void fail(const std::string& what) const { ALEM_FAIL(fail_text(what)); }

  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return at_end() ? '\0' : p_[pos_]; }

  int32_t add(RegexNode n) {
    tree_.nodes.push_back(std::move(n));
    return static_cast<int32_t>(tree_.nodes.size() - 1);
  }
  int32_t add_set(Ranges r) {
    RegexNode n;
    n.kind = RegexNode::kSet;
    n.ranges = normalized(std::move(r));
    return add(std::move(n));
  }

  int32_t alternation(int depth) {
    ALEM_CHECK(depth <= kMaxRegexNesting,
               fail_text("groups nested deeper than " + std::to_string(kMaxRegexNesting)));
    std::vector<int32_t> branches;
    int starts = 0, ends = 0;
    while (true) {
      bool start_anchor = false, end_anchor = false;
      branches.push_back(concatenation(depth, start_anchor, end_anchor));
      starts += start_anchor;
      ends += end_anchor;
      if (peek() != '|') break;
      ++pos_;
    }
    if (depth == 0) {
      const int n = static_cast<int>(branches.size());
      if (mode_ == RegexMatch::kSearch &&
          ((starts != 0 && starts != n) || (ends != 0 && ends != n))) {
        fail("'^' or '$' in only some of the top-level alternatives");
      }
      tree_.anchored_start = starts == n;
      tree_.anchored_end = ends == n;
    }
    if (branches.size() == 1) return branches.front();
    RegexNode n;
    n.kind = RegexNode::kAlternate;
    n.children = std::move(branches);
    return add(std::move(n));
  }

  int32_t concatenation(int depth, bool& start_anchor, bool& end_anchor) {
    std::vector<int32_t> items;
    if (depth == 0 && peek() == '^') {
      ++pos_;
      start_anchor = true;
    }
    while (!at_end() && peek() != '|' && peek() != ')') {
      if (peek() == '$') {
        ++pos_;
        if (depth == 0 && (at_end() || peek() == '|')) {
          end_anchor = true;
          break;
        }
        --pos_;
        fail("'$' that is not at the end of the pattern");
      }
      if (peek() == '^') fail("'^' that is not at the start of the pattern");
      int32_t atom_node = atom(depth);
      items.push_back(quantified(atom_node));
    }
    if (items.empty()) return 0;
    if (items.size() == 1) return items.front();
    RegexNode n;
    n.kind = RegexNode::kConcat;
    n.children = std::move(items);
    return add(std::move(n));
  }

  int number() {
    const size_t begin = pos_;
    int64_t v = 0;
    while (!at_end() && peek() >= '0' && peek() <= '9') {
      v = v * 10 + (peek() - '0');
      ++pos_;
      if (v > kMaxRegexRepeat) fail("a repetition count over " + std::to_string(kMaxRegexRepeat));
    }
    if (pos_ == begin) return -1;
    return static_cast<int>(v);
  }

  int32_t quantified(int32_t atom_node) {
    while (!at_end()) {
      int min = 0, max = -1;
      const char c = peek();
      if (c == '*') {
        ++pos_;
      } else if (c == '+') {
        ++pos_;
        min = 1;
      } else if (c == '?') {
        ++pos_;
        max = 1;
      } else if (c == '{') {
        // As Python: '{' that does not start {n}, {n,}, {,m} or {n,m} is a literal.
        const char after = pos_ + 1 < p_.size() ? p_[pos_ + 1] : '\0';
        const char after2 = pos_ + 2 < p_.size() ? p_[pos_ + 2] : '\0';
        const bool digit = after >= '0' && after <= '9';
        if (!digit && !(after == ',' && after2 >= '0' && after2 <= '9')) break;
        ++pos_;
        min = digit ? number() : 0;
        max = min;
        if (peek() == ',') {
          ++pos_;
          max = number();  // -1 when absent: unbounded
        }
        if (peek() != '}') fail("an unterminated repetition '{'");
        ++pos_;
        if (max >= 0 && max < min) fail("a repetition {n,m} with m < n");
      } else {
        break;
      }
      if (peek() == '?') {
        ++pos_;  // lazy: the same language
      } else if (peek() == '+') {
        fail("a possessive quantifier");
      }
      if (atom_node == 0) fail("a quantifier with nothing to repeat");
      RegexNode n;
      n.kind = RegexNode::kRepeat;
      n.children = {atom_node};
      n.min = min;
      n.max = max;
      atom_node = add(std::move(n));
    }
    return atom_node;
  }

  // One UTF-8 code point of the pattern itself.
  uint32_t literal_code_point() {
    const uint8_t b = static_cast<uint8_t>(p_[pos_]);
    int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || pos_ + len > p_.size()) fail("invalid UTF-8 in the pattern");
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (int i = 1; i < len; ++i) {
      const uint8_t c = static_cast<uint8_t>(p_[pos_ + i]);
      if ((c & 0xC0) != 0x80) fail("invalid UTF-8 in the pattern");
      cp = (cp << 6) | (c & 0x3F);
    }
    pos_ += len;
    return cp;
  }

  uint32_t hex_digits(int count) {
    uint32_t v = 0;
    for (int i = 0; i < count; ++i) {
      const char c = peek();
      int d = c >= '0' && c <= '9'   ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                     : -1;
      if (d < 0) fail("a hexadecimal escape that needs " + std::to_string(count) + " digits");
      v = v * 16 + d;
      ++pos_;
    }
    return v;
  }

  // After a backslash: the set the escape stands for (a one-element set for a literal).
  Ranges escape(bool in_class) {
    if (at_end()) fail("a pattern that ends with a backslash");
    const char c = p_[pos_++];
    switch (c) {
      case 'd':
      case 'w':
      case 's':
        return shorthand(c);
      case 'D':
      case 'W':
      case 'S':
        return complement(normalized(shorthand(static_cast<char>(c - 'A' + 'a'))));
      case 'n':
        return {{'\n', '\n'}};
      case 't':
        return {{'\t', '\t'}};
      case 'r':
        return {{'\r', '\r'}};
      case 'f':
        return {{'\f', '\f'}};
      case 'v':
        return {{'\v', '\v'}};
      case 'x': {
        const uint32_t v = hex_digits(2);
        return {{v, v}};
      }
      case 'u': {
        const uint32_t v = hex_digits(4);
        if (v >= 0xD800 && v <= 0xDFFF) fail("a surrogate code point");
        return {{v, v}};
      }
      case 'b':
        if (in_class) return {{'\b', '\b'}};
        fail("a word boundary '\\b'");
      case 'B':
      case 'A':
      case 'Z':
      case 'z':
      case 'G':
        fail(std::string("the anchor '\\") + c + "'");
      case 'p':
      case 'P':
        fail("a Unicode property class '\\p'");
      default:
        break;
    }
    if (c >= '0' && c <= '9') fail("a backreference or octal escape");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
      fail(std::string("the unknown escape '\\") + c + "'");
    }
    --pos_;
    const uint32_t cp = literal_code_point();
    return {{cp, cp}};
  }

  int32_t char_class() {
    ++pos_;  // '['
    bool negate = false;
    if (peek() == '^') {
      negate = true;
      ++pos_;
    }
    Ranges set;
    bool first = true;
    while (true) {
      if (at_end()) fail("an unterminated character class '['");
      if (peek() == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      if (p_.substr(pos_, 2) == "[:") fail("a POSIX class '[:...:]'");
      Ranges lo_set;
      if (peek() == '\\') {
        ++pos_;
        lo_set = escape(true);
      } else {
        const uint32_t cp = literal_code_point();
        lo_set = {{cp, cp}};
      }
      const bool single = lo_set.size() == 1 && lo_set[0].first == lo_set[0].second;
      if (single && peek() == '-' && pos_ + 1 < p_.size() && p_[pos_ + 1] != ']') {
        ++pos_;
        Ranges hi_set;
        if (peek() == '\\') {
          ++pos_;
          hi_set = escape(true);
        } else {
          const uint32_t cp = literal_code_point();
          hi_set = {{cp, cp}};
        }
        if (hi_set.size() != 1 || hi_set[0].first != hi_set[0].second) {
          fail("a class range that ends in a shorthand class");
        }
        if (hi_set[0].first < lo_set[0].first) fail("a class range out of order");
        set.emplace_back(lo_set[0].first, hi_set[0].first);
      } else {
        set.insert(set.end(), lo_set.begin(), lo_set.end());
      }
    }
    set = normalized(std::move(set));
    if (negate) set = complement(set);
    if (set.empty()) fail("a character class that matches nothing");
    return add_set(std::move(set));
  }

  int32_t group(int depth) {
    ++pos_;  // '('
    if (peek() == '?') {
      ++pos_;
      if (peek() == ':') {
        ++pos_;
      } else if (peek() == 'P' || peek() == '<') {
        if (peek() == 'P') ++pos_;
        if (peek() != '<') fail("an unsupported group '(?P'");
        if (pos_ + 1 < p_.size() && (p_[pos_ + 1] == '=' || p_[pos_ + 1] == '!')) {
          fail("a lookbehind");
        }
        const size_t close = p_.find('>', pos_);
        if (close == std::string_view::npos) fail("an unterminated group name");
        pos_ = close + 1;
      } else if (peek() == '=' || peek() == '!') {
        fail("a lookahead");
      } else {
        fail("inline flags or an unsupported '(?' group");
      }
    }
    const int32_t inner = alternation(depth + 1);
    if (peek() != ')') fail("an unterminated group '('");
    ++pos_;
    return inner;
  }

  int32_t atom(int depth) {
    const char c = peek();
    switch (c) {
      case '(':
        return group(depth);
      case '[':
        return char_class();
      case '.':
        ++pos_;
        return add_set({{0, '\n' - 1}, {'\n' + 1, kMaxCodePoint}});
      case '\\':
        ++pos_;
        return add_set(escape(false));
      case '*':
      case '+':
      case '?':
        fail("a quantifier with nothing to repeat");
      case '{':
        if (pos_ + 1 < p_.size() && p_[pos_ + 1] >= '0' && p_[pos_ + 1] <= '9') {
          fail("a quantifier with nothing to repeat");
        }
        break;
      default:
        break;
    }
    const uint32_t cp = literal_code_point();
    return add_set({{cp, cp}});
  }

  std::string_view p_;
  RegexMatch mode_;
  size_t pos_ = 0;
  RegexTree tree_;
};

}  // namespace

RegexTree parse_regex(std::string_view pattern, RegexMatch mode) {
  return Parser(pattern, mode).run();
}

}  // namespace alem::constrained::regex_detail
