// The constrained-decoding JSON recognizer against the `jsonschema` package on schemas that use
// anyOf/oneOf, $ref (recursive too), one-schema allOf and pattern: tests/data/
// json_schema_reference.json (made by scripts/reference/make_json_schema_reference.py) lists
// documents with jsonschema's verdict; a document must be accepted as complete exactly when it
// is valid, and every prefix of a valid one must stay alive. Also the refusals these keywords
// bring (overlapping alternatives, $ref cycles, keywords beside a combinator).
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "engine/constrained/json_recognizer.h"
#include "engine/constrained/json_schema.h"

namespace alem::constrained {
namespace {

using nlohmann::json;

json reference() {
  const char* dir = std::getenv("ALEM_TEST_DATA");
  EXPECT_NE(dir, nullptr) << "ALEM_TEST_DATA is not set";
  std::ifstream in(std::string(dir ? dir : ".") + "/json_schema_reference.json");
  EXPECT_TRUE(in.good()) << "tests/data/json_schema_reference.json is missing";
  return json::parse(in);
}

TEST(JsonSchemaReference, CompleteExactlyWhenJsonschemaSaysValid) {
  const json ref = reference();
  int valid = 0, invalid = 0;
  for (const json& c : ref["cases"]) {
    const std::string schema_text = c["schema"].dump();
    const JsonSchema schema = compile_json_schema(schema_text);
    for (const json& entry : c["documents"]) {
      const std::string doc = entry[0];
      const bool expected = entry[1];
      JsonRecognizer r(&schema);
      size_t fed = 0;
      while (fed < doc.size() && r.feed(static_cast<uint8_t>(doc[fed]))) ++fed;
      const bool accepted = fed == doc.size() && r.complete();
      EXPECT_EQ(accepted, expected) << "schema " << schema_text.substr(0, 80) << "...\n  document "
                                    << doc << "\n  refused at byte " << fed;
      if (expected) {
        EXPECT_EQ(fed, doc.size()) << "a prefix of a valid document was refused: " << doc;
        ++valid;
      } else {
        ++invalid;
      }
    }
  }
  EXPECT_GT(valid, 30);
  EXPECT_GT(invalid, 100);
}

TEST(JsonSchemaReference, RefusalsNameTheProblem) {
  const std::vector<std::pair<json, const char*>> refused = {
      {{{"anyOf", {{{"type", "integer"}}, {{"type", "number"}}}}}, "share a JSON type"},
      {{{"anyOf", {{{"type", "string"}}, {{"enum", {"a", "b"}}}}}}, "share a JSON type"},
      {{{"oneOf", {{{"type", "object"}}, {{"type", "object"}}}}}, "share a JSON type"},
      {{{"$defs", {{"a", {{"$ref", "#/$defs/b"}}}, {"b", {{"$ref", "#/$defs/a"}}}}},
        {"$ref", "#/$defs/a"}},
       "cycle"},
      {{{"$ref", "#/$defs/missing"}}, "points at nothing"},
      {{{"$ref", "https://example.com/schema"}}, "only local"},
      {{{"anyOf", {{{"type", "string"}}}}, {"minLength", 2}}, "together with 'minLength'"},
      {{{"anyOf", {{{"type", "string"}}}}, {"$ref", "#"}}, "together"},
      {{{"allOf", {{{"type", "string"}}, {{"maxLength", 2}}}}}, "more than one schema"},
      {{{"type", "string"}, {"pattern", "(a"}}, "'pattern'"},
      {{{"type", "string"}, {"pattern", "^abcdef$"}, {"maxLength", 3}}, "can match nothing"},
  };
  for (const auto& [schema, needle] : refused) {
    try {
      compile_json_schema(schema.dump());
      ADD_FAILURE() << "accepted " << schema.dump();
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(needle), std::string::npos)
          << schema.dump() << ": " << e.message();
    }
  }
}

// '$ref' tokens are JSON pointers (RFC 6901): "~1" stands for '/', "~0" for '~', read left to
// right, so "~00" names the key "~0", not "~".
TEST(JsonSchemaReference, RefsUnescapeJsonPointerTokens) {
  const auto accepts = [](const JsonSchema& s, const std::string& doc) {
    JsonRecognizer r(&s);
    return r.feed(doc) && r.complete();
  };
  const JsonSchema slash = compile_json_schema(
      R"({"$defs":{"a/b":{"type":"integer"},"a":{"type":"string"}},"$ref":"#/$defs/a~1b"})");
  EXPECT_TRUE(accepts(slash, "5"));
  EXPECT_FALSE(accepts(slash, R"("x")"));
  const JsonSchema tilde = compile_json_schema(
      R"({"$defs":{"~0":{"type":"string"},"~":{"type":"integer"}},"$ref":"#/$defs/~00"})");
  EXPECT_TRUE(accepts(tilde, R"("x")"));
  EXPECT_FALSE(accepts(tilde, "5"));
  const JsonSchema both = compile_json_schema(
      R"({"$defs":{"~1":{"type":"boolean"},"/":{"type":"null"}},"$ref":"#/$defs/~01"})");
  EXPECT_TRUE(accepts(both, "true"));
  EXPECT_FALSE(accepts(both, "null"));
}

TEST(JsonSchemaReference, PatternStringsTakeEscapesButNotUnicodeEscapes) {
  const JsonSchema s = compile_json_schema(R"({"type":"string","pattern":"^a\"b\\n$"})");
  JsonRecognizer ok(&s);
  EXPECT_TRUE(ok.feed(R"("a\"b\n")") && ok.complete());
  JsonRecognizer unicode(&s);
  EXPECT_FALSE(unicode.feed(R"("\u0061)"));
  // With length limits folded in: 2 to 3 code points, each a lowercase letter or é.
  const JsonSchema len =
      compile_json_schema(R"({"type":"string","pattern":"^[a-zé]+$","minLength":2,"maxLength":3})");
  for (const auto& [text, expected] :
       std::vector<std::pair<std::string, bool>>{{R"("ab")", true},
                                                 {R"("éé")", true},
                                                 {R"("abé")", true},
                                                 {R"("a")", false},
                                                 {R"("abcd")", false},
                                                 {R"("aB")", false}}) {
    JsonRecognizer r(&len);
    EXPECT_EQ(r.feed(text) && r.complete(), expected) << text;
  }
}

}  // namespace
}  // namespace alem::constrained
