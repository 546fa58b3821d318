// The syntax tree of a chat template, as the parser (parser.cc) builds it and the renderer
// (render.cc) walks it. Expressions and statements are plain tagged structs with owned children;
// the parser bounds their nesting (kMaxNesting), so every walk over them is shallow.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/jinja/value.h"

namespace alem::jinja {

// Deepest nesting of expressions and blocks the parser accepts.
constexpr int kMaxNesting = 64;

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // value
    Name,      // name
    ListLit,   // kids
    TupleLit,  // kids (a tuple behaves as a list)
    DictLit,   // kids: key, value, key, value, ...
    Attr,      // kids[0].name
    Item,      // kids[0][kids[1]]
    Slice,     // kids[0][kids[1]:kids[2]:kids[3]] (null kids are omitted parts)
    Call,      // kids[0](kids[1..], kw_names for the last kw_names.size() args)
    Filter,    // kids[0] | name(kids[1..], kw_names)
    Test,      // kids[0] is [not] name(kids[1..]); negated
    Neg,       // -kids[0]
    Pos,       // +kids[0]
    Not,       // not kids[0]
    And,       // kids[0] and kids[1]
    Or,        // kids[0] or kids[1]
    Binary,    // kids[0] op kids[1]: + - * / // % ** ~
    Compare,   // kids[0] ops[0] kids[1] ops[1] kids[2] ...: == != < > <= >= in notin
    Cond,      // kids[0] if kids[1] else kids[2] (kids[2] may be null)
  };
  Kind kind = Kind::Literal;
  int line = 0;
  int col = 0;
  std::string name;                   // Name, Attr, Filter, Test; the operator for Binary
  std::vector<std::string> ops;       // Compare
  std::vector<std::string> kw_names;  // Call, Filter, Test: keyword arguments, last in kids
  bool negated = false;               // Test
  Value value;                        // Literal
  std::vector<ExprPtr> kids;
  int height = 1;  // levels of expressions in this subtree

  // Appends a child (null for an omitted part); throws when the tree would get taller than
  // kMaxExprHeight, so long chains like a.b.c... or 1+1+1... cannot make walks deep.
  void add(ExprPtr kid);
};

// Tallest expression tree the parser accepts.
constexpr int kMaxExprHeight = 100;

struct Node;
using Body = std::vector<Node>;

struct Node {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // conds[i] -> bodies[i]; else_body
    For,       // for targets in expr [if filter]: body [else: else_body]
    Set,       // set targets = expr; or ns.attr = expr (attr non-empty)
    SetBlock,  // set targets[0] %} body {% endset
    Macro,     // macro name(targets with defaults) body
    Break,
    Continue,
  };
  Kind kind = Kind::Text;
  int line = 0;
  int col = 0;
  std::string text;                  // Text; Macro name; Set: the namespace attribute
  std::vector<std::string> targets;  // For, Set, SetBlock; Macro parameters
  ExprPtr expr;                      // Output, For (iterable), Set
  ExprPtr filter;                    // For's inline `if`
  std::vector<ExprPtr> conds;        // If; Macro: parameter defaults (null when none)
  std::vector<Body> bodies;          // If branches
  Body body;
  Body else_body;
};

// Parses `source` with HF's settings (trim_blocks and lstrip_blocks on). Throws alem::Error
// "chat template: line L, column C: ..." for a syntax error; the message quotes at most the
// offending token of the template, never anything else.
Body parse_template(const std::string& source);

}  // namespace alem::jinja
