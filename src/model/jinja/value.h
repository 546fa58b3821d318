// The values a chat template computes with: Python's None, bool, int, float, str, list, dict,
// plus jinja2's Undefined, namespace() objects and callables. Strings remember which of their
// bytes came from the caller's data (messages, tools) rather than from the template text, so the
// rendered prompt can be tokenized without letting message text become control tokens.
// Containers are immutable once built (the sandbox HF uses forbids list.append and friends);
// only namespace() objects are mutable, and they are shared by reference as in Python.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace alem::jinja {

// [begin, end) byte range of a string that came from outside data.
struct Span {
  uint32_t begin = 0;
  uint32_t end = 0;
};

// A string and the byte ranges of it that came from the caller's data.
struct Str {
  std::string text;
  std::vector<Span> data;  // sorted, disjoint, non-empty ranges

  static Str literal(std::string s) { return Str{std::move(s), {}}; }
  static Str from_data(std::string s);
  bool has_data() const { return !data.empty(); }
  void append(const Str& other);
  void append_literal(std::string_view s) { text.append(s); }
  // Bytes [begin, end), keeping the data marks that fall inside.
  Str substr(size_t begin, size_t end) const;
  // A new string computed from this one: all data if this has any data.
  Str derived(std::string s) const;
};

enum class Type { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

class Value;
using List = std::vector<Value>;
struct Dict;
struct Namespace;
struct Function;

class Value {
 public:
  Value() = default;  // Undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(Str s);
  static Value string(std::string literal_text) {
    return string(Str::literal(std::move(literal_text)));
  }
  static Value list(List items);  // throws when nesting gets too deep
  static Value dict(Dict d);
  static Value ns(std::shared_ptr<Namespace> n);
  static Value function(std::shared_ptr<const Function> f);
  // From JSON (e.g. the messages of a request); every string becomes data when `as_data`.
  static Value from_json(const nlohmann::json& j, bool as_data);          // keys sorted
  static Value from_json(const nlohmann::ordered_json& j, bool as_data);  // keys as written

  Type type() const { return type_; }
  bool is_undefined() const { return type_ == Type::Undefined; }
  bool is_none() const { return type_ == Type::None; }
  bool is_string() const { return type_ == Type::String; }
  bool is_number() const {
    return type_ == Type::Int || type_ == Type::Float || type_ == Type::Bool;
  }
  bool is_list() const { return type_ == Type::List; }
  bool is_dict() const { return type_ == Type::Dict; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return type_ == Type::Bool ? (b_ ? 1 : 0) : i_; }
  double as_float() const { return type_ == Type::Float ? f_ : static_cast<double>(as_int()); }
  const Str& str() const;  // String only
  const List& items() const;
  const Dict& dict() const;
  Namespace& namespace_object() const;
  const Function& fn() const;
  // For Undefined: the name that was looked up (a template identifier), possibly empty.
  const std::string& undefined_hint() const { return hint_; }
  // Nesting depth of lists and dicts (a scalar is 0).
  int depth() const { return depth_; }

  bool truthy() const;
  // Python's type name, for error messages ("str", "list", "NoneType", ...).
  const char* type_name() const;

 private:
  Type type_ = Type::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  int depth_ = 0;
  std::string hint_;
  std::shared_ptr<const Str> s_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<const Dict> dict_;
  std::shared_ptr<Namespace> ns_;
  std::shared_ptr<const Function> fn_;
};

// An insertion-ordered dict with string keys (the only keys JSON and chat templates use).
struct Dict {
  std::vector<std::pair<Str, Value>> entries;
  const Value* find(std::string_view key) const;
  void set(Str key, Value v);  // replaces an existing key in place
};

struct Namespace {
  Dict attrs;
};

// Something a template can call: a global (range, namespace, raise_exception, ...), a method
// bound to its receiver ("abc".upper), or a macro the template defines.
struct Function {
  enum class Kind { Builtin, Method, Macro };
  Kind kind = Kind::Builtin;
  std::string name;
  Value receiver;               // Method
  const void* macro = nullptr;  // Macro: the parser's node (owned by the Template)
};

// Deepest list/dict nesting a value may have; deeper input is refused, which also keeps every
// recursive walk over values (repr, tojson, equality, destruction) shallow.
constexpr int kMaxValueDepth = 64;

// Python's str(v) and repr(v); jinja2 prints str(v) (None -> "None", lists in repr form).
Str to_str(const Value& v);
std::string repr(const Value& v);
// Python's repr of a float ("1.0", "0.1", "1e-05", "inf").
std::string float_repr(double f);
// json.dumps(v, ensure_ascii=False, indent=indent (negative: none), sort_keys), as HF's tojson
// filter. Throws for values JSON cannot hold (Undefined, functions).
Str to_json(const Value& v, int indent, bool sort_keys);
// Python ==, and <, for the types that support it (throws otherwise).
bool equals(const Value& a, const Value& b);
bool less_than(const Value& a, const Value& b);

// UTF-8 helpers: code point count, and the byte offset of code point `index` (clamped).
size_t utf8_length(std::string_view s);
std::vector<size_t> utf8_offsets(std::string_view s);  // start of every code point, plus size

}  // namespace alem::jinja
