// Reads response_format (see response_format.h).
#include "serve/response_format.h"

#include "core/error.h"
#include "engine/constrained/json_schema.h"

namespace alem::serve {

std::string response_format_schema(const nlohmann::json& format) {
  using nlohmann::json;
  ALEM_CHECK(format.is_object(), "'response_format' must be an object");
  const auto type_it = format.find("type");
  ALEM_CHECK(type_it != format.end() && type_it->is_string(),
             "'response_format.type' must be \"text\", \"json_object\" or \"json_schema\"");
  const std::string type = type_it->get<std::string>();
  if (type == "text") return "";
  if (type == "json_object") return R"({"type":"object"})";
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
  const std::string text = schema->dump(-1, ' ', false, json::error_handler_t::replace);
  constrained::cached_json_schema(text);  // throws, naming the keyword, when unsupported
  return text;
}

}  // namespace alem::serve
