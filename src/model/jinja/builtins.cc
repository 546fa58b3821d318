// Filters, tests, global functions and str/dict methods for chat templates (see builtins.h),
// each as jinja2 3.1 and Python define it, limited to what Hugging Face templates call. Results
// built from data strings stay marked as data (Str::derived), so message text never becomes a
// control token however a template transforms it.
#include "model/jinja/builtins.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <ctime>

#include "core/error.h"

namespace alem::jinja {

void fail(const std::string& message) {
  ALEM_FAIL("chat template: " + message);
}

const Value* Args::get(size_t index, const char* name) const {
  if (index < pos.size()) return &pos[index];
  for (const auto& [k, v] : kw) {
    if (k == name) return &v;
  }
  return nullptr;
}

void Args::check(const char* what, size_t max_pos, std::initializer_list<const char*> names) const {
  if (pos.size() > max_pos) fail(std::string(what) + ": too many arguments");
  for (const auto& [k, v] : kw) {
    bool known = false;
    for (const char* n : names) known = known || k == n;
    if (!known) fail(std::string(what) + ": unexpected keyword argument '" + k + "'");
  }
}

namespace {

bool ascii_space(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

// Length of a Unicode whitespace character (as Python's str.isspace) starting at s[i], or 0.
size_t space_at(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (ascii_space(c)) return 1;
  auto at = [&](const char* seq) { return s.compare(i, std::strlen(seq), seq) == 0; };
  static const char* const wide[] = {"\xC2\x85",     "\xC2\xA0",     "\xE1\x9A\x80",
                                     "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF",
                                     "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (const char* w : wide) {
    if (at(w)) return std::strlen(w);
  }
  if (c == 0xE2 && i + 2 < s.size() && static_cast<unsigned char>(s[i + 1]) == 0x80) {
    const auto d = static_cast<unsigned char>(s[i + 2]);
    if (d >= 0x80 && d <= 0x8A) return 3;  // U+2000..U+200A
  }
  return 0;
}

size_t cp_len(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  return std::min(n, s.size() - i);
}

// Whether the code point at s[i] is one of `chars`' code points; its length in *len.
bool in_chars(const std::string& s, size_t i, const std::string& chars, size_t* len) {
  *len = cp_len(s, i);
  for (size_t j = 0; j < chars.size(); j += cp_len(chars, j)) {
    if (chars.compare(j, cp_len(chars, j), s, i, *len) == 0) return true;
  }
  return false;
}

const std::string& need_str(const Value& v, const char* what) {
  if (!v.is_string()) fail(std::string(what) + " expects a string, got '" + v.type_name() + "'");
  return v.str().text;
}

int64_t need_int(const Value& v, const char* what) {
  if (!v.is_number() || v.type() == Type::Float) {
    fail(std::string(what) + " expects an integer, got '" + v.type_name() + "'");
  }
  return v.as_int();
}

Str upper_lower(const Str& s, bool upper) {
  std::string t = s.text;
  for (char& c : t)
    c = static_cast<char>(upper ? std::toupper(static_cast<unsigned char>(c))
                                : std::tolower(static_cast<unsigned char>(c)));
  return s.derived(std::move(t));
}

Str title_case(const Str& s, bool only_first) {
  std::string t = s.text;
  bool prev_cased = false;
  for (size_t i = 0; i < t.size(); ++i) {
    const auto c = static_cast<unsigned char>(t[i]);
    const bool alpha = std::isalpha(c) != 0;
    if (only_first) {
      t[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
    } else if (alpha) {
      t[i] = static_cast<char>(prev_cased ? std::tolower(c) : std::toupper(c));
    }
    prev_cased = alpha || c >= 0x80;
  }
  return s.derived(std::move(t));
}

Str replace(const Str& s, const Str& from, const Str& to, int64_t count) {
  std::string out;
  const std::string& t = s.text;
  if (from.text.empty()) {
    // Python inserts `to` between every character (and at both ends).
    size_t i = 0;
    int64_t done = 0;
    while (true) {
      if (count < 0 || done < count) {
        out += to.text;
        ++done;
      }
      if (i >= t.size()) break;
      const size_t n = cp_len(t, i);
      out.append(t, i, n);
      i += n;
    }
  } else {
    size_t i = 0;
    int64_t done = 0;
    while (count < 0 || done < count) {
      const size_t p = t.find(from.text, i);
      if (p == std::string::npos) break;
      out.append(t, i, p - i);
      out += to.text;
      i = p + from.text.size();
      ++done;
    }
    out.append(t, i, std::string::npos);
  }
  const bool data = s.has_data() || from.has_data() || to.has_data();
  return data ? Str::from_data(std::move(out)) : Str::literal(std::move(out));
}

List split(const Str& s, const Value* sep, int64_t maxsplit) {
  List parts;
  const std::string& t = s.text;
  if (sep && !sep->is_none()) {
    const std::string& d = need_str(*sep, "split");
    if (d.empty()) fail("split: empty separator");
    size_t i = 0;
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      const size_t p = t.find(d, i);
      if (p == std::string::npos) break;
      parts.push_back(Value::string(s.substr(i, p)));
      i = p + d.size();
    }
    parts.push_back(Value::string(s.substr(i, t.size())));
    return parts;
  }
  size_t i = 0;
  while (true) {
    while (i < t.size()) {
      const size_t n = space_at(t, i);
      if (n == 0) break;
      i += n;
    }
    if (i >= t.size()) break;
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) >= maxsplit) {
      size_t end = t.size();
      while (end > i) {  // the remainder, right-stripped
        size_t k = end - 1;
        while (k > i && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) --k;
        if (space_at(t, k) == 0) break;
        end = k;
      }
      parts.push_back(Value::string(s.substr(i, end)));
      break;
    }
    size_t j = i;
    while (j < t.size() && space_at(t, j) == 0) j += cp_len(t, j);
    parts.push_back(Value::string(s.substr(i, j)));
    i = j;
  }
  return parts;
}

Str join(Interp& in, const List& items, const Str& sep) {
  Str out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out.append(sep);
    out.append(to_str(items[i]));
    if (out.text.size() > in.options().max_output_bytes)
      fail("join: result exceeds the render limit");
  }
  in.tick(items.size() + out.text.size() / 64);
  return out;
}

Value length_of(const Value& v) {
  switch (v.type()) {
    case Type::String:
      return Value::integer(static_cast<int64_t>(utf8_length(v.str().text)));
    case Type::List:
      return Value::integer(static_cast<int64_t>(v.items().size()));
    case Type::Dict:
      return Value::integer(static_cast<int64_t>(v.dict().entries.size()));
    case Type::Undefined:
      return Value::integer(0);
    default:
      fail(std::string("object of type '") + v.type_name() + "' has no len()");
  }
}

List dict_items(const Dict& d) {
  List out;
  for (const auto& [k, v] : d.entries) out.push_back(Value::list({Value::string(k), v}));
  return out;
}

Value attribute_of(const Value& item, const std::string& path) {
  Value cur = item;
  size_t i = 0;
  while (i <= path.size()) {
    const size_t dot = std::min(path.find('.', i), path.size());
    const std::string part = path.substr(i, dot - i);
    if (cur.is_dict()) {
      const Value* v = cur.dict().find(part);
      cur = v ? *v : Value::undefined(part);
    } else if (cur.is_list() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      const size_t idx = std::stoul(part);
      cur = idx < cur.items().size() ? cur.items()[idx] : Value::undefined();
    } else {
      return Value::undefined(part);
    }
    i = dot + 1;
  }
  return cur;
}

// select/reject/selectattr/rejectattr: keep items whose test (or truthiness) is `want`.
Value filter_items(Interp& in, const Value& v, Args& args, bool by_attr, bool want,
                   const char* what) {
  List out;
  const List items = iterate(v);
  in.tick(items.size());
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (args.pos.empty()) fail(std::string(what) + ": missing the attribute name");
    attr = need_str(args.pos[0], what);
    next = 1;
  }
  std::string test;
  if (args.pos.size() > next) test = need_str(args.pos[next++], what);
  Args test_args;
  test_args.pos.assign(args.pos.begin() + static_cast<long>(std::min(next, args.pos.size())),
                       args.pos.end());
  for (const Value& item : items) {
    const Value subject = by_attr ? attribute_of(item, attr) : item;
    const bool ok = test.empty() ? subject.truthy() : apply_test(in, test, subject, test_args);
    if (ok == want) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value map_items(Interp& in, const Value& v, Args& args) {
  const List items = iterate(v);
  in.tick(items.size());
  List out;
  if (const Value* attr = args.get(99, "attribute")) {
    const Value* dflt = args.get(99, "default");
    for (const Value& item : items) {
      Value x = attribute_of(item, need_str(*attr, "map"));
      out.push_back(x.is_undefined() && dflt ? *dflt : x);
    }
    return Value::list(std::move(out));
  }
  if (args.pos.empty()) fail("map: missing the filter name");
  const std::string name = need_str(args.pos[0], "map");
  Args rest;
  rest.pos.assign(args.pos.begin() + 1, args.pos.end());
  rest.kw = args.kw;
  for (const Value& item : items) out.push_back(apply_filter(in, name, item, rest));
  return Value::list(std::move(out));
}

Value strftime_now(Interp& in, const std::string& fmt) {
  std::tm tm{};
  if (in.options().now) {
    tm = *in.options().now;
  } else {
    const std::time_t t = std::time(nullptr);
    localtime_r(&t, &tm);
  }
  if (fmt.size() > 256) fail("strftime_now: format too long");
  char buf[1024];
  const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
  return Value::string(std::string(buf, n));
}

Value make_namespace(const Args& args) {
  auto ns = std::make_shared<Namespace>();
  for (const Value& p : args.pos) {
    if (!p.is_dict()) fail("namespace() takes a dict or keyword arguments");
    for (const auto& [k, v] : p.dict().entries) ns->attrs.set(k, v);
  }
  for (const auto& [k, v] : args.kw) {
    if (v.type() == Type::Namespace) fail("a namespace cannot hold a namespace");
    ns->attrs.set(Str::literal(k), v);
  }
  return Value::ns(std::move(ns));
}

Value bound(const Value& obj, const std::string& name) {
  auto f = std::make_shared<Function>();
  f->kind = Function::Kind::Method;
  f->name = name;
  f->receiver = obj;
  return Value::function(std::move(f));
}

Value str_method(Interp& in, const Str& s, const std::string& name, Args& args) {
  const std::string& t = s.text;
  if (name == "startswith" || name == "endswith") {
    args.check(name.c_str(), 1, {});
    const Value* p = args.get(0, "");
    if (!p) fail(name + ": missing argument");
    List options = p->is_list() ? p->items() : List{*p};
    for (const Value& o : options) {
      const std::string& x = need_str(o, name.c_str());
      const bool hit = name == "startswith" ? t.compare(0, x.size(), x) == 0
                                            : t.size() >= x.size() &&
                                                  t.compare(t.size() - x.size(), x.size(), x) == 0;
      if (hit) return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    args.check(name.c_str(), 1, {});
    const Value* c = args.get(0, "");
    const std::string* chars = c && !c->is_none() ? &need_str(*c, name.c_str()) : nullptr;
    return Value::string(strip(s, name != "rstrip", name != "lstrip", chars));
  }
  if (name == "split") {
    args.check("split", 2, {"sep", "maxsplit"});
    const Value* m = args.get(1, "maxsplit");
    return Value::list(split(s, args.get(0, "sep"), m ? need_int(*m, "split") : -1));
  }
  if (name == "upper" || name == "lower") return Value::string(upper_lower(s, name == "upper"));
  if (name == "title" || name == "capitalize")
    return Value::string(title_case(s, name == "capitalize"));
  if (name == "replace") {
    args.check("replace", 3, {});
    if (args.pos.size() < 2) fail("replace: needs two arguments");
    const int64_t count = args.pos.size() > 2 ? need_int(args.pos[2], "replace") : -1;
    need_str(args.pos[0], "replace");
    need_str(args.pos[1], "replace");
    Str r = replace(s, args.pos[0].str(), args.pos[1].str(), count);
    in.tick(r.text.size() / 64);
    if (r.text.size() > in.options().max_output_bytes)
      fail("replace: result exceeds the render limit");
    return Value::string(std::move(r));
  }
  if (name == "join") {
    if (args.pos.size() != 1) fail("join: needs one argument");
    return Value::string(join(in, iterate(args.pos[0]), s));
  }
  if (name == "find" || name == "count") {
    if (args.pos.size() != 1) fail(name + ": needs one argument");
    const std::string& x = need_str(args.pos[0], name.c_str());
    if (name == "find") {
      const size_t p = t.find(x);
      return Value::integer(
          p == std::string::npos ? -1 : static_cast<int64_t>(utf8_length(t.substr(0, p))));
    }
    if (x.empty()) return Value::integer(static_cast<int64_t>(utf8_length(t) + 1));
    int64_t n = 0;
    for (size_t p = t.find(x); p != std::string::npos; p = t.find(x, p + x.size())) ++n;
    return Value::integer(n);
  }
  if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum") {
    if (t.empty()) return Value::boolean(false);
    for (unsigned char c : t) {
      const bool ok = name == "isdigit"   ? std::isdigit(c) != 0
                      : name == "isalpha" ? std::isalpha(c) != 0
                      : name == "isalnum" ? std::isalnum(c) != 0
                                          : ascii_space(c);
      if (!ok) return Value::boolean(false);
    }
    return Value::boolean(true);
  }
  if (name == "format") {
    // "{}" and "{0}" style fields only.
    std::string out;
    size_t auto_index = 0;
    bool data = s.has_data();
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i] == '{' && i + 1 < t.size() && t[i + 1] == '{') {
        out += '{';
        ++i;
      } else if (t[i] == '}' && i + 1 < t.size() && t[i + 1] == '}') {
        out += '}';
        ++i;
      } else if (t[i] == '{') {
        const size_t close = t.find('}', i);
        if (close == std::string::npos) fail("format: unmatched '{'");
        const std::string field = t.substr(i + 1, close - i - 1);
        const Value* v = nullptr;
        if (field.empty()) {
          v = args.get(auto_index++, "");
        } else if (std::all_of(field.begin(), field.end(), ::isdigit)) {
          v = args.get(std::stoul(field), "");
        } else {
          v = args.get(SIZE_MAX, field.c_str());
        }
        if (!v) fail("format: missing a value for a field");
        const Str x = to_str(*v);
        data = data || x.has_data();
        out += x.text;
        i = close;
      } else {
        out += t[i];
      }
    }
    return Value::string(data ? Str::from_data(std::move(out)) : Str::literal(std::move(out)));
  }
  fail("str has no method '" + name + "'");
}

Value dict_method(const Value& d, const std::string& name, Args& args) {
  if (name == "items") return Value::list(dict_items(d.dict()));
  if (name == "keys" || name == "values") {
    List out;
    for (const auto& [k, v] : d.dict().entries)
      out.push_back(name == "keys" ? Value::string(k) : v);
    return Value::list(std::move(out));
  }
  if (name == "get") {
    if (args.pos.empty() || args.pos.size() > 2) fail("get: needs one or two arguments");
    if (args.pos[0].is_string()) {
      if (const Value* v = d.dict().find(args.pos[0].str().text)) return *v;
    }
    return args.pos.size() > 1 ? args.pos[1] : Value::none();
  }
  fail("dict has no method '" + name + "'");
}

bool is_str_method(const std::string& n) {
  static const char* const names[] = {"startswith", "endswith", "strip",   "lstrip", "rstrip",
                                      "split",      "upper",    "lower",   "title",  "capitalize",
                                      "replace",    "join",     "find",    "count",  "isdigit",
                                      "isalpha",    "isspace",  "isalnum", "format"};
  return std::any_of(std::begin(names), std::end(names), [&](const char* x) { return n == x; });
}

}  // namespace

Str strip(const Str& s, bool left, bool right, const std::string* chars) {
  const std::string& t = s.text;
  size_t b = 0, e = t.size();
  if (left) {
    while (b < e) {
      size_t n = 0;
      const bool hit = chars ? in_chars(t, b, *chars, &n) : (n = space_at(t, b)) > 0;
      if (!hit) break;
      b += n;
    }
  }
  if (right) {
    while (e > b) {
      size_t k = e - 1;
      while (k > b && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) --k;
      size_t n = 0;
      const bool hit = chars ? in_chars(t, k, *chars, &n) : space_at(t, k) > 0;
      if (!hit) break;
      e = k;
    }
  }
  return s.substr(b, e);
}

List iterate(const Value& v) {
  switch (v.type()) {
    case Type::List:
      return v.items();
    case Type::Dict: {
      List keys;
      for (const auto& [k, item] : v.dict().entries) keys.push_back(Value::string(k));
      return keys;
    }
    case Type::String: {
      List chars;
      const std::vector<size_t> offs = utf8_offsets(v.str().text);
      for (size_t i = 0; i + 1 < offs.size(); ++i) {
        chars.push_back(Value::string(v.str().substr(offs[i], offs[i + 1])));
      }
      return chars;
    }
    case Type::Undefined:
      return {};
    default:
      fail(std::string("'") + v.type_name() + "' object is not iterable");
  }
}

Value method_of(const Value& obj, const std::string& name) {
  if (obj.is_string() && is_str_method(name)) return bound(obj, name);
  if (obj.is_dict() && (name == "items" || name == "keys" || name == "values" || name == "get")) {
    return bound(obj, name);
  }
  if (obj.is_list() &&
      (name == "append" || name == "pop" || name == "extend" || name == "insert")) {
    return bound(obj, name);  // refused when called: the sandbox forbids changing a list
  }
  return Value::undefined();
}

Value global_function(const std::string& name) {
  static const char* const names[] = {"range", "namespace", "raise_exception", "strftime_now",
                                      "dict"};
  for (const char* n : names) {
    if (name == n) {
      auto f = std::make_shared<Function>();
      f->name = name;
      return Value::function(std::move(f));
    }
  }
  return Value::undefined();
}

Value call_builtin(Interp& in, const Function& f, Args& args) {
  if (f.kind == Function::Kind::Method) {
    const Value& r = f.receiver;
    if (r.is_string()) return str_method(in, r.str(), f.name, args);
    if (r.is_dict()) return dict_method(r, f.name, args);
    fail("list." + f.name + "() is not allowed: template values are immutable");
  }
  const std::string& n = f.name;
  if (n == "raise_exception") {
    const Value* m = args.get(0, "message");
    const Str text = m ? to_str(*m) : Str{};
    if (text.has_data())
      fail("the template raised an error (its text, which quotes the request, is withheld)");
    fail("the template raised an error: " + text.text);
  }
  if (n == "strftime_now") {
    const Value* fmt = args.get(0, "format");
    if (!fmt) fail("strftime_now: missing the format");
    return strftime_now(in, need_str(*fmt, "strftime_now"));
  }
  if (n == "namespace") return make_namespace(args);
  if (n == "dict") {
    Dict d;
    for (const auto& [k, v] : args.kw) d.set(Str::literal(k), v);
    return Value::dict(std::move(d));
  }
  if (n == "range") {
    args.check("range", 3, {});
    if (args.pos.empty()) fail("range expected at least 1 argument");
    int64_t start = 0, stop = 0, step = 1;
    if (args.pos.size() == 1) {
      stop = need_int(args.pos[0], "range");
    } else {
      start = need_int(args.pos[0], "range");
      stop = need_int(args.pos[1], "range");
      if (args.pos.size() > 2) step = need_int(args.pos[2], "range");
    }
    if (step == 0) fail("range() arg 3 must not be zero");
    List out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
      if (out.size() >= 100000)
        fail("range() is too large (over 100000 items, as jinja2's sandbox)");
      out.push_back(Value::integer(i));
    }
    in.tick(out.size());
    return Value::list(std::move(out));
  }
  fail("unknown function '" + n + "'");
}

Value apply_filter(Interp& in, const std::string& name, const Value& v, Args& args) {
  if (name == "tojson") {
    args.check("tojson", 1, {"indent", "sort_keys", "ensure_ascii"});
    const Value* indent = args.get(0, "indent");
    const Value* sort = args.get(99, "sort_keys");
    const Value* ascii = args.get(99, "ensure_ascii");
    if (ascii && ascii->truthy()) fail("tojson: ensure_ascii=True is not supported");
    const int ind =
        indent && !indent->is_none() ? static_cast<int>(need_int(*indent, "tojson")) : -1;
    if (ind > 64) fail("tojson: indent too large");
    Str out = to_json(v, ind, sort && sort->truthy());
    in.tick(out.text.size() / 64);
    if (out.text.size() > in.options().max_output_bytes)
      fail("tojson: result exceeds the render limit");
    return Value::string(std::move(out));
  }
  if (name == "trim") {
    const Value* c = args.get(0, "chars");
    const std::string* chars = c && !c->is_none() ? &need_str(*c, "trim") : nullptr;
    return Value::string(strip(to_str(v), true, true, chars));
  }
  if (name == "length" || name == "count") return length_of(v);
  if (name == "upper" || name == "lower")
    return Value::string(upper_lower(to_str(v), name == "upper"));
  if (name == "title" || name == "capitalize") {
    return Value::string(title_case(to_str(v), name == "capitalize"));
  }
  if (name == "default" || name == "d") {
    const Value* dflt = args.get(0, "default_value");
    const Value* boolean = args.get(1, "boolean");
    const bool use = boolean && boolean->truthy() ? !v.truthy() : v.is_undefined();
    if (!use) return v;
    return dflt ? *dflt : Value::string(std::string());
  }
  if (name == "first" || name == "last") {
    const List items = iterate(v);
    if (items.empty()) return Value::undefined();
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    const Value* sep = args.get(0, "d");
    const Value* attr = args.get(1, "attribute");
    List items = iterate(v);
    if (attr) {
      for (Value& item : items) item = attribute_of(item, need_str(*attr, "join"));
    }
    return Value::string(join(in, items, sep ? to_str(*sep) : Str{}));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::list({});
    if (!v.is_dict()) fail("items: expects a mapping");
    return Value::list(dict_items(v.dict()));
  }
  if (name == "list") return Value::list(iterate(v));
  if (name == "string") return Value::string(to_str(v));
  if (name == "safe") return v;
  if (name == "int" || name == "float") {
    const Value* dflt = args.get(0, "default");
    const bool is_int = name == "int";
    Value fallback = dflt ? *dflt : is_int ? Value::integer(0) : Value::number(0.0);
    if (v.is_number())
      return is_int ? Value::integer(v.type() == Type::Float ? static_cast<int64_t>(v.as_float())
                                                             : v.as_int())
                    : Value::number(v.as_float());
    if (!v.is_string()) return fallback;
    const std::string t = strip(v.str(), true, true, nullptr).text;
    char* end = nullptr;
    errno = 0;
    if (is_int) {
      const long long x = std::strtoll(t.c_str(), &end, 10);
      if (!t.empty() && end == t.c_str() + t.size() && errno == 0) return Value::integer(x);
    }
    const double d = std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size()) return fallback;
    return is_int ? Value::integer(static_cast<int64_t>(d)) : Value::number(d);
  }
  if (name == "abs") {
    if (!v.is_number()) fail("abs: expects a number");
    return v.type() == Type::Float ? Value::number(std::fabs(v.as_float()))
                                   : Value::integer(std::llabs(v.as_int()));
  }
  if (name == "replace") {
    if (args.pos.size() < 2) fail("replace: needs two arguments");
    const int64_t count = args.pos.size() > 2 ? need_int(args.pos[2], "replace") : -1;
    Str r = replace(to_str(v), to_str(args.pos[0]), to_str(args.pos[1]), count);
    if (r.text.size() > in.options().max_output_bytes)
      fail("replace: result exceeds the render limit");
    in.tick(r.text.size() / 64);
    return Value::string(std::move(r));
  }
  if (name == "selectattr") return filter_items(in, v, args, true, true, "selectattr");
  if (name == "rejectattr") return filter_items(in, v, args, true, false, "rejectattr");
  if (name == "select") return filter_items(in, v, args, false, true, "select");
  if (name == "reject") return filter_items(in, v, args, false, false, "reject");
  if (name == "map") return map_items(in, v, args);
  if (name == "unique") {
    List out;
    const List items = iterate(v);
    in.tick(items.size() * items.size() / 8 + items.size());
    for (const Value& item : items) {
      if (std::none_of(out.begin(), out.end(), [&](const Value& o) { return equals(o, item); })) {
        out.push_back(item);
      }
    }
    return Value::list(std::move(out));
  }
  if (name == "indent") {
    const Value* w = args.get(0, "width");
    const Value* first = args.get(1, "first");
    const Value* blank = args.get(2, "blank");
    const Str s = to_str(v);
    const std::string pad =
        w && w->is_string()
            ? w->str().text
            : std::string(
                  static_cast<size_t>(std::clamp<int64_t>(w ? need_int(*w, "indent") : 4, 0, 64)),
                  ' ');
    Str out;
    size_t i = 0;
    bool first_line = true;
    while (i <= s.text.size()) {
      size_t nl = s.text.find('\n', i);
      if (nl == std::string::npos) nl = s.text.size();
      const bool empty = nl == i;
      if ((!first_line || (first && first->truthy())) && (!empty || (blank && blank->truthy()))) {
        out.append_literal(pad);
      }
      out.append(s.substr(i, nl < s.text.size() ? nl + 1 : nl));
      first_line = false;
      if (nl >= s.text.size()) break;
      i = nl + 1;
    }
    return Value::string(std::move(out));
  }
  fail("unknown or unsupported filter '" + name + "'");
}

bool apply_test(Interp& in, const std::string& name, const Value& v, Args& args) {
  (void)in;
  const Value* arg = args.get(0, "other");
  auto need_arg = [&]() -> const Value& {
    if (!arg) fail("test '" + name + "' needs an argument");
    return *arg;
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") {
    return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  }
  if (name == "sequence") {
    return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  }
  if (name == "number") return v.is_number();
  if (name == "integer") return v.type() == Type::Int;
  if (name == "float") return v.type() == Type::Float;
  if (name == "boolean") return v.type() == Type::Bool;
  if (name == "true") return v.type() == Type::Bool && v.as_bool();
  if (name == "false") return v.type() == Type::Bool && !v.as_bool();
  if (name == "callable") return v.type() == Type::Function;
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, need_arg());
  if (name == "ne" || name == "!=") return !equals(v, need_arg());
  if (name == "sameas") {
    const Value& o = need_arg();
    if (v.is_number() && o.is_number()) return v.type() == o.type() && equals(v, o);
    return v.type() == o.type() && (v.is_none() || v.is_undefined() || equals(v, o));
  }
  if (name == "lt" || name == "lessthan" || name == "<") return less_than(v, need_arg());
  if (name == "gt" || name == "greaterthan" || name == ">") return less_than(need_arg(), v);
  if (name == "le" || name == "<=") return !less_than(need_arg(), v);
  if (name == "ge" || name == ">=") return !less_than(v, need_arg());
  if (name == "in") {
    const Value& c = need_arg();
    if (c.is_string()) return v.is_string() && c.str().text.find(v.str().text) != std::string::npos;
    if (c.is_dict()) return v.is_string() && c.dict().find(v.str().text) != nullptr;
    const List items = iterate(c);
    return std::any_of(items.begin(), items.end(), [&](const Value& x) { return equals(x, v); });
  }
  if (name == "odd" || name == "even") {
    const int64_t x = need_int(v, name.c_str());
    return (x % 2 != 0) == (name == "odd");
  }
  if (name == "divisibleby") {
    const int64_t d = need_int(need_arg(), "divisibleby");
    if (d == 0) fail("divisibleby: division by zero");
    return need_int(v, "divisibleby") % d == 0;
  }
  if (name == "lower" || name == "upper") {
    const Str s = to_str(v);
    return upper_lower(s, name == "upper").text == s.text;
  }
  fail("unknown or unsupported test '" + name + "'");
}

}  // namespace alem::jinja
