// The request fields that constrain what the output may be, read into the two things the engine
// needs: a JSON Schema (engine/constrained/json_schema.h) or a regular expression the whole
// output must match (engine/constrained/regex.h). OpenAI's `response_format` and vLLM's
// `guided_json`, `guided_regex`, `guided_choice` and `structured_outputs` all end here, so
// openai_protocol.cc stays about the wire shape of requests.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace alem::serve {

struct OutputConstraint {
  std::string json_schema;  // compact schema text; "" = none
  std::string regex;        // full-match pattern; "" = none
};

// Reads, from a request object:
//   response_format {"type": "text"} -> none; {"type": "json_object"} -> {"type":"object"};
//     {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} -> the schema;
//   guided_json (a schema object, or its JSON text), guided_regex (a pattern),
//   guided_choice (a list of strings: the output is exactly one of them);
//   structured_outputs {"json" | "regex" | "choice" | "json_object": true}, with the options
//     that do not change the language (disable_fallback) accepted and the others refused.
// At most one of them may constrain the output. Schemas and patterns are compiled (and cached)
// here, so an unsupported keyword or construct is a 400 at once. On a bad value, throws
// alem::Error with a message fit for a 400 and sets *field to the request field to name.
OutputConstraint read_output_constraint(const nlohmann::json& request, std::string* field);

}  // namespace alem::serve
