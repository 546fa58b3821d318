// Tests for logprobs, echo and stop_reason: the vocab-sharded logprob parts and their combination
// (engine/logprobs.h) against a plain double log_softmax, the request fields (logprobs,
// top_logprobs, echo) with OpenAI's limits, the response shapes (chat content[] entries, the
// legacy completions object), which stop string matched (vLLM's stop_reason), and /tokenize and
// /detokenize over a byte-level tokenizer.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "byte_level_model.h"
#include "core/error.h"
#include "engine/logprobs.h"
#include "model/tokenizer.h"
#include "serve/logprobs_json.h"
#include "serve/openai_protocol.h"
#include "serve/stop_strings.h"
#include "serve/tokenize_api.h"

namespace alem {
namespace {

using nlohmann::json;

std::vector<double> reference_log_softmax(const std::vector<float>& row) {
  double max = -INFINITY;
  for (float x : row) max = std::max(max, double(x));
  double sum = 0;
  for (float x : row) sum += std::exp(double(x) - max);
  std::vector<double> out;
  for (float x : row) out.push_back(double(x) - max - std::log(sum));
  return out;
}

TEST(Logprobs, ShardedPartsEqualTheWholeRow) {
  std::mt19937 gen(3);
  std::normal_distribution<float> dist(0.f, 4.f);
  std::vector<float> row(1000);
  for (float& x : row) x = dist(gen);
  row[17] = row[500] = 30.f;  // a tie: the lower id ranks first
  row[999] = -INFINITY;       // a token the model rules out
  const std::vector<double> ref = reference_log_softmax(row);
  for (int32_t chosen : {17, 500, 3, 998}) {
    const TokenLogprobs whole =
        combine_logprob_parts({logprob_part(row.data(), 0, 1000, 20, chosen)}, 20);
    // Three uneven slices, gathered out of order and through the byte format.
    std::vector<uint8_t> bytes;
    for (auto [begin, n] :
         std::vector<std::pair<int64_t, int64_t>>{{600, 400}, {0, 333}, {333, 267}}) {
      serialize_logprob_part(bytes, logprob_part(row.data() + begin, begin, n, 20, chosen));
    }
    std::vector<LogprobPart> parts;
    size_t pos = 0;
    while (pos < bytes.size())
      parts.push_back(deserialize_logprob_part(bytes.data(), bytes.size(), pos));
    const TokenLogprobs sharded = combine_logprob_parts(parts, 20);
    for (const TokenLogprobs* lp : {&whole, &sharded}) {
      EXPECT_NEAR(lp->logprob, ref[chosen], 1e-6);
      ASSERT_EQ(lp->top.size(), 20u);
      EXPECT_EQ(lp->top[0].token_id, 17);
      EXPECT_EQ(lp->top[1].token_id, 500);
      double mass = 0;
      for (size_t k = 0; k < lp->top.size(); ++k) {
        EXPECT_NEAR(lp->top[k].logprob, ref[lp->top[k].token_id], 1e-6);
        EXPECT_LE(lp->top[k].logprob, 0.f);
        if (k > 0) {
          EXPECT_LE(lp->top[k].logprob, lp->top[k - 1].logprob);
        }
        mass += std::exp(double(lp->top[k].logprob));
      }
      EXPECT_LE(mass, 1.0 + 1e-6);
    }
    EXPECT_EQ(whole.logprob, sharded.logprob);
  }
  // top 0: only the chosen token's logprob.
  EXPECT_TRUE(combine_logprob_parts({logprob_part(row.data(), 0, 1000, 0, 5)}, 0).top.empty());
  // No part holds the chosen token: an error, never a made-up number.
  EXPECT_THROW(combine_logprob_parts({logprob_part(row.data(), 0, 10, 2, 50)}, 2), Error);
  std::vector<uint8_t> truncated;
  serialize_logprob_part(truncated, logprob_part(row.data(), 0, 10, 2, 5));
  size_t pos = 0;
  EXPECT_THROW(deserialize_logprob_part(truncated.data(), truncated.size() - 1, pos), Error);
}

}  // namespace

namespace serve {
namespace {

const std::string kModel = "SmolLM2-135M-Instruct";

ApiError error_of(const json& body, Endpoint endpoint) {
  try {
    parse_request(body.dump(), endpoint, kModel);
  } catch (const ApiException& e) {
    return e.error();
  }
  ADD_FAILURE() << "expected an error for " << body.dump();
  return {};
}

TEST(LogprobsFields, CompletionsTakeAnIntegerUpTo20) {
  json body = {{"model", kModel}, {"prompt", "x"}};
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kCompletions, kModel).sampling.logprobs, -1);
  body["logprobs"] = 0;
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kCompletions, kModel).sampling.logprobs, 0);
  body["logprobs"] = 20;
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kCompletions, kModel).sampling.logprobs, 20);
  for (json bad : {json(21), json(-1), json("5"), json(true)}) {
    body["logprobs"] = bad;
    const ApiError e = error_of(body, Endpoint::kCompletions);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, "logprobs") << bad.dump();
  }
}

TEST(LogprobsFields, ChatTakesABooleanAndTopLogprobs) {
  json body = {{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  body["logprobs"] = true;
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kChatCompletions, kModel).sampling.logprobs, 0);
  body["top_logprobs"] = 3;
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kChatCompletions, kModel).sampling.logprobs, 3);
  body["top_logprobs"] = 21;
  EXPECT_EQ(error_of(body, Endpoint::kChatCompletions).param, "top_logprobs");
  body["logprobs"] = false;
  body["top_logprobs"] = 2;  // top_logprobs without logprobs: refused, as OpenAI does
  EXPECT_EQ(error_of(body, Endpoint::kChatCompletions).param, "top_logprobs");
  body["top_logprobs"] = 0;  // a no-op: passes
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kChatCompletions, kModel).sampling.logprobs, -1);
  body.erase("top_logprobs");
  EXPECT_EQ(parse_request(body.dump(), Endpoint::kChatCompletions, kModel).sampling.logprobs, -1);
  body["echo"] = true;  // chat has no echo here
  EXPECT_EQ(error_of(body, Endpoint::kChatCompletions).param, "echo");
}

TEST(LogprobsFields, EchoOnCompletionsButNotWithLogprobs) {
  json body = {{"model", kModel}, {"prompt", "x"}, {"echo", true}};
  EXPECT_TRUE(parse_request(body.dump(), Endpoint::kCompletions, kModel).echo);
  body["logprobs"] = 2;
  const ApiError e = error_of(body, Endpoint::kCompletions);
  EXPECT_EQ(e.param, "echo");
  EXPECT_NE(e.message.find("'echo'"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("'logprobs'"), std::string::npos) << e.message;
}

TEST(LogprobsFormat, ChoicesCarryLogprobsAndStopReason) {
  ChoiceResult c{0, "hi", FinishReason::kStop};
  c.logprobs = json{{"content", json::array()}};
  c.stop_reason = "###";
  json r = completion_response(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel, {c}, {});
  EXPECT_TRUE(r["choices"][0]["logprobs"]["content"].is_array());
  EXPECT_EQ(r["choices"][0]["stop_reason"], "###");
  json chunk = stream_chunk(Endpoint::kCompletions, "cmpl-1", 1, kModel, 0, "x", false,
                            FinishReason::kStop, false, "", json{{"tokens", {"x"}}}, 42);
  EXPECT_EQ(chunk["choices"][0]["logprobs"]["tokens"][0], "x");
  EXPECT_EQ(chunk["choices"][0]["stop_reason"], 42);
  json mid = stream_chunk(Endpoint::kCompletions, "cmpl-1", 1, kModel, 0, "x", false,
                          FinishReason::kNone, false);
  EXPECT_TRUE(mid["choices"][0]["logprobs"].is_null());
  EXPECT_FALSE(mid["choices"][0].contains("stop_reason"));
}

struct ByteModel : ByteLevelModel {
  ByteModel() : ByteLevelModel("org/tiny") {}
};

TEST(LogprobsFormat, ChatAndLegacyShapes) {
  ByteModel m;
  const std::vector<TokenLogprobEntry> entries = {
      {'h', -0.5f, {{'h', -0.5f}, {'j', -1.5f}}},
      {0xC3, -0.25f, {{0xC3, -0.25f}, {'i', -2.f}}},  // half of a UTF-8 character
      {0xA9, -INFINITY, {}}};
  const json chat = chat_logprobs_json(*m.tokenizer, entries, 0, 3);
  ASSERT_EQ(chat["content"].size(), 3u);
  EXPECT_EQ(chat["content"][0]["token"], "h");
  EXPECT_EQ(chat["content"][0]["logprob"], -0.5f);
  EXPECT_EQ(chat["content"][0]["bytes"], json({104}));
  EXPECT_EQ(chat["content"][0]["top_logprobs"][1]["token"], "j");
  EXPECT_EQ(chat["content"][1]["bytes"], json({0xC3}));  // exact, whatever the text shows
  EXPECT_EQ(chat["content"][2]["logprob"], -9999.0);     // -inf is not JSON
  EXPECT_NE(dump_json(chat).find("\"top_logprobs\""), std::string::npos);

  int64_t offset = 0;
  const json first = completion_logprobs_json(*m.tokenizer, entries, 0, 1, offset);
  const json rest = completion_logprobs_json(*m.tokenizer, entries, 1, 3, offset);
  EXPECT_EQ(first["tokens"], json({"h"}));
  EXPECT_EQ(first["token_logprobs"], json({-0.5f}));
  EXPECT_EQ(first["top_logprobs"][0].size(), 2u);  // h and j; the chosen h is among them
  EXPECT_EQ(first["text_offset"], json({0}));
  EXPECT_EQ(rest["text_offset"], json({1, 2}));   // continues across streamed chunks
  EXPECT_EQ(rest["top_logprobs"][1].size(), 1u);  // no alternatives: the chosen token alone
  EXPECT_EQ(offset, 3);
}

TEST(TokenizeApi, RoundTripAndErrors) {
  ByteModel m;
  const json t = tokenize_response(R"({"prompt": "hi!"})", m.served, 1024);
  EXPECT_EQ(t["tokens"], json({104, 105, 33}));
  EXPECT_EQ(t["count"], 3);
  EXPECT_EQ(t["max_model_len"], 1024);
  EXPECT_EQ(tokenize_response(R"({"model": "tiny", "prompt": "a"})", m.served, 8)["count"], 1);
  const json d = detokenize_response(R"({"model": "org/tiny", "tokens": [104, 105]})", m.served);
  EXPECT_EQ(d["prompt"], "hi");
  auto status_of = [&](const std::string& body, bool tokenize) {
    try {
      tokenize ? tokenize_response(body, m.served, 8) : detokenize_response(body, m.served);
    } catch (const ApiException& e) {
      return e.error().status;
    }
    return 200;
  };
  EXPECT_EQ(status_of(R"({"model": "other", "prompt": "a"})", true), 404);
  EXPECT_EQ(status_of(R"({"prompt": 5})", true), 400);
  EXPECT_EQ(status_of(R"({})", true), 400);
  EXPECT_EQ(status_of(R"([1])", true), 400);
  EXPECT_EQ(status_of(R"({"tokens": [256]})", false), 400);
  EXPECT_EQ(status_of(R"({"tokens": [-1]})", false), 400);
  EXPECT_EQ(status_of(R"({"tokens": "x"})", false), 400);
}

TEST(StopReason, TheMatchedStopStringIsKnown) {
  StopStringFilter filter({"END", "ab"}, false);
  EXPECT_EQ(filter.matched_index(), -1);
  EXPECT_EQ(filter.push("xxa"), "x");
  EXPECT_EQ(filter.push("b yy"), "x");  // "xx" came before "ab"
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(filter.matched_index(), 1);
}

}  // namespace
}  // namespace serve
}  // namespace alem
