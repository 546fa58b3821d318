// Chat template lexer (see lexer.h). Mirrors jinja2's lexer for the parts HF templates use:
// within a tag, an end delimiter only counts outside brackets (so `{{ {'a': {}} }}` works), and
// string literals take Python's escapes.
#include "model/jinja/lexer.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace alem::jinja {
namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

class Lexer {
 public:
  explicit Lexer(const std::string& src) : src_(src) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      const size_t tag = find_tag(pos);
      std::string text = src_.substr(pos, tag - pos);
      // What the previous tag's end asked of this text.
      if (strip_next_) {
        size_t n = 0;
        while (n < text.size() && is_space(text[n])) ++n;
        line_starting = n > 0 ? text[n - 1] == '\n' : line_starting;
        text.erase(0, n);
      } else if (trim_next_ && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);
        line_starting = true;
      }
      strip_next_ = trim_next_ = false;
      if (tag < src_.size()) {
        const char kind = src_[tag + 1];
        const char sign = tag + 2 < src_.size() ? src_[tag + 2] : '\0';
        if (sign == '-') {
          while (!text.empty() && is_space(text.back())) text.pop_back();
        } else if (kind != '{' && sign != '+') {
          const size_t nl = text.rfind('\n');
          const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
          if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
              std::all_of(text.begin() + static_cast<long>(l_pos), text.end(), is_space)) {
            text.resize(l_pos);
          }
        }
      }
      if (!text.empty()) push(Token::Type::Text, text, pos);
      if (tag >= src_.size()) break;
      pos = lex_tag(tag);
      line_starting = false;  // trim_next_/strip_next_ are applied when the next text is cut
    }
    push(Token::Type::End, "", src_.size());
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    size_t p = from;
    while (true) {
      p = src_.find('{', p);
      if (p == std::string::npos || p + 1 >= src_.size()) return src_.size();
      const char c = src_[p + 1];
      if (c == '{' || c == '%' || c == '#') return p;
      ++p;
    }
  }

  std::pair<int, int> where(size_t pos) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t line = static_cast<size_t>(it - line_starts_.begin());
    return {static_cast<int>(line), static_cast<int>(pos - line_starts_[line - 1] + 1)};
  }

  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    const auto [line, col] = where(pos);
    ALEM_FAIL("chat template: line " + std::to_string(line) + ", column " + std::to_string(col) +
              ": " + what);
  }

  void push(Token::Type type, std::string value, size_t pos) {
    const auto [line, col] = where(pos);
    tokens_.push_back({type, std::move(value), line, col});
  }

  // Lexes the tag at `tag` ("{{", "{%" or "{#"); returns the position after it.
  size_t lex_tag(size_t tag) {
    const char kind = src_[tag + 1];
    size_t p = tag + 2;
    if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
    if (kind == '#') {
      const size_t end = src_.find("#}", p);
      if (end == std::string::npos) fail(tag, "unterminated comment");
      strip_next_ = end > p && src_[end - 1] == '-';
      trim_next_ = true;
      return end + 2;
    }
    const bool block = kind == '%';
    const size_t first_token = tokens_.size();
    push(block ? Token::Type::BlockBegin : Token::Type::VarBegin, block ? "{%" : "{{", tag);
    const char close = block ? '%' : '}';
    int depth = 0;
    while (true) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (p >= src_.size()) fail(tag, block ? "unterminated {% tag" : "unterminated {{ tag");
      if (depth == 0) {
        size_t q = p;
        const char sign = src_[q];
        if (sign == '-' || sign == '+') ++q;
        if (q + 1 < src_.size() && src_[q] == close && src_[q + 1] == '}' &&
            (sign != '+' || block)) {
          push(block ? Token::Type::BlockEnd : Token::Type::VarEnd, block ? "%}" : "}}", p);
          strip_next_ = sign == '-';
          trim_next_ = block && sign != '+';
          const size_t after = q + 2;
          if (block) return maybe_raw(first_token, after);
          return after;
        }
      }
      p = lex_token(p, depth);
    }
  }

  // {% raw %}...{% endraw %}: the text between is output as is.
  size_t maybe_raw(size_t first_token, size_t after) {
    if (tokens_.size() != first_token + 3 || tokens_[first_token + 1].type != Token::Type::Name ||
        tokens_[first_token + 1].value != "raw") {
      return after;
    }
    const size_t begin_pos = after;
    size_t p = after;
    while (true) {
      p = src_.find("{%", p);
      if (p == std::string::npos) fail(begin_pos, "unterminated {% raw %} block");
      size_t q = p + 2;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
      while (q < src_.size() && is_space(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") == 0) {
        q += 6;
        while (q < src_.size() && is_space(src_[q])) ++q;
        const bool minus = q < src_.size() && src_[q] == '-';
        if (minus || (q < src_.size() && src_[q] == '+')) ++q;
        if (src_.compare(q, 2, "%}") == 0) {
          tokens_.resize(first_token);
          std::string text = src_.substr(begin_pos, p - begin_pos);
          if (strip_next_) {
            size_t n = 0;
            while (n < text.size() && is_space(text[n])) ++n;
            text.erase(0, n);
          } else if (trim_next_ && !text.empty() && text[0] == '\n') {
            text.erase(0, 1);
          }
          if (src_[p + 2] == '-') {
            while (!text.empty() && is_space(text.back())) text.pop_back();
          }
          if (!text.empty()) push(Token::Type::Text, text, begin_pos);
          strip_next_ = minus;
          trim_next_ = !minus;
          return q + 2;
        }
      }
      p += 2;
    }
  }

  size_t lex_token(size_t p, int& depth) {
    const char c = src_[p];
    if (is_name_start(c)) {
      size_t q = p;
      while (q < src_.size() && (is_name_start(src_[q]) || is_digit(src_[q]))) ++q;
      push(Token::Type::Name, src_.substr(p, q - p), p);
      return q;
    }
    if (is_digit(c)) return lex_number(p);
    if (c == '\'' || c == '"') return lex_string(p);
    static const char* const two[] = {"//", "**", "==", "!=", "<=", ">="};
    for (const char* op : two) {
      if (src_.compare(p, 2, op) == 0) {
        push(Token::Type::Op, op, p);
        return p + 2;
      }
    }
    if (std::strchr("+-*/%~<>=()[]{},.:|", c) == nullptr || c == '\0') {
      fail(p, "unexpected character in a tag");
    }
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') {
      if (depth == 0) fail(p, std::string("unbalanced '") + c + "'");
      --depth;
    }
    push(Token::Type::Op, std::string(1, c), p);
    return p + 1;
  }

  size_t lex_number(size_t p) {
    size_t q = p;
    auto digits = [&] {
      while (q < src_.size() && (is_digit(src_[q]) || src_[q] == '_')) ++q;
    };
    digits();
    bool is_float = false;
    if (q + 1 < src_.size() && src_[q] == '.' && is_digit(src_[q + 1])) {
      is_float = true;
      ++q;
      digits();
    }
    if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t r = q + 1;
      if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
      if (r < src_.size() && is_digit(src_[r])) {
        is_float = true;
        q = r;
        digits();
      }
    }
    std::string spelling;
    for (size_t i = p; i < q; ++i) {
      if (src_[i] != '_') spelling += src_[i];
    }
    push(is_float ? Token::Type::Float : Token::Type::Int, spelling, p);
    return q;
  }

  size_t lex_string(size_t p) {
    const char quote = src_[p];
    std::string out;
    size_t q = p + 1;
    auto hex = [&](size_t n) {
      if (q + n > src_.size()) fail(q, "truncated escape in a string literal");
      uint32_t v = 0;
      for (size_t i = 0; i < n; ++i) {
        const char h = src_[q + i];
        v <<= 4;
        if (h >= '0' && h <= '9') {
          v |= static_cast<uint32_t>(h - '0');
        } else if (h >= 'a' && h <= 'f') {
          v |= static_cast<uint32_t>(h - 'a' + 10);
        } else if (h >= 'A' && h <= 'F') {
          v |= static_cast<uint32_t>(h - 'A' + 10);
        } else {
          fail(q, "bad hex escape in a string literal");
        }
      }
      q += n;
      return v;
    };
    while (true) {
      if (q >= src_.size()) fail(p, "unterminated string literal");
      const char c = src_[q];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++q;
        continue;
      }
      if (q + 1 >= src_.size()) fail(p, "unterminated string literal");
      const char e = src_[q + 1];
      q += 2;
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case 'a':
          out += '\a';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case '\n':
          break;
        case 'x':
          append_utf8(out, hex(2));
          break;
        case 'u':
          append_utf8(out, hex(4));
          break;
        case 'U':
          append_utf8(out, hex(8));
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int i = 0; i < 2 && q < src_.size() && src_[q] >= '0' && src_[q] <= '7'; ++i) {
              v = v * 8 + static_cast<uint32_t>(src_[q++] - '0');
            }
            append_utf8(out, v);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    push(Token::Type::String, out, p);
    return q + 1;
  }

  const std::string& src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;
  bool strip_next_ = false;  // the last tag ended with '-': strip the whitespace after it
  bool trim_next_ = false;   // the last tag was a block or comment: drop one newline after it
};

}  // namespace

std::vector<Token> lex_template(const std::string& source) {
  ALEM_CHECK(source.size() < (64u << 20), "chat template: the template is larger than 64 MiB");
  // As jinja2: \r\n and \r become \n, and one trailing newline is dropped
  // (keep_trailing_newline=False).
  std::string normalized;
  normalized.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      normalized += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      normalized += source[i];
    }
  }
  if (!normalized.empty() && normalized.back() == '\n') normalized.pop_back();
  return Lexer(normalized).run();
}

}  // namespace alem::jinja
