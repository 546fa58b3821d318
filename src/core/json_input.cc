// Bounded, non-recursive handling of outside JSON (see the header).
#include "core/json_input.h"

#include <vector>

#include "core/aligned_buffer.h"

namespace alem {
namespace {

using json = nlohmann::json;

// Thrown from the parser callback to stop at the first level too deep.
struct TooDeep {};

// "[json.exception.parse_error.101] parse error at line 1, column 9: syntax error while parsing
// value - invalid literal; last read: 'tru'" -> "syntax error while parsing value - invalid
// literal". The "last read" part and any quoted token are cut: they are bytes of the input.
std::string reason_without_input(const std::string& what) {
  std::string reason = what;
  const size_t column = reason.find("column ");
  if (column != std::string::npos) {
    const size_t colon = reason.find(": ", column);
    if (colon != std::string::npos) reason = reason.substr(colon + 2);
  }
  const size_t last_read = reason.find("; last read");
  if (last_read != std::string::npos) reason.resize(last_read);
  const size_t quote = reason.find('\'');
  if (quote != std::string::npos) reason.resize(quote);
  while (!reason.empty() && (reason.back() == ' ' || reason.back() == ':')) reason.pop_back();
  return reason.empty() ? "malformed JSON" : reason;
}

JsonInputError at_byte(const std::string& reason, std::string_view text, size_t byte) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < byte && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return JsonInputError(reason, byte, line, column);
}

// The byte offset where nesting first exceeds max_depth, found by a linear scan that skips
// strings (the parser callback reports depth but not position).
size_t first_too_deep_byte(std::string_view text, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return text.size();
}

}  // namespace

JsonInputError::JsonInputError(const std::string& reason, size_t byte, size_t line, size_t column)
    : std::runtime_error(line == 0 ? "malformed JSON: " + reason
                                   : "malformed JSON at line " + std::to_string(line) +
                                         ", column " + std::to_string(column) + " (byte " +
                                         std::to_string(byte) + "): " + reason),
      reason_(reason),
      byte_(byte),
      line_(line),
      column_(column) {}

json parse_json_bounded(std::string_view text, int max_depth) {
  // The callback sees each value as it starts; depth counts the containers around it.
  const json::parser_callback_t limit = [max_depth](int depth, json::parse_event_t event,
                                                    json&) -> bool {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_depth) {
      throw TooDeep{};
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit);
  } catch (const TooDeep&) {
    throw at_byte("nesting deeper than " + std::to_string(max_depth) + " levels", text,
                  first_too_deep_byte(text, max_depth));
  } catch (const json::parse_error& e) {
    throw at_byte(reason_without_input(e.what()), text, e.byte > 0 ? e.byte - 1 : 0);
  } catch (const json::out_of_range&) {
    // nlohmann reports a number that overflows a double as out_of_range.406 and quotes it.
    throw JsonInputError("a number is out of range", 0, 0, 0);
  } catch (const json::exception&) {
    throw JsonInputError("malformed JSON", 0, 0, 0);
  }
}

void wipe_json_strings(json& value) {
  std::vector<json*> pending{&value};
  while (!pending.empty()) {
    json* v = pending.back();
    pending.pop_back();
    if (v->is_string()) {
      std::string& s = v->get_ref<std::string&>();
      secure_wipe(s.data(), s.size());
    } else if (v->is_structured()) {
      for (auto& child : *v) pending.push_back(&child);
    }
  }
}

int json_depth(const json& value) {
  int deepest = 0;
  std::vector<std::pair<const json*, int>> pending{{&value, 0}};
  while (!pending.empty()) {
    auto [v, depth] = pending.back();
    pending.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, depth + 1);
    for (const auto& child : *v) pending.push_back({&child, depth + 1});
  }
  return deepest;
}

}  // namespace alem
