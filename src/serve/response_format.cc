// Reads the output-constraining request fields (see response_format.h).
#include "serve/response_format.h"

#include <vector>

#include "core/error.h"
#include "core/json_input.h"
#include "engine/constrained/json_schema.h"
#include "engine/constrained/regex.h"

namespace alem::serve {
namespace {

using nlohmann::json;

// A schema given as an object (or boolean), or as its JSON text: compiled once to check it.
std::string schema_text(const json& schema, const std::string& name) {
  json parsed;
  const json* s = &schema;
  if (schema.is_string()) {
    try {
      parsed = parse_json_bounded(schema.get<std::string>());
    } catch (const JsonInputError&) {
      ALEM_FAIL("'" + name + "' is a string that is not JSON Schema text");
    }
    s = &parsed;
  }
  ALEM_CHECK(s->is_object() || s->is_boolean(), "'" + name + "' must be a JSON Schema object");
  const std::string text = s->dump(-1, ' ', false, json::error_handler_t::replace);
  constrained::cached_json_schema(text);  // throws, naming the keyword, when unsupported
  return text;
}

std::string regex_text(const json& pattern, const std::string& name) {
  ALEM_CHECK(pattern.is_string() && !pattern.get<std::string>().empty(),
             "'" + name + "' must be a non-empty string (a regular expression)");
  const std::string text = pattern.get<std::string>();
  constrained::cached_regex(text, constrained::RegexMatch::kFull);  // throws when unsupported
  return text;
}

std::string choice_text(const json& choices, const std::string& name) {
  ALEM_CHECK(choices.is_array() && !choices.empty(),
             "'" + name + "' must be a non-empty list of strings");
  std::vector<std::string> list;
  for (const json& c : choices) {
    ALEM_CHECK(c.is_string() && !c.get<std::string>().empty(),
               "'" + name + "' entries must be non-empty strings");
    list.push_back(c.get<std::string>());
  }
  const std::string pattern = constrained::choice_regex(list);
  constrained::cached_regex(pattern, constrained::RegexMatch::kFull);
  return pattern;
}

OutputConstraint from_response_format(const json& format) {
  ALEM_CHECK(format.is_object(), "'response_format' must be an object");
  const auto type_it = format.find("type");
  ALEM_CHECK(type_it != format.end() && type_it->is_string(),
             "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const std::string type = type_it->get<std::string>();
  if (type == "text") return {};
  if (type == "json_object") return {R"({"type":"object"})", ""};
  ALEM_CHECK(type == "json_schema", "'response_format' of type \"" + type +
                                        "\" is not supported; use \"text\", \"json_object\" or "
                                        "\"json_schema\"");
  const auto spec = format.find("json_schema");
  ALEM_CHECK(spec != format.end() && spec->is_object(),
             "'response_format.json_schema' must be an object with a 'schema'");
  const auto schema = spec->find("schema");
  ALEM_CHECK(schema != spec->end() && (schema->is_object() || schema->is_boolean()),
             "'response_format.json_schema.schema' must be a JSON Schema object");
  if (const auto strict = spec->find("strict"); strict != spec->end()) {
    ALEM_CHECK(strict->is_boolean() || strict->is_null(),
               "'response_format.json_schema.strict' must be a boolean");
  }
  return {schema_text(*schema, "response_format.json_schema.schema"), ""};
}

// vLLM's structured_outputs object: exactly one of json, regex, choice, json_object.
OutputConstraint from_structured_outputs(const json& so) {
  ALEM_CHECK(so.is_object(), "'structured_outputs' must be an object");
  OutputConstraint out;
  int kinds = 0;
  for (const auto& [key, value] : so.items()) {
    if (value.is_null()) continue;
    const std::string name = "structured_outputs." + key;
    if (key == "json") {
      out.json_schema = schema_text(value, name);
      ++kinds;
    } else if (key == "regex") {
      out.regex = regex_text(value, name);
      ++kinds;
    } else if (key == "choice") {
      out.regex = choice_text(value, name);
      ++kinds;
    } else if (key == "json_object") {
      ALEM_CHECK(value.is_boolean(), "'" + name + "' must be a boolean");
      if (value.get<bool>()) {
        out.json_schema = R"({"type":"object"})";
        ++kinds;
      }
    } else if (key == "disable_fallback" || key == "disable_any_whitespace" ||
               key == "disable_additional_properties") {
      ALEM_CHECK(value.is_boolean(), "'" + name + "' must be a boolean");
      // Fallback between grammar engines does not change the language; the other two would.
      ALEM_CHECK(key == "disable_fallback" || !value.get<bool>(),
                 "'" + name + "' is not supported by this server");
    } else if (key == "whitespace_pattern" || key == "grammar" || key == "structural_tag") {
      ALEM_CHECK(value.is_string() && value.get<std::string>().empty(),
                 "'" + name + "' is not supported by this server");
    } else {
      ALEM_FAIL("'" + name + "' is not a structured_outputs field this server knows");
    }
  }
  ALEM_CHECK(kinds <= 1,
             "'structured_outputs' must set only one of 'json', 'regex', 'choice' and "
             "'json_object'");
  return out;
}

}  // namespace

OutputConstraint read_output_constraint(const json& request, std::string* field) {
  OutputConstraint result;
  std::string from;
  auto take = [&](const char* key, auto reader) {
    const auto it = request.find(key);
    if (it == request.end() || it->is_null()) return;
    *field = key;
    OutputConstraint c = reader(*it);
    if (c.json_schema.empty() && c.regex.empty()) return;
    ALEM_CHECK(from.empty(),
               "'" + from + "' and '" + key + "' both constrain the output; send only one of them");
    from = key;
    result = std::move(c);
  };
  take("response_format", from_response_format);
  take("guided_json", [](const json& v) {
    return OutputConstraint{schema_text(v, "guided_json"), ""};
  });
  take("guided_regex", [](const json& v) {
    return OutputConstraint{"", regex_text(v, "guided_regex")};
  });
  take("guided_choice", [](const json& v) {
    return OutputConstraint{"", choice_text(v, "guided_choice")};
  });
  take("structured_outputs", from_structured_outputs);
  if (const auto it = request.find("guided_decoding_backend");
      it != request.end() && !it->is_null()) {
    *field = "guided_decoding_backend";
    // Names vLLM's grammar engine; alem has one, and the language is the same.
    ALEM_CHECK(it->is_string(), "'guided_decoding_backend' must be a string");
  }
  field->clear();
  return result;
}

}  // namespace alem::serve
