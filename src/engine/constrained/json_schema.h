// A subset of JSON Schema compiled once into a flat table of nodes that the character-level
// JSON recognizer (json_recognizer.h) walks while a response is generated, for OpenAI's
// response_format json_object / json_schema. Only keywords whose meaning can be enforced byte
// by byte, with every accepted prefix still completable, are taken; any other keyword is
// refused by name at request time (a 400), never silently ignored.
//
// Supported: type (a name or a list of names: object, array, string, number, integer, boolean,
// null), properties, required, additionalProperties (true, false or a schema), items,
// minItems, maxItems, minLength, maxLength, enum, const; annotations (title, description,
// default, examples, $schema, $id, $comment, and $defs/definitions, which only $ref could use)
// are ignored. Refused: $ref, anyOf, oneOf, allOf, not, pattern, format, minimum, maximum, ...
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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
