// Splits a chat template into text and the tokens inside {{ }}, {% %} and {# #}, applying
// jinja2's whitespace rules as Hugging Face configures them: trim_blocks (the first newline
// after a block or comment tag is dropped), lstrip_blocks (spaces and tabs before a block or
// comment tag at the start of a line are dropped), and the explicit {%- -%} / {{- -}} / {%+
// markers. Comments are dropped here.
#pragma once

#include <string>
#include <vector>

namespace alem::jinja {

struct Token {
  enum class Type {
    Text,
    VarBegin,
    VarEnd,
    BlockBegin,
    BlockEnd,
    Name,
    String,
    Int,
    Float,
    Op,
    End
  };
  Type type;
  std::string value;  // the text, name, operator, unescaped string, or number's spelling
  int line = 1;
  int col = 1;
};

// Throws alem::Error "chat template: line L, column C: ..." on an unterminated tag, comment or
// string, or a character that cannot start a token.
std::vector<Token> lex_template(const std::string& source);

}  // namespace alem::jinja
