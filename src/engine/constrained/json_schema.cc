// Compiles the JSON Schema subset of json_schema.h into SchemaNodes, refusing by name what it
// cannot enforce, and caches compiled schemas by their text.
#include "engine/constrained/json_schema.h"

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "core/error.h"

namespace alem::constrained {
namespace {

using nlohmann::json;

const std::set<std::string>& ignored_keywords() {
  static const std::set<std::string> k = {"title",       "description", "default",   "examples",
                                          "$schema",     "$id",         "$comment",  "$defs",
                                          "definitions", "readOnly",    "writeOnly", "deprecated"};
  return k;
}

uint8_t type_bit(const std::string& name, const std::string& path) {
  if (name == "object") return kObject;
  if (name == "array") return kArray;
  if (name == "string") return kString;
  if (name == "number") return kNumber | kInteger;
  if (name == "integer") return kInteger;
  if (name == "boolean") return kBoolean;
  if (name == "null") return kNull;
  ALEM_FAIL("response_format schema: unknown type \"" + name + "\" at " + path);
}

int32_t count_of(const json& v, const char* keyword, const std::string& path) {
  ALEM_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() <= (1 << 30),
             std::string("response_format schema: '") + keyword + "' at " + path +
                 " must be a non-negative integer");
  return static_cast<int32_t>(v.get<int64_t>());
}

// The value of a local JSON pointer ("#", "#/$defs/Name", ...) inside the root schema.
const json& resolve_ref(const json& root, const std::string& ref, const std::string& at) {
  ALEM_CHECK(ref == "#" || ref.rfind("#/", 0) == 0,
             "response_format schema: only local '$ref's (\"#/$defs/...\") are supported at " + at);
  const json* cur = &root;
  size_t pos = 1;
  while (pos < ref.size()) {
    const size_t next = ref.find('/', pos + 1);
    const size_t end = next == std::string::npos ? ref.size() : next;
    // RFC 6901's escapes, read left to right: "~1" is '/', "~0" is '~' (so "~01" is "~1").
    std::string token;
    for (size_t i = pos + 1; i < end; ++i) {
      if (ref[i] == '~' && i + 1 < end && (ref[i + 1] == '0' || ref[i + 1] == '1')) {
        token += ref[++i] == '1' ? '/' : '~';
      } else {
        token += ref[i];
      }
    }
    ALEM_CHECK(
        cur->is_object() && cur->contains(token),
        "response_format schema: '$ref' " + json(ref).dump() + " at " + at + " points at nothing");
    cur = &(*cur)[token];
    pos = next == std::string::npos ? ref.size() : next;
  }
  return *cur;
}

class Compiler {
 public:
  explicit Compiler(const json& root) : root_(root) {}
  JsonSchema schema;

  // anyOf/oneOf/$ref nodes: their alternatives' types must be disjoint; done once every node
  // (recursive ones included) is compiled.
  void finish_alternatives() {
    std::vector<uint8_t> state(schema.nodes.size(), 0);  // 1: being resolved, 2: done
    for (size_t i = 0; i < schema.nodes.size(); ++i) resolve_types(static_cast<int32_t>(i), state);
  }

  int32_t compile(const json& s, const std::string& path, int depth,
                  const std::string& ref_key = {}) {
    ALEM_CHECK(depth <= kMaxSchemaDepth, "response_format schema: nested deeper than " +
                                             std::to_string(kMaxSchemaDepth) + " at " + path);
    if (s.is_boolean()) {
      ALEM_CHECK(s.get<bool>(), "response_format schema: 'false' (nothing valid) at " + path);
      return 0;
    }
    ALEM_CHECK(s.is_object(), "response_format schema: a schema must be an object at " + path);
    ALEM_CHECK(schema.nodes.size() < kMaxSchemaNodes,
               "response_format schema: more than " + std::to_string(kMaxSchemaNodes) + " nodes");
    const int32_t index = static_cast<int32_t>(schema.nodes.size());
    schema.nodes.emplace_back();
    if (!ref_key.empty()) refs_[ref_key] = index;  // before the body: recursion finds it
    SchemaNode node;
    bool typed = false;
    std::string constraining;  // a keyword other than anyOf/oneOf/allOf/$ref, for refusals
    std::string combinator;
    std::string pattern;
    for (const auto& [key, value] : s.items()) {
      const std::string at = path + "." + key;
      if (ignored_keywords().count(key)) continue;
      const bool combines = key == "anyOf" || key == "oneOf" || key == "allOf" || key == "$ref";
      if (combines) {
        ALEM_CHECK(combinator.empty(), "response_format schema: '" + combinator + "' and '" + key +
                                           "' together are not supported at " + path);
        combinator = key;
      } else if (key != "required") {
        constraining = key;
      }
      if (key == "$ref") {
        ALEM_CHECK(value.is_string(), "response_format schema: '$ref' must be a string at " + at);
        const std::string ref = value.get<std::string>();
        auto it = refs_.find(ref);
        node.alternatives = {it != refs_.end()
                                 ? it->second
                                 : compile(resolve_ref(root_, ref, at), ref, depth + 1, ref)};
        paths_[index] = at;
      } else if (key == "anyOf" || key == "oneOf" || key == "allOf") {
        ALEM_CHECK(value.is_array() && !value.empty(),
                   "response_format schema: '" + key + "' must be a non-empty list at " + at);
        ALEM_CHECK(
            key != "allOf" || value.size() == 1,
            "response_format schema: 'allOf' of more than one schema is not supported at " + at);
        ALEM_CHECK(value.size() <= kMaxLiterals, "response_format schema: more than " +
                                                     std::to_string(kMaxLiterals) +
                                                     " alternatives at " + at);
        for (size_t i = 0; i < value.size(); ++i) {
          node.alternatives.push_back(
              compile(value[i], at + "[" + std::to_string(i) + "]", depth + 1));
        }
        paths_[index] = at;
      } else if (key == "pattern") {
        ALEM_CHECK(value.is_string(),
                   "response_format schema: 'pattern' must be a string at " + at);
        pattern = value.get<std::string>();
      } else if (key == "type") {
        typed = true;
        node.types = 0;
        if (value.is_string()) {
          node.types = type_bit(value.get<std::string>(), at);
        } else {
          ALEM_CHECK(value.is_array() && !value.empty(),
                     "response_format schema: 'type' must be a name or a list at " + at);
          for (const json& t : value) {
            ALEM_CHECK(t.is_string(), "response_format schema: 'type' entries are names at " + at);
            node.types |= type_bit(t.get<std::string>(), at);
          }
        }
      } else if (key == "properties") {
        ALEM_CHECK(value.is_object(), "response_format schema: 'properties' must be an object");
        ALEM_CHECK(value.size() <= kMaxPropertiesPerObject,
                   "response_format schema: more than " + std::to_string(kMaxPropertiesPerObject) +
                       " properties at " + at);
        for (const auto& [name, sub] : value.items()) {
          const std::string quoted = json(name).dump(-1, ' ', false, json::error_handler_t::strict);
          const int32_t child = compile(sub, at + "." + name, depth + 1);
          node.properties.emplace_back(quoted.substr(1, quoted.size() - 2), child);
        }
      } else if (key == "required") {
        // resolved below, once the properties are known
      } else if (key == "additionalProperties") {
        if (value.is_boolean()) {
          node.additional_allowed = value.get<bool>();
        } else {
          node.additional = compile(value, at, depth + 1);
        }
      } else if (key == "items") {
        ALEM_CHECK(!value.is_array(),
                   "response_format schema: 'items' as a list (tuple) is not supported at " + at);
        node.items = compile(value, at, depth + 1);
      } else if (key == "minItems") {
        node.min_items = count_of(value, "minItems", at);
      } else if (key == "maxItems") {
        node.max_items = count_of(value, "maxItems", at);
      } else if (key == "minLength") {
        node.min_length = count_of(value, "minLength", at);
      } else if (key == "maxLength") {
        node.max_length = count_of(value, "maxLength", at);
      } else if (key == "enum" || key == "const") {
        std::vector<json> values;
        if (key == "const") {
          values.push_back(value);
        } else {
          ALEM_CHECK(value.is_array() && !value.empty(),
                     "response_format schema: 'enum' must be a non-empty list at " + at);
          values.assign(value.begin(), value.end());
        }
        ALEM_CHECK(values.size() <= kMaxLiterals, "response_format schema: more than " +
                                                      std::to_string(kMaxLiterals) +
                                                      " enum values at " + at);
        node.literals.clear();
        for (const json& v : values) {
          node.literals.push_back(v.dump(-1, ' ', false, json::error_handler_t::strict));
        }
      } else {
        ALEM_FAIL("response_format schema: the keyword '" + key + "' (at " + at +
                  ") is not supported; supported: type, properties, required, "
                  "additionalProperties, items, minItems, maxItems, minLength, maxLength, "
                  "pattern, enum, const, anyOf/oneOf (of different types), $ref, allOf (of one)");
      }
    }
    if (!combinator.empty()) {
      ALEM_CHECK(constraining.empty() && !s.contains("required"),
                 "response_format schema: '" + combinator + "' together with '" +
                     (constraining.empty() ? std::string("required") : constraining) +
                     "' is not supported at " + path +
                     " (put the keyword inside each alternative)");
      schema.nodes[index] = std::move(node);
      return index;
    }
    if (!typed && (s.contains("properties") || s.contains("additionalProperties"))) {
      node.types = kObject;
    }
    if (!typed && s.contains("items")) node.types = kArray;
    if (auto it = s.find("required"); it != s.end()) {
      ALEM_CHECK(it->is_array(), "response_format schema: 'required' must be a list at " + path);
      for (const json& name : *it) {
        ALEM_CHECK(name.is_string(), "response_format schema: 'required' lists names at " + path);
        const std::string quoted = name.dump(-1, ' ', false, json::error_handler_t::strict);
        const std::string escaped = quoted.substr(1, quoted.size() - 2);
        bool found = false;
        for (size_t i = 0; i < node.properties.size(); ++i) {
          if (node.properties[i].first == escaped) {
            node.required |= uint64_t{1} << i;
            found = true;
          }
        }
        ALEM_CHECK(found, "response_format schema: required property " + quoted + " at " + path +
                              " is not in 'properties'");
      }
    }
    if (!node.literals.empty()) {
      // Only the literals that have an allowed type stay; none left is an impossible schema.
      std::vector<std::string> kept;
      uint8_t literal_types = 0;
      for (const std::string& lit : node.literals) {
        const json v = json::parse(lit);
        uint8_t bit = v.is_object()           ? kObject
                      : v.is_array()          ? kArray
                      : v.is_string()         ? kString
                      : v.is_boolean()        ? kBoolean
                      : v.is_null()           ? kNull
                      : v.is_number_integer() ? (kInteger | kNumber)
                                              : kNumber;
        if (node.types & bit) {
          kept.push_back(lit);
          literal_types |= bit;
        }
      }
      ALEM_CHECK(!kept.empty(),
                 "response_format schema: no enum/const value has the allowed "
                 "type at " +
                     path);
      node.literals = std::move(kept);
      node.types &= literal_types;  // what the value can start as (anyOf picks by it)
    }
    ALEM_CHECK(node.max_items < 0 || node.max_items >= node.min_items,
               "response_format schema: maxItems < minItems at " + path);
    ALEM_CHECK(node.max_length < 0 || node.max_length >= node.min_length,
               "response_format schema: maxLength < minLength at " + path);
    ALEM_CHECK(node.types != 0, "response_format schema: an empty type list at " + path);
    if (!pattern.empty()) {
      try {
        const RegexDfa search = compile_regex(pattern, RegexMatch::kSearch);
        node.pattern = std::make_shared<const RegexDfa>(
            node.min_length == 0 && node.max_length < 0
                ? search
                : with_length_limits(search, node.min_length, node.max_length));
      } catch (const Error& e) {
        ALEM_FAIL("response_format schema: 'pattern' at " + path + ": " + e.message());
      }
      node.min_length = 0;
      node.max_length = -1;
    }
    schema.nodes[index] = std::move(node);
    return index;
  }

 private:
  // The JSON types a node's value can start as: for literals, their own types.
  uint8_t resolve_types(int32_t index, std::vector<uint8_t>& state) {
    SchemaNode& node = schema.nodes[index];
    if (node.alternatives.empty() || state[index] == 2) return node.types;
    const std::string& at = paths_[index];
    ALEM_CHECK(state[index] != 1,
               "response_format schema: a '$ref' cycle at " + at + " never reaches a value");
    state[index] = 1;
    uint8_t all = 0;
    for (int32_t alt : node.alternatives) {
      const uint8_t t = resolve_types(alt, state);
      ALEM_CHECK((all & t) == 0,
                 "response_format schema: the alternatives at " + at +
                     " share a JSON type; only alternatives of different types (such as a type "
                     "and null) are supported");
      all |= t;
    }
    node.types = all;
    state[index] = 2;
    return all;
  }

  const json& root_;
  std::map<std::string, int32_t> refs_;
  std::map<int32_t, std::string> paths_;
};

}  // namespace

JsonSchema compile_json_schema(const std::string& schema_text) {
  ALEM_CHECK(schema_text.size() <= kMaxSchemaBytes,
             "response_format schema: longer than " + std::to_string(kMaxSchemaBytes) + " bytes");
  json parsed;
  try {
    parsed = json::parse(schema_text);
  } catch (const json::exception&) {
    ALEM_FAIL("response_format schema: not valid JSON");
  }
  Compiler c(parsed);
  c.schema.nodes.emplace_back();  // node 0: any value
  try {
    c.schema.root = c.compile(parsed, "schema", 0, "#");
    c.finish_alternatives();
  } catch (const json::exception& e) {
    ALEM_FAIL(std::string("response_format schema: ") + e.what());
  }
  return std::move(c.schema);
}

std::shared_ptr<const JsonSchema> cached_json_schema(const std::string& schema_text) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<const JsonSchema>> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(schema_text); it != cache.end()) return it->second;
  }
  auto compiled = std::make_shared<const JsonSchema>(compile_json_schema(schema_text));
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 256) cache.clear();  // crude bound; recompiling is cheap
  cache.emplace(schema_text, compiled);
  return compiled;
}

}  // namespace alem::constrained
