// OpenAI's `response_format` request field, read into the one thing the engine needs: the JSON
// Schema that the output must follow (engine/constrained/), as compact text. Kept apart from
// openai_protocol.cc so that parser stays about the wire shape of requests.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace alem::serve {

// {"type": "text"} -> "" (unconstrained); {"type": "json_object"} -> {"type":"object"} (any
// JSON object); {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} -> the
// schema, compiled once (and cached) to check that every keyword in it is supported. Throws
// alem::Error with a message fit for a 400 (naming the unsupported type or keyword).
std::string response_format_schema(const nlohmann::json& format);

}  // namespace alem::serve
