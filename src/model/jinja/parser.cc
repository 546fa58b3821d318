// Chat template parser: tokens (lexer.cc) to the tree of ast.h, following jinja2's grammar and
// operator precedence (jinja2/parser.py): or < and < not < comparisons < + - < ~ < * / // % <
// ** < unary - + < primary with postfix (. [] ()) and then filters and tests. Recursive descent,
// with every nesting level counted against kMaxNesting so hostile input cannot exhaust the stack.
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <set>

#include "core/error.h"
#include "model/jinja/ast.h"
#include "model/jinja/lexer.h"

namespace alem::jinja {
void Expr::add(ExprPtr kid) {
  if (kid) {
    height = std::max(height, kid->height + 1);
    if (height > kMaxExprHeight) {
      ALEM_FAIL("chat template: line " + std::to_string(line) + ", column " + std::to_string(col) +
                ": expression nested deeper than " + std::to_string(kMaxExprHeight) + " levels");
    }
  }
  kids.push_back(std::move(kid));
}

namespace {

using T = Token::Type;

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Body parse_all() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  const Token& cur() const { return toks_[pos_]; }
  const Token& peek(size_t n = 1) const { return toks_[std::min(pos_ + n, toks_.size() - 1)]; }
  void next() {
    if (pos_ + 1 < toks_.size()) ++pos_;
  }
  bool is_op(const char* op) const { return cur().type == T::Op && cur().value == op; }
  bool is_name(const char* name) const { return cur().type == T::Name && cur().value == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case T::End:
        return "the end of the template";
      case T::Text:
        return "template text";
      case T::VarEnd:
      case T::BlockEnd:
        return "the end of the tag";
      case T::String:
        return "a string";
      default:
        return "'" + t.value.substr(0, 32) + "'";
    }
  }

  [[noreturn]] void fail_at(const Token& t, const std::string& what) const {
    ALEM_FAIL("chat template: line " + std::to_string(t.line) + ", column " +
              std::to_string(t.col) + ": " + what);
  }
  [[noreturn]] void fail(const std::string& what) const {
    fail_at(cur(), what + " (found " + describe(cur()) + ")");
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(std::string("expected '") + op + "'");
  }
  std::string expect_name(const char* what) {
    if (cur().type != T::Name) fail(std::string("expected ") + what);
    std::string v = cur().value;
    next();
    return v;
  }
  void expect_block_end() {
    if (cur().type != T::BlockEnd) fail("expected the end of the tag");
    next();
  }

  struct Depth {
    explicit Depth(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxNesting) {
        p_.fail("the template nests deeper than " + std::to_string(kMaxNesting) + " levels");
      }
    }
    ~Depth() { --p_.depth_; }
    Parser& p_;
  };

  ExprPtr make(Expr::Kind kind, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // ---- statements ----

  // Parses nodes until a block tag whose keyword is in `ends` (left unconsumed after the
  // keyword: `end` receives it) or the end of input (allowed only when `ends` is empty).
  Body parse_body(const std::set<std::string>& ends, std::string& end) {
    Depth depth(*this);
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == T::End) {
        if (!ends.empty()) fail("missing {% " + *ends.rbegin() + " %}");
        return body;
      }
      if (t.type == T::Text) {
        Node n;
        n.kind = Node::Kind::Text;
        n.line = t.line;
        n.text = t.value;
        body.push_back(std::move(n));
        next();
      } else if (t.type == T::VarBegin) {
        Node n;
        n.kind = Node::Kind::Output;
        n.line = t.line;
        n.col = t.col;
        next();
        n.expr = parse_tuple(true);
        if (cur().type != T::VarEnd) fail("expected '}}'");
        next();
        body.push_back(std::move(n));
      } else if (t.type == T::BlockBegin) {
        const Token& kw = peek();
        if (kw.type == T::Name && ends.count(kw.value)) {
          next();
          end = kw.value;
          next();
          return body;
        }
        next();
        parse_statement(body);
      } else {
        fail("unexpected token");
      }
    }
  }

  void parse_statement(Body& body) {
    const Token kw = cur();
    if (kw.type != T::Name) fail("expected a statement keyword");
    next();
    Node n;
    n.line = kw.line;
    n.col = kw.col;
    const std::string& k = kw.value;
    if (k == "if") {
      n.kind = Node::Kind::If;
      std::string end;
      n.conds.push_back(parse_tuple(false));
      expect_block_end();
      n.bodies.push_back(parse_body({"elif", "else", "endif"}, end));
      while (end == "elif") {
        n.conds.push_back(parse_tuple(false));
        expect_block_end();
        n.bodies.push_back(parse_body({"elif", "else", "endif"}, end));
      }
      if (end == "else") {
        expect_block_end();
        n.else_body = parse_body({"endif"}, end);
      }
      expect_block_end();
    } else if (k == "for") {
      n.kind = Node::Kind::For;
      const bool paren = skip_op("(");
      do {
        n.targets.push_back(expect_name("a loop variable"));
      } while (skip_op(","));
      if (paren) expect_op(")");
      if (!skip_name("in")) fail("expected 'in'");
      n.expr = parse_tuple(false);
      if (skip_name("if")) n.filter = parse_expression(true);
      if (is_name("recursive")) fail("recursive loops are not supported");
      expect_block_end();
      std::string end;
      ++loop_depth_;
      n.body = parse_body({"else", "endfor"}, end);
      --loop_depth_;
      if (end == "else") {
        expect_block_end();
        n.else_body = parse_body({"endfor"}, end);
      }
      expect_block_end();
    } else if (k == "set") {
      n.kind = Node::Kind::Set;
      n.targets.push_back(expect_name("a variable name"));
      if (skip_op(".")) {
        n.text = expect_name("an attribute name");
      } else {
        while (skip_op(",")) n.targets.push_back(expect_name("a variable name"));
      }
      if (skip_op("=")) {
        n.expr = parse_tuple(true);
        expect_block_end();
      } else {
        if (n.targets.size() != 1 || !n.text.empty()) fail("expected '='");
        if (is_op("|")) fail("filtered block set is not supported");
        expect_block_end();
        n.kind = Node::Kind::SetBlock;
        std::string end;
        n.body = parse_body({"endset"}, end);
        expect_block_end();
      }
    } else if (k == "macro") {
      n.kind = Node::Kind::Macro;
      n.text = expect_name("a macro name");
      expect_op("(");
      while (!is_op(")")) {
        n.targets.push_back(expect_name("a parameter name"));
        n.conds.push_back(skip_op("=") ? parse_expression(true) : nullptr);
        if (!skip_op(",")) break;
      }
      expect_op(")");
      expect_block_end();
      std::string end;
      const int saved_loops = loop_depth_;
      loop_depth_ = 0;
      n.body = parse_body({"endmacro"}, end);
      loop_depth_ = saved_loops;
      if (cur().type == T::Name) next();  // {% endmacro name %}
      expect_block_end();
    } else if (k == "break" || k == "continue") {
      if (loop_depth_ == 0) fail_at(kw, "'" + k + "' outside a loop");
      n.kind = k == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_block_end();
    } else if (k == "generation") {
      // transformers' AssistantTracker: marks assistant text; renders its body unchanged.
      expect_block_end();
      std::string end;
      Body inner = parse_body({"endgeneration"}, end);
      expect_block_end();
      for (Node& child : inner) body.push_back(std::move(child));
      return;
    } else {
      fail_at(kw, "unknown or unsupported tag '" + k.substr(0, 32) + "'");
    }
    body.push_back(std::move(n));
  }

  // ---- expressions ----

  // An expression, or several separated by commas (a tuple), as in {{ a, b }} or set x = 1, 2.
  ExprPtr parse_tuple(bool with_condexpr) {
    const Token at = cur();
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    ExprPtr tuple = make(Expr::Kind::TupleLit, at);
    tuple->add(std::move(first));
    while (skip_op(",")) {
      if (cur().type == T::VarEnd || cur().type == T::BlockEnd || is_name("if")) break;
      tuple->add(parse_expression(with_condexpr));
    }
    return tuple;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    Depth depth(*this);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    const Token at = cur();
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      ExprPtr cond = parse_or();
      ExprPtr otherwise = skip_name("else") ? parse_condexpr() : nullptr;
      ExprPtr c = make(Expr::Kind::Cond, at);
      c->add(std::move(e));
      c->add(std::move(cond));
      c->add(std::move(otherwise));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(Expr::Kind kind, const Token& at, ExprPtr l, ExprPtr r, std::string op = {}) {
    ExprPtr e = make(kind, at);
    e->name = std::move(op);
    e->add(std::move(l));
    e->add(std::move(r));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::Or, at, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::And, at, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Depth depth(*this);
      const Token at = cur();
      next();
      ExprPtr e = make(Expr::Kind::Not, at);
      e->add(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token at = cur();
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == T::Op &&
          (cur().value == "==" || cur().value == "!=" || cur().value == "<" || cur().value == ">" ||
           cur().value == "<=" || cur().value == ">=")) {
        op = cur().value;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == T::Name && peek().value == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::Compare, at);
        cmp->add(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->add(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::Binary, at, std::move(e), parse_concat(), at.value);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::Binary, at, std::move(e), parse_math2(), "~");
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::Binary, at, std::move(e), parse_pow(), at.value);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token at = cur();
      next();
      e = binary(Expr::Kind::Binary, at, std::move(e), parse_unary(true), "**");
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    Depth depth(*this);
    const Token at = cur();
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      next();
      e = make(at.value == "-" ? Expr::Kind::Neg : Expr::Kind::Pos, at);
      e->add(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filter_expr(std::move(e)) : std::move(e);
  }

  ExprPtr literal(const Token& at, Value v) {
    ExprPtr e = make(Expr::Kind::Literal, at);
    e->value = std::move(v);
    return e;
  }

  ExprPtr parse_primary() {
    const Token at = cur();
    switch (at.type) {
      case T::Name: {
        next();
        const std::string& n = at.value;
        if (n == "true" || n == "True") return literal(at, Value::boolean(true));
        if (n == "false" || n == "False") return literal(at, Value::boolean(false));
        if (n == "none" || n == "None") return literal(at, Value::none());
        ExprPtr e = make(Expr::Kind::Name, at);
        e->name = n;
        return e;
      }
      case T::String: {
        std::string s;
        while (cur().type == T::String) {
          s += cur().value;
          next();
        }
        return literal(at, Value::string(std::move(s)));
      }
      case T::Int: {
        next();
        errno = 0;
        const long long v = std::strtoll(at.value.c_str(), nullptr, 10);
        if (errno == ERANGE) fail_at(at, "integer literal out of range");
        return literal(at, Value::integer(v));
      }
      case T::Float:
        next();
        return literal(at, Value::number(std::strtod(at.value.c_str(), nullptr)));
      case T::Op:
        if (at.value == "(") {
          next();
          if (skip_op(")")) return make(Expr::Kind::TupleLit, at);
          ExprPtr first = parse_expression(true);
          if (skip_op(")")) return first;
          ExprPtr tuple = make(Expr::Kind::TupleLit, at);
          tuple->add(std::move(first));
          while (skip_op(",")) {
            if (is_op(")")) break;
            tuple->add(parse_expression(true));
          }
          expect_op(")");
          return tuple;
        }
        if (at.value == "[") {
          next();
          ExprPtr list = make(Expr::Kind::ListLit, at);
          while (!is_op("]")) {
            list->add(parse_expression(true));
            if (!skip_op(",")) break;
          }
          expect_op("]");
          return list;
        }
        if (at.value == "{") {
          next();
          ExprPtr dict = make(Expr::Kind::DictLit, at);
          while (!is_op("}")) {
            dict->add(parse_expression(true));
            expect_op(":");
            dict->add(parse_expression(true));
            if (!skip_op(",")) break;
          }
          expect_op("}");
          return dict;
        }
        [[fallthrough]];
      default:
        fail("expected an expression");
    }
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".") || is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e), Expr::Kind::Call);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        next();
        const Token at = cur();
        ExprPtr f = make(Expr::Kind::Filter, at);
        f->name = expect_name("a filter name");
        while (skip_op(".")) {
          f->name += '.';
          f->name += expect_name("a filter name");
        }
        f->add(std::move(e));
        if (is_op("(")) parse_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        const Token at = cur();
        ExprPtr t = make(Expr::Kind::Test, at);
        t->negated = skip_name("not");
        t->name = expect_name("a test name");
        t->add(std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else if ((cur().type == T::Name || cur().type == T::String || cur().type == T::Int ||
                    cur().type == T::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("cannot chain tests with 'is'");
          t->add(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e), Expr::Kind::Call);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    Depth depth(*this);
    const Token at = cur();
    if (skip_op(".")) {
      if (cur().type == T::Int) {
        ExprPtr e = make(Expr::Kind::Item, at);
        e->add(std::move(obj));
        e->add(literal(cur(), Value::integer(std::strtoll(cur().value.c_str(), nullptr, 10))));
        next();
        return e;
      }
      ExprPtr e = make(Expr::Kind::Attr, at);
      e->name = expect_name("an attribute name");
      e->add(std::move(obj));
      return e;
    }
    expect_op("[");
    ExprPtr start, stop, step;
    bool slice = false;
    if (!is_op(":")) start = parse_expression(true);
    if (skip_op(":")) {
      slice = true;
      if (!is_op("]") && !is_op(":")) stop = parse_expression(true);
      if (skip_op(":") && !is_op("]")) step = parse_expression(true);
    }
    expect_op("]");
    ExprPtr e = make(slice ? Expr::Kind::Slice : Expr::Kind::Item, at);
    e->add(std::move(obj));
    e->add(std::move(start));
    if (slice) {
      e->add(std::move(stop));
      e->add(std::move(step));
    }
    return e;
  }

  ExprPtr parse_call(ExprPtr callee, Expr::Kind kind) {
    ExprPtr e = make(kind, cur());
    e->add(std::move(callee));
    parse_args(*e);
    return e;
  }

  // "(" [arg {"," arg}] ")" where arg is expr or name=expr; appends to e.kids and e.kw_names.
  void parse_args(Expr& e) {
    Depth depth(*this);
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail("*args and **kwargs are not supported");
      if (cur().type == T::Name && peek().type == T::Op && peek().value == "=") {
        e.kw_names.push_back(cur().value);
        next();
        next();
        e.add(parse_expression(true));
      } else {
        if (!e.kw_names.empty()) fail("positional argument after a keyword argument");
        e.add(parse_expression(true));
      }
      if (!skip_op(",")) break;
    }
    expect_op(")");
  }

  std::vector<Token> toks_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Body parse_template(const std::string& source) {
  return Parser(lex_template(source)).parse_all();
}

}  // namespace alem::jinja
