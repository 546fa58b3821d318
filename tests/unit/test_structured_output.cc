// Tests for response_format (engine/constrained/, serve/response_format.*): the incremental
// JSON recognizer against nlohmann's parser on generated and mutated documents (whatever it
// accepts as complete must parse, and every generated document must be accepted), the schema
// subset (each keyword, and refusals that name the keyword), the masked token choice, and the
// protocol fields.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/constrained/json_recognizer.h"
#include "engine/constrained/json_schema.h"
#include "engine/constrained/token_constraint.h"
#include "serve/openai_protocol.h"

namespace alem::constrained {
namespace {

using nlohmann::json;

// Feeds `text` whole: 1 = accepted and complete, 0 = accepted as a prefix only, -1 = refused.
int verdict(const JsonSchema& schema, const std::string& text) {
  JsonRecognizer r(&schema);
  if (!r.feed(text)) return -1;
  return r.complete() ? 1 : 0;
}

JsonSchema schema_of(const json& s) {
  return compile_json_schema(s.dump());
}

TEST(JsonRecognizer, AcceptsJsonObjects) {
  const JsonSchema object = schema_of({{"type", "object"}});
  for (const char* text :
       {"{}", R"({"a":1})", R"({"a": [1, -2.5e-3, 0, 1E+9, true, false, null, "x\n\u00e9\"\\"]})",
        "{\n  \"a\": {\"b\": {}},\n  \"c\": []\n}", R"({"k":"caf\u00e9 €𝄞"})",
        "{\"\xc3\xa9\": \"\xe2\x82\xac\"}", R"({"a":{"a":{"a":{"a":[[[[]]]]}}}})"}) {
    EXPECT_EQ(verdict(object, text), 1) << text;
  }
}

TEST(JsonRecognizer, RefusesInvalidAndUnfinished) {
  const JsonSchema object = schema_of({{"type", "object"}});
  for (const char* text : {R"({"a":})",
                           "{,}",
                           "[1]",
                           R"({"a":01})",
                           R"({"a":1,})",
                           R"({"a" 1})",
                           "{} ",
                           "{}{}",
                           "\"x\"",
                           R"({"a":"\u12g4"})",
                           R"({"a":1.})",
                           R"({"a":-})",
                           R"({"a":.5})",
                           R"({"a":"\x"})",
                           "{\"a\":\"\x01\"}",
                           "{\"a\":\"\xc3\x28\"}",
                           "{\"a\":\"\xed\xa0\x80\"}",
                           "{\n\n\"a\":1}",
                           "{\r\n\"a\":1}",
                           R"({'a':1})",
                           R"({"a":True})",
                           R"({"a":1]})"}) {
    EXPECT_EQ(verdict(object, text), -1) << text;
  }
  for (const char* text : {"{", R"({"a":tru)", R"({"a":"x)", R"({"a":[1,)", "", "  "}) {
    EXPECT_EQ(verdict(object, text), 0) << text;
  }
}

TEST(JsonRecognizer, LimitsWhitespaceRuns) {
  const JsonSchema object = schema_of({{"type", "object"}});
  EXPECT_EQ(verdict(object, "{\n" + std::string(16, ' ') + "\"a\": 1}"), 1);
  EXPECT_EQ(verdict(object, "{\n" + std::string(17, ' ') + "\"a\": 1}"), -1);
  EXPECT_EQ(verdict(object, "{\"a\":" + std::string(8, ' ') + "1\n}"), 1);
  EXPECT_EQ(verdict(object, "{\"a\":\"" + std::string(100, ' ') + "\"}"), 1);  // inside a string
}

TEST(JsonRecognizer, NumbersAndTopLevelValues) {
  const JsonSchema any = schema_of(json::object());
  EXPECT_EQ(verdict(any, "12"), 1);  // a number may end at the end of the output...
  JsonRecognizer r(&any);
  ASSERT_TRUE(r.feed("12"));
  EXPECT_TRUE(r.feed("3"));  // ... or go on
  EXPECT_EQ(verdict(any, std::string(16, '9')), 1);
  EXPECT_EQ(verdict(any, std::string(17, '9')), -1);  // digit runs are bounded
  EXPECT_EQ(verdict(any, "\"s\""), 1);
  EXPECT_EQ(verdict(any, "null"), 1);
  EXPECT_EQ(verdict(any, "-0.5e-10"), 1);
  const JsonSchema integer = schema_of({{"type", "integer"}});
  EXPECT_EQ(verdict(integer, "42"), 1);
  EXPECT_EQ(verdict(integer, "4.2"), -1);
  EXPECT_EQ(verdict(integer, "4e2"), -1);
}

// Random JSON values, serialised compactly or indented: all accepted by the "any" schema.
json random_value(std::mt19937& gen, int depth) {
  std::uniform_int_distribution<int> kind(0, depth > 3 ? 4 : 6);
  switch (kind(gen)) {
    case 0:
      return nullptr;
    case 1:
      return gen() % 2 == 0;
    case 2:
      return static_cast<int64_t>(gen() % 2000000) - 1000000;
    case 3:
      return std::ldexp(static_cast<double>(gen() % 100000) - 50000, -int(gen() % 12));
    case 4: {
      std::string s;
      const char* pieces[] = {"a",
                              "Z",
                              " ",
                              "\"",
                              "\\",
                              "\n",
                              "\t",
                              "/",
                              "\xc3\xa9",
                              "\xe2\x82\xac",
                              "\xf0\x9d\x84\x9e",
                              "\x01",
                              "x y"};
      for (int i = gen() % 6; i > 0; --i) s += pieces[gen() % 13];
      return s;
    }
    case 5: {
      json a = json::array();
      for (int i = gen() % 4; i > 0; --i) a.push_back(random_value(gen, depth + 1));
      return a;
    }
    default: {
      json o = json::object();
      for (int i = gen() % 4; i > 0; --i)
        o["k" + std::to_string(gen() % 10)] = random_value(gen, depth + 1);
      return o;
    }
  }
}

TEST(JsonRecognizer, AgreesWithAParserOnGeneratedAndMutatedDocuments) {
  const JsonSchema any = schema_of(json::object());
  std::mt19937 gen(7);
  int accepted_mutants = 0;
  for (int i = 0; i < 3000; ++i) {
    const json value = random_value(gen, 0);
    const std::string text = i % 2 ? value.dump() : value.dump(2);
    ASSERT_EQ(verdict(any, text), 1) << text;
    // Mutate one byte (replace, insert or delete): whatever is still accepted as complete must
    // parse (soundness); prefixes of valid documents are never refused (checked by ASSERT above).
    std::string mutant = text;
    const size_t at = gen() % (mutant.size() + 1);
    const char alphabet[] = "{}[]:,\"\\ \n0123456789.-+eEtrufalsn";
    const char c = alphabet[gen() % (sizeof(alphabet) - 1)];
    switch (gen() % 3) {
      case 0:
        if (at < mutant.size()) mutant[at] = c;
        break;
      case 1:
        mutant.insert(mutant.begin() + at, c);
        break;
      default:
        if (at < mutant.size()) mutant.erase(at, 1);
    }
    if (verdict(any, mutant) == 1) {
      ++accepted_mutants;
      EXPECT_TRUE(json::accept(mutant)) << mutant;
    }
  }
  EXPECT_GT(accepted_mutants, 100);
}

TEST(JsonSchemaSubset, StrictObject) {
  const JsonSchema s = schema_of(
      {{"type", "object"},
       {"properties",
        {{"name", {{"type", "string"}, {"minLength", 1}}},
         {"age", {{"type", "integer"}}},
         {"tags", {{"type", "array"}, {"items", {{"type", "string"}}}, {"maxItems", 2}}}}},
       {"required", {"name", "age"}},
       {"additionalProperties", false}});
  EXPECT_EQ(verdict(s, R"({"name":"Bob","age":3,"tags":["a","b"]})"), 1);
  EXPECT_EQ(verdict(s, R"({ "age": 3, "name": "x" })"), 1);
  EXPECT_EQ(verdict(s, R"({"name":"x"})"), -1);                  // age is required
  EXPECT_EQ(verdict(s, R"({"name":"x","age":1,"zzz":1})"), -1);  // no other keys
  EXPECT_EQ(verdict(s, R"({"nam)"), 0);
  EXPECT_EQ(verdict(s, R"({"namex":)"), -1);
  EXPECT_EQ(verdict(s, R"({"name":"x","age":1.5})"), -1);
  EXPECT_EQ(verdict(s, R"({"name":"x","age":1,"tags":["a","b","c"]})"), -1);
  EXPECT_EQ(verdict(s, R"({"name":"x","age":1,"tags":[1]})"), -1);
  EXPECT_EQ(verdict(s, R"({"name":"a","name":"b","age":1})"), -1);    // no duplicate keys
  EXPECT_EQ(verdict(s, R"({"name":"","age":1})"), -1);                // minLength
  EXPECT_EQ(verdict(s, R"({"name":"x","age":1,"tags":["a"],)"), -1);  // nothing left to add
}

TEST(JsonSchemaSubset, OpenObjectsNestingAndArrays) {
  const JsonSchema s =
      schema_of({{"type", "object"},
                 {"properties",
                  {{"p", {{"type", "object"}, {"properties", {{"q", {{"type", "boolean"}}}}}}}}},
                 {"additionalProperties", {{"type", "number"}}}});
  EXPECT_EQ(verdict(s, R"({"p":{"q":true},"other":2.5})"), 1);
  EXPECT_EQ(verdict(s, R"({"other":"x"})"), -1);
  EXPECT_EQ(verdict(s, R"({"p":{"q":1}})"), -1);
  EXPECT_EQ(verdict(s, R"({"p":{"r":[1,{}]}})"), 1);  // p's extra keys: any value
  const JsonSchema a =
      schema_of({{"type", "array"}, {"minItems", 2}, {"items", {{"type", "null"}}}});
  EXPECT_EQ(verdict(a, "[null,null]"), 1);
  EXPECT_EQ(verdict(a, "[null]"), -1);
  EXPECT_EQ(verdict(a, "[]"), -1);
  const JsonSchema nullable = schema_of({{"type", {"string", "null"}}, {"maxLength", 3}});
  EXPECT_EQ(verdict(nullable, "null"), 1);
  EXPECT_EQ(verdict(nullable, R"("a\u00e9c")"), 1);
  EXPECT_EQ(verdict(nullable, R"("abcd")"), -1);
}

TEST(JsonSchemaSubset, EnumAndConst) {
  const JsonSchema colors = schema_of({{"enum", {"red", "green", "blue"}}});
  EXPECT_EQ(verdict(colors, R"("red")"), 1);
  EXPECT_EQ(verdict(colors, R"("re)"), 0);
  EXPECT_EQ(verdict(colors, R"("yellow")"), -1);
  EXPECT_EQ(verdict(colors, R"( "blue")"), 1);
  const JsonSchema numbers = schema_of({{"enum", {1, 12, nullptr}}});
  EXPECT_EQ(verdict(numbers, "1"), 1);
  EXPECT_EQ(verdict(numbers, "12"), 1);
  EXPECT_EQ(verdict(numbers, "13"), -1);
  const JsonSchema in_object =
      schema_of({{"type", "object"},
                 {"properties", {{"c", {{"const", "x"}}}, {"n", {{"enum", {1, 12}}}}}},
                 {"required", {"c", "n"}}});
  EXPECT_EQ(verdict(in_object, R"({"c":"x","n":1})"), 1);
  EXPECT_EQ(verdict(in_object, R"({"c":"x","n":12 })"), 1);
  EXPECT_EQ(verdict(in_object, R"({"c":"y","n":1})"), -1);
  EXPECT_THROW(schema_of({{"type", "string"}, {"enum", {1, 2}}}), Error);
}

TEST(JsonSchemaSubset, RefusesWhatItCannotEnforceByName) {
  for (const char* keyword : {"$ref", "anyOf", "oneOf", "allOf", "not", "format", "minimum",
                              "maximum", "prefixItems", "patternProperties", "uniqueItems", "if"}) {
    const json s = {{"type", "object"},
                    {"properties", {{"a", {{"type", "string"}, {keyword, "x"}}}}}};
    try {
      compile_json_schema(s.dump());
      ADD_FAILURE() << keyword << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(std::string("'") + keyword + "'"), std::string::npos)
          << e.message();
    }
  }
  EXPECT_THROW(compile_json_schema(R"({"type":"strin"})"), Error);
  EXPECT_THROW(compile_json_schema(R"({"type":"object","required":["a"],"properties":{}})"), Error);
  EXPECT_THROW(compile_json_schema("{"), Error);
  // Annotations are accepted and ignored.
  EXPECT_NO_THROW(compile_json_schema(
      R"({"title":"T","description":"d","$schema":"x","type":"object","properties":{"a":{"type":"string","description":"y","default":"z"}}})"));
  EXPECT_EQ(cached_json_schema(R"({"type":"object"})").get(),
            cached_json_schema(R"({"type":"object"})").get());
}

// A toy vocabulary: token id -> bytes; id 0 is the end of sequence (a control token).
std::shared_ptr<const TokenTable> toy_table(const std::vector<std::string>& tokens) {
  auto t = std::make_shared<TokenTable>();
  t->bytes = tokens;
  t->special.assign(tokens.size(), 0);
  t->special[0] = 1;
  t->bytes[0].clear();
  return t;
}

CandidateSet all_candidates(const std::vector<float>& logits) {
  SamplingParams p;
  return local_candidates(logits.data(), 0, static_cast<int64_t>(logits.size()), p);
}

TEST(TokenConstraint, GreedyTakesTheBestValidTokenAndEndsOnlyWhenComplete) {
  const std::vector<std::string> vocab = {"</s>", "Sure", "{", "}", "{\"", "a", "\":", "1", " "};
  auto table = toy_table(vocab);
  SamplingParams params;
  params.temperature = 0;
  params.json_schema = R"({"type":"object"})";
  RowConstraint c(params, table, {0});
  Rng rng(1);
  // "Sure" is the model's favourite, then the end: neither may start a JSON object.
  std::vector<float> logits = {9, 10, 1, 2, 5, 0, 0, 0, 0};
  EXPECT_EQ(c.choose(all_candidates(logits), params, rng), 4);  // {"
  c.advance(4);
  EXPECT_FALSE(c.allowed(0));
  EXPECT_TRUE(c.allowed(1));  // "Sure" is fine inside a key
  c.advance(5);
  c.advance(6);
  c.advance(7);
  EXPECT_EQ(c.choose(all_candidates(logits), params, rng), 3);  // }
  c.advance(3);
  EXPECT_TRUE(c.state().complete());
  EXPECT_EQ(c.choose(all_candidates(logits), params, rng), 0);  // only the end is left
}

TEST(TokenConstraint, SamplingDrawsOnlyValidTokens) {
  const std::vector<std::string> vocab = {"</s>", "x", "[", "[1", "[2", "]", "{"};
  auto table = toy_table(vocab);
  SamplingParams params;
  params.temperature = 0.8f;
  params.json_schema = R"({"type":"array","items":{"type":"integer"}})";
  std::vector<float> logits = {3, 4, 1, 1, 1, 0, 2};
  std::vector<int> seen(vocab.size(), 0);
  for (uint64_t seed = 0; seed < 300; ++seed) {
    RowConstraint c(params, table, {0});
    Rng rng(seed);
    ++seen[c.choose(all_candidates(logits), params, rng)];
    EXPECT_EQ(rng.draws(), 1u);
  }
  EXPECT_EQ(seen[0] + seen[1] + seen[5] + seen[6], 0);
  EXPECT_GT(seen[2], 0);
  EXPECT_GT(seen[3], 0);
  EXPECT_GT(seen[4], 0);
}

}  // namespace
}  // namespace alem::constrained

namespace alem::serve {
namespace {

using nlohmann::json;

ApiRequest chat_with(const json& format, bool ignore_eos = false) {
  json body = {{"model", "m"},
               {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
               {"response_format", format}};
  if (ignore_eos) body["ignore_eos"] = true;
  return parse_request(body.dump(), Endpoint::kChatCompletions, "m");
}

TEST(ResponseFormat, Parsed) {
  EXPECT_EQ(chat_with({{"type", "text"}}).sampling.json_schema, "");
  EXPECT_EQ(chat_with({{"type", "json_object"}}).sampling.json_schema, R"({"type":"object"})");
  const json schema = {{"type", "object"}, {"properties", {{"a", {{"type", "string"}}}}}};
  EXPECT_EQ(chat_with({{"type", "json_schema"},
                       {"json_schema", {{"name", "x"}, {"schema", schema}, {"strict", true}}}})
                .sampling.json_schema,
            schema.dump());
  const json completion = {
      {"model", "m"}, {"prompt", "x"}, {"response_format", {{"type", "json_object"}}}};
  EXPECT_EQ(parse_request(completion.dump(), Endpoint::kCompletions, "m").sampling.json_schema,
            R"({"type":"object"})");
}

TEST(ResponseFormat, RefusalsAre400sNamingTheProblem) {
  auto error = [](const json& format, bool ignore_eos = false) {
    try {
      chat_with(format, ignore_eos);
    } catch (const ApiException& e) {
      return e.error();
    }
    return ApiError{};
  };
  ApiError e = error({{"type", "json_schema"},
                      {"json_schema", {{"name", "x"}, {"schema", {{"anyOf", json::array()}}}}}});
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "response_format");
  EXPECT_NE(e.message.find("'anyOf'"), std::string::npos) << e.message;
  EXPECT_EQ(error({{"type", "grammar"}}).param, "response_format");
  EXPECT_EQ(error({{"type", "json_schema"}}).param, "response_format");
  EXPECT_EQ(error({{"type", "json_object"}}, true).param, "ignore_eos");
}

}  // namespace
}  // namespace alem::serve
