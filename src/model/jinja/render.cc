// The chat-template renderer: walks the tree from parser.cc with jinja2's semantics (scopes, for
// loops with `loop`, namespace(), macros, Undefined as jinja2's default Undefined), charging
// every step against RenderOptions so that a hostile template or message cannot run away.
// Recursion follows the tree, whose depth the parser bounds, and macro calls, bounded here.
#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "model/jinja/ast.h"
#include "model/jinja/builtins.h"
#include "model/jinja/jinja.h"

namespace alem::jinja {
namespace {

enum class Flow { Normal, Break, Continue };

using Frame = std::unordered_map<std::string, Value>;

class Renderer final : public Interp {
 public:
  Renderer(const Dict& context, const RenderOptions& options) : opt_(options) {
    frames_.emplace_back();
    for (const auto& [k, v] : context.entries) frames_[0][k.text] = v;
    frames_.emplace_back();  // the template's own top-level variables
  }

  Str run(const Body& body) {
    Str out;
    outs_.push_back(&out);
    exec_body(body);
    outs_.pop_back();
    return out;
  }

  int line() const { return line_; }

  Value call(const Value& fn, Args& args) override {
    if (fn.type() != Type::Function) {
      if (fn.is_undefined() && !fn.undefined_hint().empty()) {
        fail("'" + fn.undefined_hint() + "' is undefined");
      }
      fail(std::string("'") + fn.type_name() + "' object is not callable");
    }
    const Function& f = fn.fn();
    if (f.kind != Function::Kind::Macro) return call_builtin(*this, f, args);
    return call_macro(*static_cast<const Node*>(f.macro), args);
  }

  void tick(uint64_t steps) override {
    steps_ += steps;
    if (steps_ > opt_.max_steps) {
      fail("the template took more than " + std::to_string(opt_.max_steps) +
           " steps (render limit)");
    }
  }

  const RenderOptions& options() const override { return opt_; }

 private:
  // ---- output and variables ----

  void emit(const Str& s) {
    Str& out = *outs_.back();
    if (out.text.size() + s.text.size() > opt_.max_output_bytes) {
      fail("the output exceeds " + std::to_string(opt_.max_output_bytes) + " bytes (render limit)");
    }
    tick(s.text.size() / 64);
    out.append(s);
  }

  const Value* lookup(const std::string& name) const {
    for (size_t i = frames_.size(); i-- > floor_;) {
      auto it = frames_[i].find(name);
      if (it != frames_[i].end()) return &it->second;
    }
    if (floor_ > 1) {
      for (size_t i = 2; i-- > 0;) {
        auto it = frames_[i].find(name);
        if (it != frames_[i].end()) return &it->second;
      }
    }
    return nullptr;
  }

  void assign(const std::string& name, Value v) { frames_.back()[name] = std::move(v); }

  void assign_targets(const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return;
    }
    const List items = iterate(v);
    if (items.size() != targets.size()) {
      fail("cannot unpack " + std::to_string(items.size()) + " values into " +
           std::to_string(targets.size()) + " names");
    }
    for (size_t i = 0; i < targets.size(); ++i) assign(targets[i], items[i]);
  }

  // ---- statements ----

  Flow exec_body(const Body& body) {
    for (const Node& n : body) {
      const Flow f = exec(n);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Node& n) {
    line_ = n.line;
    tick(1);
    switch (n.kind) {
      case Node::Kind::Text:
        emit(Str::literal(n.text));
        return Flow::Normal;
      case Node::Kind::Output:
        emit(to_str(eval(*n.expr)));
        return Flow::Normal;
      case Node::Kind::If:
        for (size_t i = 0; i < n.conds.size(); ++i) {
          if (eval(*n.conds[i]).truthy()) return exec_body(n.bodies[i]);
        }
        return exec_body(n.else_body);
      case Node::Kind::For:
        return exec_for(n);
      case Node::Kind::Set: {
        Value v = eval(*n.expr);
        if (!n.text.empty()) {
          const Value* target = lookup(n.targets[0]);
          if (!target || target->type() != Type::Namespace) {
            fail("cannot assign attribute '" + n.text + "' on a non-namespace object");
          }
          if (v.type() == Type::Namespace) fail("a namespace cannot hold a namespace");
          target->namespace_object().attrs.set(Str::literal(n.text), std::move(v));
        } else {
          assign_targets(n.targets, v);
        }
        return Flow::Normal;
      }
      case Node::Kind::SetBlock: {
        Str captured;
        outs_.push_back(&captured);
        exec_body(n.body);
        outs_.pop_back();
        assign(n.targets[0], Value::string(std::move(captured)));
        return Flow::Normal;
      }
      case Node::Kind::Macro: {
        auto f = std::make_shared<Function>();
        f->kind = Function::Kind::Macro;
        f->name = n.text;
        f->macro = &n;
        assign(n.text, Value::function(std::move(f)));
        return Flow::Normal;
      }
      case Node::Kind::Break:
        return Flow::Break;
      case Node::Kind::Continue:
        return Flow::Continue;
    }
    return Flow::Normal;
  }

  Flow exec_for(const Node& n) {
    const Value seq = eval(*n.expr);
    if (seq.type() == Type::None || seq.is_number() || seq.type() == Type::Function ||
        seq.type() == Type::Namespace) {
      fail(std::string("'") + seq.type_name() + "' object is not iterable");
    }
    List items = iterate(seq);
    tick(items.size());
    if (n.filter) {
      List kept;
      frames_.emplace_back();
      for (const Value& item : items) {
        assign_targets(n.targets, item);
        if (eval(*n.filter).truthy()) kept.push_back(item);
      }
      frames_.pop_back();
      items = std::move(kept);
    }
    if (items.empty()) return exec_body(n.else_body);
    const auto len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      tick(1);
      frames_.emplace_back();
      Dict loop;
      loop.entries.reserve(11);
      loop.set(Str::literal("index0"), Value::integer(i));
      loop.set(Str::literal("index"), Value::integer(i + 1));
      loop.set(Str::literal("revindex0"), Value::integer(len - i - 1));
      loop.set(Str::literal("revindex"), Value::integer(len - i));
      loop.set(Str::literal("first"), Value::boolean(i == 0));
      loop.set(Str::literal("last"), Value::boolean(i == len - 1));
      loop.set(Str::literal("length"), Value::integer(len));
      loop.set(Str::literal("depth"), Value::integer(1));
      loop.set(Str::literal("depth0"), Value::integer(0));
      loop.set(Str::literal("previtem"), i > 0 ? items[static_cast<size_t>(i - 1)] : Value());
      loop.set(Str::literal("nextitem"), i + 1 < len ? items[static_cast<size_t>(i + 1)] : Value());
      assign("loop", Value::dict(std::move(loop)));
      assign_targets(n.targets, items[static_cast<size_t>(i)]);
      const Flow f = exec_body(n.body);
      frames_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value call_macro(const Node& m, Args& args) {
    if (macro_depth_ >= opt_.max_macro_depth) {
      fail("macros call each other deeper than " + std::to_string(opt_.max_macro_depth) +
           " levels (render limit)");
    }
    if (args.pos.size() > m.targets.size()) fail("macro '" + m.text + "' takes fewer arguments");
    const size_t saved_floor = floor_;
    const int saved_line = line_;
    frames_.emplace_back();
    floor_ = frames_.size() - 1;
    ++macro_depth_;
    for (const auto& [k, v] : args.kw) {
      if (std::find(m.targets.begin(), m.targets.end(), k) == m.targets.end()) {
        fail("macro '" + m.text + "' has no parameter '" + k + "'");
      }
    }
    for (size_t i = 0; i < m.targets.size(); ++i) {
      const Value* given = args.get(i, m.targets[i].c_str());
      if (given) {
        assign(m.targets[i], *given);
      } else if (m.conds[i]) {
        assign(m.targets[i], eval(*m.conds[i]));
      } else {
        assign(m.targets[i], Value::undefined(m.targets[i]));
      }
    }
    Str captured;
    outs_.push_back(&captured);
    exec_body(m.body);
    outs_.pop_back();
    --macro_depth_;
    frames_.pop_back();
    floor_ = saved_floor;
    line_ = saved_line;
    return Value::string(std::move(captured));
  }

  // ---- expressions ----

  Args eval_args(const Expr& e, size_t first) {
    Args args;
    const size_t n_kw = e.kw_names.size();
    const size_t n_pos = e.kids.size() - first - n_kw;
    for (size_t i = 0; i < n_pos; ++i) args.pos.push_back(eval(*e.kids[first + i]));
    for (size_t i = 0; i < n_kw; ++i) {
      args.kw.emplace_back(e.kw_names[i], eval(*e.kids[first + n_pos + i]));
    }
    return args;
  }

  Value get_attr(const Value& obj, const std::string& name) {
    switch (obj.type()) {
      case Type::Undefined:
        fail(obj.undefined_hint().empty()
                 ? "cannot read attribute '" + name + "' of an undefined value"
                 : "'" + obj.undefined_hint() + "' is undefined");
      case Type::Dict: {
        Value m = method_of(obj, name);
        if (!m.is_undefined()) return m;
        if (const Value* v = obj.dict().find(name)) return *v;
        return Value::undefined(name);
      }
      case Type::Namespace: {
        if (const Value* v = obj.namespace_object().attrs.find(name)) return *v;
        return Value::undefined(name);
      }
      default: {
        Value m = method_of(obj, name);
        return m.is_undefined() ? Value::undefined(name) : m;
      }
    }
  }

  Value get_item(const Value& obj, const Value& key) {
    if (obj.is_undefined()) {
      fail(obj.undefined_hint().empty() ? "cannot subscript an undefined value"
                                        : "'" + obj.undefined_hint() + "' is undefined");
    }
    if (obj.is_dict() && key.is_string()) {
      if (const Value* v = obj.dict().find(key.str().text)) return *v;
      Value m = method_of(obj, key.str().text);
      return m.is_undefined() ? Value::undefined(key.str().has_data() ? "" : key.str().text) : m;
    }
    if ((obj.is_list() || obj.is_string()) && key.is_number() && key.type() != Type::Float) {
      int64_t i = key.as_int();
      if (obj.is_list()) {
        const auto n = static_cast<int64_t>(obj.items().size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined();
        return obj.items()[static_cast<size_t>(i)];
      }
      const std::vector<size_t> offs = utf8_offsets(obj.str().text);
      const auto n = static_cast<int64_t>(offs.size() - 1);
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined();
      return Value::string(
          obj.str().substr(offs[static_cast<size_t>(i)], offs[static_cast<size_t>(i) + 1]));
    }
    if (key.is_string()) return get_attr(obj, key.str().text);
    if (obj.type() == Type::Namespace) return get_attr(obj, to_str(key).text);
    return Value::undefined();
  }

  Value slice(const Value& obj, const Expr& e) {
    auto bound = [&](const ExprPtr& x) -> std::optional<int64_t> {
      if (!x) return std::nullopt;
      const Value v = eval(*x);
      if (v.is_none()) return std::nullopt;
      if (!v.is_number() || v.type() == Type::Float) fail("slice indices must be integers");
      return v.as_int();
    };
    const auto start = bound(e.kids[1]), stop = bound(e.kids[2]), step_opt = bound(e.kids[3]);
    const int64_t step = step_opt.value_or(1);
    if (step == 0) fail("slice step cannot be zero");
    std::vector<size_t> offs;
    int64_t n = 0;
    if (obj.is_list()) {
      n = static_cast<int64_t>(obj.items().size());
    } else if (obj.is_string()) {
      offs = utf8_offsets(obj.str().text);
      n = static_cast<int64_t>(offs.size() - 1);
    } else {
      fail(std::string("'") + obj.type_name() + "' object cannot be sliced");
    }
    // Python's slice.indices().
    auto norm = [&](std::optional<int64_t> v, int64_t dflt, int64_t lo, int64_t hi) {
      if (!v) return dflt;
      int64_t x = *v;
      if (x < 0) x += n;
      return std::clamp(x, lo, hi);
    };
    int64_t b, end;
    if (step > 0) {
      b = norm(start, 0, 0, n);
      end = norm(stop, n, 0, n);
    } else {
      b = norm(start, n - 1, -1, n - 1);
      end = norm(stop, -1, -1, n - 1);
    }
    tick(static_cast<uint64_t>(n));
    if (obj.is_string() && step == 1) {
      if (end <= b) return Value::string(Str{});
      return Value::string(
          obj.str().substr(offs[static_cast<size_t>(b)], offs[static_cast<size_t>(end)]));
    }
    List out;
    Str s;
    for (int64_t i = b; step > 0 ? i < end : i > end; i += step) {
      if (obj.is_list()) {
        out.push_back(obj.items()[static_cast<size_t>(i)]);
      } else {
        s.append(obj.str().substr(offs[static_cast<size_t>(i)], offs[static_cast<size_t>(i) + 1]));
      }
    }
    return obj.is_list() ? Value::list(std::move(out)) : Value::string(std::move(s));
  }

  Value arith(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      Str s = to_str(a);
      s.append(to_str(b));
      check_size(s.text.size());
      return Value::string(std::move(s));
    }
    if (a.is_undefined() || b.is_undefined()) {
      const Value& u = a.is_undefined() ? a : b;
      fail(u.undefined_hint().empty() ? "an undefined value used in '" + op + "'"
                                      : "'" + u.undefined_hint() + "' is undefined");
    }
    if (op == "+" && a.is_string() && b.is_string()) {
      check_size(a.str().text.size() + b.str().text.size());
      Str s = a.str();
      s.append(b.str());
      return Value::string(std::move(s));
    }
    if (op == "+" && a.is_list() && b.is_list()) {
      List l = a.items();
      l.insert(l.end(), b.items().begin(), b.items().end());
      tick(l.size());
      return Value::list(std::move(l));
    }
    if (op == "*" && (a.is_string() || a.is_list()) && b.is_number() && b.type() != Type::Float) {
      const int64_t times = std::max<int64_t>(0, b.as_int());
      const size_t unit = a.is_string() ? a.str().text.size() : a.items().size();
      if (unit > 0 && static_cast<uint64_t>(times) > opt_.max_output_bytes / unit) {
        fail("repetition result too large (render limit)");
      }
      tick(unit * static_cast<uint64_t>(times));
      if (a.is_string()) {
        Str s;
        for (int64_t i = 0; i < times; ++i) s.append(a.str());
        return Value::string(std::move(s));
      }
      List l;
      for (int64_t i = 0; i < times; ++i) l.insert(l.end(), a.items().begin(), a.items().end());
      return Value::list(std::move(l));
    }
    if (!a.is_number() || !b.is_number()) {
      fail(std::string("unsupported operand types for ") + op + ": '" + a.type_name() + "' and '" +
           b.type_name() + "'");
    }
    const bool ints = a.type() != Type::Float && b.type() != Type::Float;
    if (ints && op != "/") {
      const int64_t x = a.as_int(), y = b.as_int();
      int64_t r = 0;
      if (op == "+") {
        if (__builtin_add_overflow(x, y, &r)) fail("integer overflow");
      } else if (op == "-") {
        if (__builtin_sub_overflow(x, y, &r)) fail("integer overflow");
      } else if (op == "*") {
        if (__builtin_mul_overflow(x, y, &r)) fail("integer overflow");
      } else if (op == "//" || op == "%") {
        if (y == 0) fail("integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) fail("integer overflow");
        int64_t q = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        r = op == "//" ? q : m;
      } else if (op == "**") {
        if (y < 0) return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
        r = 1;
        for (int64_t i = 0; i < y; ++i) {
          if (__builtin_mul_overflow(r, x, &r)) fail("integer overflow");
          if (r == 0 || r == 1) break;
        }
      }
      return Value::integer(r);
    }
    const double x = a.as_float(), y = b.as_float();
    if (op == "+") return Value::number(x + y);
    if (op == "-") return Value::number(x - y);
    if (op == "*") return Value::number(x * y);
    if (op == "**") return Value::number(std::pow(x, y));
    if (y == 0) fail("division by zero");
    if (op == "/") return Value::number(x / y);
    if (op == "//") return Value::number(std::floor(x / y));
    return Value::number(x - y * std::floor(x / y));
  }

  void check_size(size_t bytes) {
    if (bytes > opt_.max_output_bytes) fail("a string exceeds the render limit");
    tick(bytes / 64);
  }

  bool contains(const Value& container, const Value& item) {
    switch (container.type()) {
      case Type::String:
        if (!item.is_string()) fail("'in <string>' requires a string on the left");
        return container.str().text.find(item.str().text) != std::string::npos;
      case Type::List:
        tick(container.items().size());
        return std::any_of(container.items().begin(), container.items().end(),
                           [&](const Value& v) { return equals(v, item); });
      case Type::Dict:
        return item.is_string() && container.dict().find(item.str().text) != nullptr;
      case Type::Undefined:
        return false;
      default:
        fail(std::string("argument of type '") + container.type_name() + "' is not iterable");
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    if (op == "<") return less_than(a, b);
    if (op == ">") return less_than(b, a);
    if (op == "<=") return !less_than(b, a);
    return !less_than(a, b);  // >=
  }

  Value eval(const Expr& e) {
    tick(1);
    switch (e.kind) {
      case Expr::Kind::Literal:
        return e.value;
      case Expr::Kind::Name: {
        if (const Value* v = lookup(e.name)) return *v;
        Value g = global_function(e.name);
        return g.is_undefined() ? Value::undefined(e.name) : g;
      }
      case Expr::Kind::ListLit:
      case Expr::Kind::TupleLit: {
        List items;
        for (const ExprPtr& k : e.kids) items.push_back(eval(*k));
        return Value::list(std::move(items));
      }
      case Expr::Kind::DictLit: {
        Dict d;
        for (size_t i = 0; i + 1 < e.kids.size(); i += 2) {
          Value k = eval(*e.kids[i]);
          if (!k.is_string()) fail("dict keys must be strings");
          d.set(k.str(), eval(*e.kids[i + 1]));
        }
        return Value::dict(std::move(d));
      }
      case Expr::Kind::Attr:
        return get_attr(eval(*e.kids[0]), e.name);
      case Expr::Kind::Item:
        return get_item(eval(*e.kids[0]), eval(*e.kids[1]));
      case Expr::Kind::Slice:
        return slice(eval(*e.kids[0]), e);
      case Expr::Kind::Call: {
        const Value fn = eval(*e.kids[0]);
        Args args = eval_args(e, 1);
        line_ = e.line;
        return call(fn, args);
      }
      case Expr::Kind::Filter: {
        const Value v = eval(*e.kids[0]);
        Args args = eval_args(e, 1);
        line_ = e.line;
        return apply_filter(*this, e.name, v, args);
      }
      case Expr::Kind::Test: {
        const Value v = eval(*e.kids[0]);
        Args args = eval_args(e, 1);
        line_ = e.line;
        return Value::boolean(apply_test(*this, e.name, v, args) != e.negated);
      }
      case Expr::Kind::Neg:
      case Expr::Kind::Pos: {
        const Value v = eval(*e.kids[0]);
        if (!v.is_number())
          fail(std::string("bad operand type for unary -: '") + v.type_name() + "'");
        if (e.kind == Expr::Kind::Pos)
          return v.type() == Type::Bool ? Value::integer(v.as_int()) : v;
        if (v.type() == Type::Float) return Value::number(-v.as_float());
        if (v.as_int() == INT64_MIN) fail("integer overflow");
        return Value::integer(-v.as_int());
      }
      case Expr::Kind::Not:
        return Value::boolean(!eval(*e.kids[0]).truthy());
      case Expr::Kind::And: {
        Value a = eval(*e.kids[0]);
        return a.truthy() ? eval(*e.kids[1]) : a;
      }
      case Expr::Kind::Or: {
        Value a = eval(*e.kids[0]);
        return a.truthy() ? a : eval(*e.kids[1]);
      }
      case Expr::Kind::Binary: {
        const Value a = eval(*e.kids[0]);
        const Value b = eval(*e.kids[1]);
        line_ = e.line;
        return arith(e.name, a, b);
      }
      case Expr::Kind::Compare: {
        Value left = eval(*e.kids[0]);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.kids[i + 1]);
          line_ = e.line;
          if (!compare(e.ops[i], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Kind::Cond:
        if (eval(*e.kids[1]).truthy()) return eval(*e.kids[0]);
        return e.kids[2] ? eval(*e.kids[2]) : Value::undefined();
    }
    return Value::undefined();
  }

  const RenderOptions& opt_;
  std::vector<Frame> frames_;
  size_t floor_ = 0;  // lowest frame a lookup scans before the two global frames
  std::vector<Str*> outs_;
  uint64_t steps_ = 0;
  int macro_depth_ = 0;
  int line_ = 0;
};

}  // namespace

Template::Template(const std::string& source)
    : body_(std::make_shared<const Body>(parse_template(source))) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

Str Template::render(const Dict& context, const RenderOptions& options) const {
  Renderer r(context, options);
  try {
    return r.run(*body_);
  } catch (const Error& e) {
    std::string msg = e.message();
    const std::string prefix = "chat template: ";
    if (msg.compare(0, prefix.size(), prefix) == 0) msg.erase(0, prefix.size());
    ALEM_FAIL("chat template: line " + std::to_string(r.line()) + ": " + msg);
  }
}

}  // namespace alem::jinja
