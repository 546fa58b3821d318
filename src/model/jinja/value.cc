// Values of the chat-template interpreter (see value.h): construction, Python's str/repr,
// HF's tojson (json.dumps with ensure_ascii=False), equality and ordering. Every walk over a
// value is recursive but bounded by kMaxValueDepth, which Value::list/dict enforce.
#include "model/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace alem::jinja {

Str Str::from_data(std::string s) {
  Str out{std::move(s), {}};
  if (!out.text.empty()) out.data.push_back({0, static_cast<uint32_t>(out.text.size())});
  return out;
}

void Str::append(const Str& other) {
  const auto base = static_cast<uint32_t>(text.size());
  text.append(other.text);
  for (const Span& s : other.data) {
    Span shifted{s.begin + base, s.end + base};
    if (!data.empty() && data.back().end == shifted.begin) {
      data.back().end = shifted.end;
    } else {
      data.push_back(shifted);
    }
  }
}

Str Str::substr(size_t begin, size_t end) const {
  end = std::min(end, text.size());
  begin = std::min(begin, end);
  Str out{text.substr(begin, end - begin), {}};
  for (const Span& s : data) {
    const size_t b = std::max<size_t>(s.begin, begin), e = std::min<size_t>(s.end, end);
    if (b < e)
      out.data.push_back({static_cast<uint32_t>(b - begin), static_cast<uint32_t>(e - begin)});
  }
  return out;
}

Str Str::derived(std::string s) const {
  return has_data() ? from_data(std::move(s)) : literal(std::move(s));
}

Value Value::undefined(std::string hint) {
  Value v;
  v.hint_ = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.type_ = Type::None;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.type_ = Type::Bool;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.type_ = Type::Int;
  v.i_ = i;
  return v;
}
Value Value::number(double f) {
  Value v;
  v.type_ = Type::Float;
  v.f_ = f;
  return v;
}
Value Value::string(Str s) {
  Value v;
  v.type_ = Type::String;
  v.s_ = std::make_shared<const Str>(std::move(s));
  return v;
}
Value Value::list(List items) {
  Value v;
  v.type_ = Type::List;
  v.depth_ = 1;
  for (const Value& item : items) {
    v.depth_ = std::max(v.depth_, item.depth_ + 1);
    ALEM_CHECK(item.type_ != Type::Namespace, "chat template: a namespace cannot be put in a list");
  }
  ALEM_CHECK(v.depth_ <= kMaxValueDepth,
             "chat template: lists and dicts nested deeper than " + std::to_string(kMaxValueDepth));
  v.list_ = std::make_shared<const List>(std::move(items));
  return v;
}
Value Value::dict(Dict d) {
  Value v;
  v.type_ = Type::Dict;
  v.depth_ = 1;
  for (const auto& [k, item] : d.entries) {
    v.depth_ = std::max(v.depth_, item.depth_ + 1);
    ALEM_CHECK(item.type_ != Type::Namespace, "chat template: a namespace cannot be put in a dict");
  }
  ALEM_CHECK(v.depth_ <= kMaxValueDepth,
             "chat template: lists and dicts nested deeper than " + std::to_string(kMaxValueDepth));
  v.dict_ = std::make_shared<const Dict>(std::move(d));
  return v;
}
Value Value::ns(std::shared_ptr<Namespace> n) {
  Value v;
  v.type_ = Type::Namespace;
  v.ns_ = std::move(n);
  return v;
}
Value Value::function(std::shared_ptr<const Function> f) {
  Value v;
  v.type_ = Type::Function;
  v.fn_ = std::move(f);
  return v;
}

namespace {

template <typename Json>
Value value_from_json(const Json& j, bool as_data, int depth = 0) {
  ALEM_CHECK(depth <= kMaxValueDepth, "chat template: input nested deeper than " +
                                          std::to_string(kMaxValueDepth) + " levels");
  switch (j.type()) {
    case nlohmann::detail::value_t::null:
      return Value::none();
    case nlohmann::detail::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::detail::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::detail::value_t::number_unsigned: {
      const auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::detail::value_t::number_float:
      return Value::number(j.template get<double>());
    case nlohmann::detail::value_t::string: {
      std::string s = j.template get<std::string>();
      return Value::string(as_data ? Str::from_data(std::move(s)) : Str::literal(std::move(s)));
    }
    case nlohmann::detail::value_t::array: {
      ALEM_CHECK(j.size() < (1u << 24), "chat template: input array too long");
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(value_from_json(e, as_data, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::detail::value_t::object: {
      Dict d;
      for (auto it = j.begin(); it != j.end(); ++it) {
        d.set(as_data ? Str::from_data(it.key()) : Str::literal(it.key()),
              value_from_json(it.value(), as_data, depth + 1));
      }
      return Value::dict(std::move(d));
    }
    default:
      ALEM_FAIL("chat template: unsupported JSON value in the input");
  }
}

}  // namespace

Value Value::from_json(const nlohmann::json& j, bool as_data) {
  return value_from_json(j, as_data);
}
Value Value::from_json(const nlohmann::ordered_json& j, bool as_data) {
  return value_from_json(j, as_data);
}

const Str& Value::str() const {
  static const Str empty;
  return s_ ? *s_ : empty;
}
const List& Value::items() const {
  static const List empty;
  return list_ ? *list_ : empty;
}
const Dict& Value::dict() const {
  static const Dict empty;
  return dict_ ? *dict_ : empty;
}
Namespace& Value::namespace_object() const {
  return *ns_;
}
const Function& Value::fn() const {
  return *fn_;
}

bool Value::truthy() const {
  switch (type_) {
    case Type::Undefined:
    case Type::None:
      return false;
    case Type::Bool:
      return b_;
    case Type::Int:
      return i_ != 0;
    case Type::Float:
      return f_ != 0.0;
    case Type::String:
      return !str().text.empty();
    case Type::List:
      return !items().empty();
    case Type::Dict:
      return !dict().entries.empty();
    default:
      return true;
  }
}

const char* Value::type_name() const {
  switch (type_) {
    case Type::Undefined:
      return "Undefined";
    case Type::None:
      return "NoneType";
    case Type::Bool:
      return "bool";
    case Type::Int:
      return "int";
    case Type::Float:
      return "float";
    case Type::String:
      return "str";
    case Type::List:
      return "list";
    case Type::Dict:
      return "dict";
    case Type::Namespace:
      return "Namespace";
    case Type::Function:
      return "function";
  }
  return "object";
}

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k.text == key) return &v;
  }
  return nullptr;
}

void Dict::set(Str key, Value v) {
  for (auto& [k, old] : entries) {
    if (k.text == key.text) {
      old = std::move(v);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(v));
}

std::string float_repr(double f) {
  if (std::isnan(f)) return "nan";
  if (std::isinf(f)) return f > 0 ? "inf" : "-inf";
  if (f == 0) return std::signbit(f) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: plain between 1e-4 and 1e16.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t e_pos = sci.find('e');
  std::string mant = sci.substr(0, e_pos);
  const int exp = std::stoi(sci.substr(e_pos + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) {
    if (c != '.') digits += c;
  }
  std::string out;
  if (exp < -4 || exp >= 16) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char e[16];
    std::snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += e;
  } else if (exp < 0) {
    out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  } else {
    const size_t int_len = static_cast<size_t>(exp) + 1;
    if (digits.size() <= int_len) {
      out = digits + std::string(int_len - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_len) + "." + digits.substr(int_len);
    }
  }
  return neg ? "-" + out : out;
}

namespace {

bool contains_data(const Value& v) {
  switch (v.type()) {
    case Type::String:
      return v.str().has_data();
    case Type::List:
      return std::any_of(v.items().begin(), v.items().end(), contains_data);
    case Type::Dict:
      for (const auto& [k, item] : v.dict().entries) {
        if (k.has_data() || contains_data(item)) return true;
      }
      return false;
    default:
      return false;
  }
}

std::string repr_string(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == q) {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

void json_string(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json_value(const Value& v, int indent, bool sort_keys, int level, std::string& out) {
  auto newline = [&](int lvl) {
    out += '\n';
    out.append(static_cast<size_t>(indent) * static_cast<size_t>(lvl), ' ');
  };
  switch (v.type()) {
    case Type::None:
      out += "null";
      return;
    case Type::Bool:
      out += v.as_bool() ? "true" : "false";
      return;
    case Type::Int:
      out += std::to_string(v.as_int());
      return;
    case Type::Float: {
      const double f = v.as_float();
      if (std::isnan(f)) {
        out += "NaN";
      } else if (std::isinf(f)) {
        out += f > 0 ? "Infinity" : "-Infinity";
      } else {
        out += float_repr(f);
      }
      return;
    }
    case Type::String:
      json_string(v.str().text, out);
      return;
    case Type::List: {
      const List& items = v.items();
      if (items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        json_value(items[i], indent, sort_keys, level + 1, out);
      }
      if (indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Type::Dict:
    case Type::Namespace: {
      const Dict& d = v.type() == Type::Dict ? v.dict() : v.namespace_object().attrs;
      if (d.entries.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Str, Value>*> entries;
      for (const auto& e : d.entries) entries.push_back(&e);
      if (sort_keys) {
        std::stable_sort(entries.begin(), entries.end(),
                         [](auto* a, auto* b) { return a->first.text < b->first.text; });
      }
      ALEM_CHECK(v.type() == Type::Dict, "chat template: tojson cannot serialize a namespace");
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i > 0) out += indent >= 0 ? "," : ", ";
        if (indent >= 0) newline(level + 1);
        json_string(entries[i]->first.text, out);
        out += ": ";
        json_value(entries[i]->second, indent, sort_keys, level + 1, out);
      }
      if (indent >= 0) newline(level);
      out += '}';
      return;
    }
    default:
      ALEM_FAIL(std::string("chat template: tojson cannot serialize a value of type ") +
                v.type_name());
  }
}

}  // namespace

std::string repr(const Value& v) {
  switch (v.type()) {
    case Type::String:
      return repr_string(v.str().text);
    case Type::List: {
      std::string out = "[";
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i > 0) out += ", ";
        out += repr(v.items()[i]);
      }
      return out + "]";
    }
    case Type::Dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, item] : v.dict().entries) {
        if (!first) out += ", ";
        first = false;
        out += repr_string(k.text) + ": " + repr(item);
      }
      return out + "}";
    }
    default:
      return to_str(v).text;
  }
}

Str to_str(const Value& v) {
  switch (v.type()) {
    case Type::Undefined:
      return {};
    case Type::None:
      return Str::literal("None");
    case Type::Bool:
      return Str::literal(v.as_bool() ? "True" : "False");
    case Type::Int:
      return Str::literal(std::to_string(v.as_int()));
    case Type::Float:
      return Str::literal(float_repr(v.as_float()));
    case Type::String:
      return v.str();
    case Type::List:
    case Type::Dict: {
      std::string text = repr(v);
      return contains_data(v) ? Str::from_data(std::move(text)) : Str::literal(std::move(text));
    }
    case Type::Namespace:
      return Str::literal("<Namespace>");
    case Type::Function:
      return Str::literal("<function " + v.fn().name + ">");
  }
  return {};
}

Str to_json(const Value& v, int indent, bool sort_keys) {
  std::string out;
  json_value(v, indent, sort_keys, 0, out);
  return contains_data(v) ? Str::from_data(std::move(out)) : Str::literal(std::move(out));
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type() == Type::Float || b.type() == Type::Float) return a.as_float() == b.as_float();
    return a.as_int() == b.as_int();
  }
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Type::Undefined:
    case Type::None:
      return true;
    case Type::String:
      return a.str().text == b.str().text;
    case Type::List: {
      const List &x = a.items(), &y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!equals(x[i], y[i])) return false;
      }
      return true;
    }
    case Type::Dict: {
      const Dict &x = a.dict(), &y = b.dict();
      if (x.entries.size() != y.entries.size()) return false;
      for (const auto& [k, v] : x.entries) {
        const Value* other = y.find(k.text);
        if (!other || !equals(v, *other)) return false;
      }
      return true;
    }
    case Type::Namespace:
      return &a.namespace_object() == &b.namespace_object();
    case Type::Function:
      return &a.fn() == &b.fn();
    default:
      return false;
  }
}

bool less_than(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type() == Type::Float || b.type() == Type::Float) return a.as_float() < b.as_float();
    return a.as_int() < b.as_int();
  }
  if (a.is_string() && b.is_string()) return a.str().text < b.str().text;
  if (a.is_list() && b.is_list()) {
    const List &x = a.items(), &y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (less_than(x[i], y[i])) return true;
      if (less_than(y[i], x[i])) return false;
    }
    return x.size() < y.size();
  }
  ALEM_FAIL(std::string("chat template: '<' not supported between instances of '") + a.type_name() +
            "' and '" + b.type_name() + "'");
}

size_t utf8_length(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::vector<size_t> utf8_offsets(std::string_view s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  out.push_back(s.size());
  return out;
}

}  // namespace alem::jinja
