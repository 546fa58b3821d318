// A subset of JSON Schema compiled once into a flat table of nodes that the character-level
// JSON recognizer (json_recognizer.h) walks while a response is generated, for OpenAI's
// response_format json_object / json_schema. Only keywords whose meaning can be enforced byte
// by byte, with every accepted prefix still completable, are taken; any other keyword is
// refused by name at request time (a 400), never silently ignored.
//
// Supported: type (a name or a list of names: object, array, string, number, integer, boolean,
// null), properties, required, additionalProperties (true, false or a schema), items,
// minItems, maxItems, minLength, maxLength, pattern (a search, as JSON Schema means it; see
// regex.h for the syntax), enum, const; anyOf and oneOf whose alternatives have different JSON
// types (Optional[X] is anyOf [X, null]; the first byte of the value picks the alternative, so
// oneOf's "exactly one" holds too); $ref to "#", "#/$defs/..." or "#/definitions/..."
// (recursion included); allOf with one schema (an alias, as Pydantic writes $ref with a
// description). Annotations (title, description, default, examples, $schema, $id, $comment,
// readOnly, writeOnly, deprecated) and $defs/definitions themselves are ignored. Refused: not,
// if/then/else, allOf of several schemas, anyOf/oneOf whose alternatives share a type, format,
// minimum, maximum, multipleOf, uniqueItems, prefixItems, ... In a string with a pattern, a
// \u escape is not offered to the model (it writes the character itself).
#pragma once

#include <cstdint>
#include <memory>

#include <string>
#include <utility>
#include <vector>
#include "engine/constrained/regex.h"

namespace alem::constrained {

enum JsonType : uint8_t {
  kObject = 1,
  kArray = 2,
  kString = 4,
  kNumber = 8,  // any JSON number (integers included)
  kInteger = 16,
  kBoolean = 32,
  kNull = 64,
  kAnyType = 127,
};

struct SchemaNode {
  uint8_t types = kAnyType;
  // enum/const: each allowed value as compact JSON; the output must spell one of them exactly.
  std::vector<std::string> literals;
  // object
  std::vector<std::pair<std::string, int32_t>> properties;  // JSON-escaped name (no quotes), node
  uint64_t required = 0;                                    // bit i: properties[i] is required
  bool additional_allowed = true;
  int32_t additional = 0;  // node of additional properties' values (0 = any)
  // array
  int32_t items = 0;
  int32_t min_items = 0, max_items = -1;  // -1: no limit
  // string (in code points; an escape counts one)
  int32_t min_length = 0, max_length = -1;
  // string: the DFA its content (escapes decoded) must follow, with minLength and maxLength
  // folded in (min_length and max_length are then 0 and -1); null when there is no pattern
  std::shared_ptr<const RegexDfa> pattern;
  // anyOf / oneOf / $ref / one-schema allOf: the value is one of these nodes, picked by the
  // JSON type its first byte shows (their types are disjoint); `types` is their union
  std::vector<int32_t> alternatives;
};

// Node 0 is "any JSON value"; the root is node `root`.
struct JsonSchema {
  std::vector<SchemaNode> nodes;
  int32_t root = 0;
};

// Limits, so one request cannot make compilation or recognition expensive.
constexpr int kMaxSchemaBytes = 64 * 1024;
constexpr int kMaxSchemaNodes = 1024;
constexpr int kMaxPropertiesPerObject = 64;
constexpr int kMaxLiterals = 64;
constexpr int kMaxSchemaDepth = 32;

// Compiles a schema given as JSON text. Throws alem::Error with a message that names the
// offending keyword (and its path) for anything outside the subset above.
JsonSchema compile_json_schema(const std::string& schema_text);

// The same, cached by schema text (thread-safe; a few hundred entries at most). Throws as
// compile_json_schema does; refusals are not cached.
std::shared_ptr<const JsonSchema> cached_json_schema(const std::string& schema_text);

}  // namespace alem::constrained
