// Internal to the chat-template interpreter: the filters, tests, global functions and the
// methods of str/dict that templates call (builtins.cc), and the little the renderer
// (render.cc) lends them. Errors thrown here carry no location; the renderer adds the line.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/jinja/jinja.h"
#include "model/jinja/value.h"

namespace alem::jinja {

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // Argument `index` by position, or by keyword `name`; nullptr when absent.
  const Value* get(size_t index, const char* name) const;
  // Fails when more than `max_pos` positional or any keyword outside `names` was given.
  void check(const char* what, size_t max_pos, std::initializer_list<const char*> names) const;
};

class Interp {
 public:
  virtual ~Interp() = default;
  virtual Value call(const Value& fn, Args& args) = 0;  // a function value: global, method, macro
  virtual void tick(uint64_t steps) = 0;                // charges work; throws past the limit
  virtual const RenderOptions& options() const = 0;
};

[[noreturn]] void fail(const std::string& message);

Value apply_filter(Interp& in, const std::string& name, const Value& v, Args& args);
bool apply_test(Interp& in, const std::string& name, const Value& v, Args& args);
// A global function by name (range, namespace, raise_exception, strftime_now, dict), or
// Undefined when there is none.
Value global_function(const std::string& name);
Value call_builtin(Interp& in, const Function& f, Args& args);
// obj.name where obj is a str, dict or list: a bound method value, or Undefined.
Value method_of(const Value& obj, const std::string& name);

// Iteration as jinja2 does it: list items, dict keys, str characters, Undefined as empty.
List iterate(const Value& v);
// Python's str.strip family: `chars` empty means whitespace.
Str strip(const Str& s, bool left, bool right, const std::string* chars);

}  // namespace alem::jinja
