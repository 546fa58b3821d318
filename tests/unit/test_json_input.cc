// Outside JSON: nesting is bounded while parsing, errors never quote the input, walks do not
// recurse (core/json_input.h).
#include <gtest/gtest.h>

#include <string>

#include "core/json_input.h"

namespace alem {
namespace {

std::string nested_arrays(size_t depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

TEST(JsonInput, ParsesOrdinaryDocuments) {
  const auto j = parse_json_bounded(R"({"a": [1, 2, {"b": "c"}], "d": 1.5e3})");
  EXPECT_EQ(j["a"][2]["b"], "c");
  EXPECT_DOUBLE_EQ(j["d"].get<double>(), 1500.0);
  EXPECT_EQ(json_depth(j), 3);
}

TEST(JsonInput, AcceptsExactlyTheDepthLimit) {
  EXPECT_NO_THROW(parse_json_bounded(nested_arrays(kMaxJsonDepth)));
  EXPECT_THROW(parse_json_bounded(nested_arrays(kMaxJsonDepth + 1)), JsonInputError);
  EXPECT_NO_THROW(parse_json_bounded(nested_arrays(4), 4));
  EXPECT_THROW(parse_json_bounded(nested_arrays(5), 4), JsonInputError);
}

TEST(JsonInput, RefusesHugeNestingWithItsPosition) {
  const std::string body = R"({"model": "m", "prompt": )" + nested_arrays(110000) + "}";
  try {
    parse_json_bounded(body);
    FAIL() << "accepted 110,000 nested arrays";
  } catch (const JsonInputError& e) {
    EXPECT_NE(std::string(e.what()).find("nesting deeper than 128"), std::string::npos) << e.what();
    // The object is level 1, so the 128th [ (at byte 25 + 127) is level 129.
    EXPECT_EQ(e.byte(), 25u + kMaxJsonDepth - 1);
  }
}

TEST(JsonInput, MixedObjectsCountAsLevels) {
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += (i % 2) ? "[" : "{\"k\":";
  EXPECT_THROW(parse_json_bounded(deep), JsonInputError);
}

TEST(JsonInput, NumberOverflowIsAnInputErrorThatDoesNotQuoteTheNumber) {
  try {
    parse_json_bounded(R"({"temperature": 1e999, "canary": 7314159})");
    FAIL() << "accepted 1e999";
  } catch (const JsonInputError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.find("1e999"), std::string::npos) << what;
    EXPECT_NE(what.find("out of range"), std::string::npos) << what;
  }
}

TEST(JsonInput, SyntaxErrorsDoNotQuoteTheInput) {
  const std::string canary = "SECRETCANARY";
  for (const std::string& text :
       {std::string("{\"p\": ") + canary, std::string("{\"p\": \"") + canary,
        std::string("[tru") + canary + "]", std::string("{\"") + canary + "\" 1}"}) {
    try {
      parse_json_bounded(text);
      FAIL() << "accepted malformed JSON";
    } catch (const JsonInputError& e) {
      EXPECT_EQ(std::string(e.what()).find("SECRET"), std::string::npos) << e.what();
      EXPECT_GE(e.line(), 1u);
    }
  }
}

TEST(JsonInput, WipesEveryStringWithoutRecursion) {
  auto j = parse_json_bounded(R"({"a": ["xx", {"b": "yyy"}], "c": "z"})");
  wipe_json_strings(j);
  EXPECT_EQ(j["a"][0].get<std::string>(), std::string(2, '\0'));
  EXPECT_EQ(j["a"][1]["b"].get<std::string>(), std::string(3, '\0'));
  EXPECT_EQ(j["c"].get<std::string>(), std::string(1, '\0'));

  // A tree deeper than any stack built by hand (not by the parser): the walk must not recurse.
  nlohmann::json deep = nlohmann::json::array();
  nlohmann::json* inner = &deep;
  for (int i = 1; i < 200000; ++i) {
    inner->push_back(nlohmann::json::array());
    inner = &inner->back();
  }
  inner->push_back("leaf");
  wipe_json_strings(deep);
  EXPECT_EQ(json_depth(deep), 200000);
  EXPECT_EQ(inner->back().get<std::string>(), std::string(4, '\0'));
}

}  // namespace
}  // namespace alem
