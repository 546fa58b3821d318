// Tests for the OpenAI wire format (src/serve/openai_protocol.h), the stop-string filter and the
// Prometheus exposition: what a client and a COCOON worker rely on, field by field. Expected
// shapes are written out here from the OpenAI API reference and vLLM's behaviour, not derived
// from the code under test.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "serve/metrics.h"
#include "serve/openai_protocol.h"
#include "serve/serve_config.h"
#include "serve/stop_strings.h"

namespace alem::serve {
namespace {

using nlohmann::json;

const std::string kModel = "SmolLM2-135M-Instruct";

ApiRequest parse_completion(const json& body) {
  return parse_request(body.dump(), Endpoint::kCompletions, kModel);
}
ApiRequest parse_chat(const json& body) {
  return parse_request(body.dump(), Endpoint::kChatCompletions, kModel);
}

// The ApiError a body produces (fails the test when it parses).
ApiError error_of(const std::string& body, Endpoint endpoint = Endpoint::kCompletions) {
  try {
    parse_request(body, endpoint, kModel);
  } catch (const ApiException& e) {
    return e.error();
  }
  ADD_FAILURE() << "expected an error for " << body;
  return {};
}
ApiError error_of(const json& body, Endpoint endpoint = Endpoint::kCompletions) {
  return error_of(body.dump(), endpoint);
}

json chat_body() {
  return {{"model", kModel}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
}

TEST(OpenAiParse, CompletionDefaults) {
  ApiRequest r = parse_completion({{"model", kModel}, {"prompt", "Once upon"}});
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "Once upon");
  EXPECT_FALSE(r.prompts[0].is_tokens);
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_FALSE(r.sampling.seed.has_value());
  EXPECT_TRUE(r.stop.empty());
  EXPECT_TRUE(r.skip_special_tokens);
}

TEST(OpenAiParse, CompletionAllFields) {
  ApiRequest r = parse_completion({{"model", kModel},
                                   {"prompt", "x"},
                                   {"max_tokens", 7},
                                   {"temperature", 0},
                                   {"top_p", 0.5},
                                   {"top_k", 40},
                                   {"min_p", 0.1},
                                   {"presence_penalty", 0.5},
                                   {"frequency_penalty", -0.5},
                                   {"repetition_penalty", 1.2},
                                   {"seed", 1234},
                                   {"stop", {"\n\n", "END"}},
                                   {"n", 3},
                                   {"stream", true},
                                   {"stream_options", {{"include_usage", true}}},
                                   {"ignore_eos", true},
                                   {"user", "alice"},
                                   {"stop_token_ids", {2, 3}},
                                   {"some_unknown_key", {{"nested", 1}}}});
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.sampling.max_tokens, 7);
  EXPECT_TRUE(r.sampling.greedy());
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -0.5f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.2f);
  EXPECT_EQ(*r.sampling.seed, 1234u);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.sampling.ignore_eos);
  EXPECT_EQ(r.user, "alice");
  EXPECT_EQ(r.sampling.stop_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(r.total_choices(), 3);
}

TEST(OpenAiParse, NullMeansAbsent) {
  ApiRequest r = parse_completion({{"model", kModel},
                                   {"prompt", "x"},
                                   {"max_tokens", nullptr},
                                   {"stop", nullptr},
                                   {"seed", nullptr},
                                   {"temperature", nullptr},
                                   {"stream_options", nullptr}});
  EXPECT_FALSE(r.max_tokens.has_value());
  EXPECT_TRUE(r.stop.empty());
  EXPECT_FLOAT_EQ(r.sampling.temperature, 1.0f);
}

TEST(OpenAiParse, PromptForms) {
  ApiRequest ids = parse_completion({{"model", kModel}, {"prompt", {1, 2, 3}}});
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_TRUE(ids.prompts[0].is_tokens);
  EXPECT_EQ(ids.prompts[0].token_ids, (std::vector<int32_t>{1, 2, 3}));

  ApiRequest batch = parse_completion({{"model", kModel}, {"prompt", {"a", "b"}}, {"n", 2}});
  ASSERT_EQ(batch.prompts.size(), 2u);
  EXPECT_EQ(batch.prompts[1].text, "b");
  EXPECT_EQ(batch.total_choices(), 4);

  ApiRequest id_batch = parse_completion({{"model", kModel}, {"prompt", {{1, 2}, {3}}}});
  ASSERT_EQ(id_batch.prompts.size(), 2u);
  EXPECT_EQ(id_batch.prompts[1].token_ids, (std::vector<int32_t>{3}));

  EXPECT_EQ(error_of(json{{"model", kModel}, {"prompt", {"a", 1}}}).param, "prompt[1]");
  EXPECT_EQ(error_of(json{{"model", kModel}, {"prompt", json::array()}}).status, 400);
  EXPECT_EQ(error_of(json{{"model", kModel}, {"prompt", {1, -5}}}).status, 400);
  EXPECT_EQ(error_of(json{{"model", kModel}, {"prompt", 5}}).param, "prompt");
  EXPECT_EQ(error_of(json{{"model", kModel}}).param, "prompt");
  json too_many = {{"model", kModel}, {"prompt", std::vector<std::string>(17, "a")}};
  EXPECT_NE(error_of(too_many).message.find("at most 16"), std::string::npos);
}

TEST(OpenAiParse, ChatMessages) {
  json body = chat_body();
  body["messages"] = {
      {{"role", "system"}, {"content", "Be brief."}},
      {{"role", "developer"}, {"content", "Really."}},
      {{"role", "user"},
       {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}},
      {{"role", "assistant"}, {"content", nullptr}, {"name", "bot"}},
      {{"role", "tool"}, {"content", "42"}, {"tool_call_id", "x"}}};
  body["max_completion_tokens"] = 9;
  body["max_tokens"] = 100;  // max_completion_tokens wins
  ApiRequest r = parse_chat(body);
  ASSERT_EQ(r.messages.size(), 5u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[1].role, "system");
  EXPECT_EQ(r.messages[2].content, "a\nb");
  EXPECT_EQ(r.messages[3].content, "");
  EXPECT_EQ(r.messages[4].role, "tool");
  EXPECT_EQ(*r.max_tokens, 9);
  EXPECT_TRUE(r.add_generation_prompt);
  EXPECT_EQ(r.total_choices(), 1);
}

TEST(OpenAiParse, ChatMessageErrors) {
  json bad_role = chat_body();
  bad_role["messages"][0]["role"] = "wizard";
  EXPECT_EQ(error_of(bad_role, Endpoint::kChatCompletions).param, "messages[0].role");
  json image = chat_body();
  image["messages"][0]["content"] = {{{"type", "image_url"}, {"image_url", {{"url", "x"}}}}};
  EXPECT_EQ(error_of(image, Endpoint::kChatCompletions).param, "messages[0].content[0].type");
  json no_content = chat_body();
  no_content["messages"][0].erase("content");
  EXPECT_EQ(error_of(no_content, Endpoint::kChatCompletions).param, "messages[0].content");
  json number_content = chat_body();
  number_content["messages"][0]["content"] = 5;
  EXPECT_EQ(error_of(number_content, Endpoint::kChatCompletions).param, "messages[0].content");
  json empty = chat_body();
  empty["messages"] = json::array();
  EXPECT_EQ(error_of(empty, Endpoint::kChatCompletions).param, "messages");
  json not_array = chat_body();
  not_array["messages"] = "hi";
  EXPECT_EQ(error_of(not_array, Endpoint::kChatCompletions).param, "messages");
  json missing = {{"model", kModel}};
  EXPECT_EQ(error_of(missing, Endpoint::kChatCompletions).param, "messages");
}

TEST(OpenAiParse, MalformedJsonNamesPosition) {
  ApiError e = error_of(std::string("{\"model\": \"m\",\n \"prompt\": tru}"));
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("malformed JSON at line 2"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("column"), std::string::npos);
  EXPECT_EQ(e.message.find("last read"), std::string::npos) << "must not echo the body";
  EXPECT_EQ(error_of(std::string("")).status, 400);
  EXPECT_EQ(error_of(std::string("[1,2]")).param, "request body");
  EXPECT_EQ(error_of(std::string("{\"model\": ")).status, 400);
}

TEST(OpenAiParse, WrongTypesNameTheField) {
  struct Case {
    const char* field;
    json value;
  };
  const std::vector<Case> cases = {
      {"max_tokens", "10"},
      {"max_tokens", 1.5},
      {"temperature", "hot"},
      {"top_p", true},
      {"n", "2"},
      {"stream", "yes"},
      {"seed", "1"},
      {"stop", 5},
      {"user", 7},
      {"top_k", 1.5},
      {"stream_options", "x"},
      {"presence_penalty", json::array()},
      {"ignore_eos", 1},
      {"stop_token_ids", "1"},
      {"model", 3},
  };
  for (const Case& c : cases) {
    json body = {{"model", kModel}, {"prompt", "x"}, {"stream", true}};
    body[c.field] = c.value;
    ApiError e = error_of(body);
    EXPECT_EQ(e.status, 400) << c.field;
    EXPECT_EQ(e.param, c.field) << c.field << ": " << e.message;
    EXPECT_NE(e.message.find(c.field), std::string::npos) << e.message;
  }
  json stop_list = {{"model", kModel}, {"prompt", "x"}, {"stop", {"a", 1}}};
  EXPECT_EQ(error_of(stop_list).param, "stop[1]");
  json include_usage = {{"model", kModel},
                        {"prompt", "x"},
                        {"stream", true},
                        {"stream_options", {{"include_usage", "yes"}}}};
  EXPECT_EQ(error_of(include_usage).param, "stream_options.include_usage");
}

TEST(OpenAiParse, IntegralFloatsAreIntegers) {
  ApiRequest r = parse_completion({{"model", kModel}, {"prompt", "x"}, {"max_tokens", 5.0}});
  EXPECT_EQ(*r.max_tokens, 5);
}

TEST(OpenAiParse, UnknownModelIs404) {
  ApiError e = error_of(json{{"model", "gpt-4"}, {"prompt", "x"}});
  EXPECT_EQ(e.status, 404);
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_EQ(e.param, "model");
  EXPECT_EQ(error_of(json{{"prompt", "x"}}).status, 400);  // missing model
}

TEST(OpenAiParse, BaseNameOfAnOrgQualifiedModel) {
  EXPECT_TRUE(model_name_matches("org/M", "org/M"));
  EXPECT_TRUE(model_name_matches("M", "org/M"));
  EXPECT_FALSE(model_name_matches("org", "org/M"));
  EXPECT_FALSE(model_name_matches("other/M", "org/M"));
  EXPECT_FALSE(model_name_matches("M2", "M"));
  ApiRequest r =
      parse_request(json{{"model", "M"}, {"prompt", "x"}}.dump(), Endpoint::kCompletions, "org/M");
  EXPECT_EQ(r.model, "M");
}

TEST(OpenAiParse, ImpossibleValues) {
  auto param_of = [](const char* field, json value) {
    json body = {{"model", kModel}, {"prompt", "x"}};
    body[field] = std::move(value);
    return error_of(body).param;
  };
  EXPECT_EQ(param_of("n", 0), "n");
  EXPECT_EQ(param_of("n", 9), "n");
  EXPECT_EQ(param_of("max_tokens", 0), "max_tokens");
  EXPECT_EQ(param_of("max_tokens", -3), "max_tokens");
  EXPECT_EQ(param_of("temperature", -1), "temperature");
  EXPECT_EQ(param_of("temperature", 1e300), "temperature");
  EXPECT_EQ(param_of("top_p", 0), "top_p");
  EXPECT_EQ(param_of("top_p", 1.5), "top_p");
  EXPECT_EQ(param_of("min_p", 2), "min_p");
  EXPECT_EQ(param_of("top_k", -2), "top_k");
  EXPECT_EQ(param_of("presence_penalty", 3), "presence_penalty");
  EXPECT_EQ(param_of("frequency_penalty", -3), "frequency_penalty");
  EXPECT_EQ(param_of("repetition_penalty", 0), "repetition_penalty");
  EXPECT_EQ(param_of("stop", ""), "stop");
  EXPECT_EQ(param_of("stop", std::string(300, 'x')), "stop");
  EXPECT_EQ(param_of("best_of", 3), "best_of");
  // stream_options without stream
  EXPECT_EQ(param_of("stream_options", {{"include_usage", true}}), "stream_options");
}

TEST(OpenAiParse, UnsupportedFeaturesAreRejectedClearly) {
  json completion = {{"model", kModel}, {"prompt", "x"}};
  for (auto [field, value] :
       std::vector<std::pair<const char*, json>>{{"suffix", "end"}, {"min_tokens", 3}}) {
    json body = completion;
    body[field] = value;
    ApiError e = error_of(body);
    EXPECT_EQ(e.param, field);
    EXPECT_NE(e.message.find("not supported"), std::string::npos) << e.message;
  }
  for (auto [field, value] : std::vector<std::pair<const char*, json>>{
           {"response_format",
            {{"type", "json_schema"},
             {"json_schema", {{"name", "n"}, {"schema", {{"format", "email"}}}}}}},
           {"tools", {{{"type", "function"}, {"function", {{"name", "f"}}}}}}}) {
    json body = chat_body();
    body[field] = value;
    EXPECT_EQ(error_of(body, Endpoint::kChatCompletions).param, field);
  }
  // Harmless forms pass.
  json ok = chat_body();
  ok["logprobs"] = false;
  ok["response_format"] = {{"type", "text"}};
  ok["tools"] = json::array();
  ok["echo"] = false;
  EXPECT_NO_THROW(parse_chat(ok));
}

// Fields that would change the output are refused by name, never silently ignored.
TEST(OpenAiParse, OutputChangingFieldsAreNotIgnored) {
  for (auto [field, value] :
       std::vector<std::pair<const char*, json>>{{"logit_bias", {{"50256", -100}}},
                                                 {"guided_grammar", "root ::= \"a\""},
                                                 {"guided_whitespace_pattern", " *"},
                                                 {"bad_words", {"x"}},
                                                 {"allowed_token_ids", {1, 2}},
                                                 {"logits_processors", {"p"}},
                                                 {"truncate_prompt_tokens", 5}}) {
    json body = {{"model", kModel}, {"prompt", "x"}};
    body[field] = value;
    ApiError e = error_of(body);
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.param, field);
    EXPECT_NE(e.message.find(field), std::string::npos) << e.message;
    json chat = chat_body();
    chat[field] = value;
    EXPECT_EQ(error_of(chat, Endpoint::kChatCompletions).param, field);
  }
  for (auto [field, value] :
       std::vector<std::pair<const char*, json>>{{"echo", true},
                                                 {"tool_choice", "required"},
                                                 {"chat_template_kwargs", {{"custom", 1}}}}) {
    json chat = chat_body();
    chat[field] = value;
    EXPECT_EQ(error_of(chat, Endpoint::kChatCompletions).param, field);
  }
  json streamed = chat_body();
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}, {"continuous_usage_stats", true}};
  EXPECT_EQ(error_of(streamed, Endpoint::kChatCompletions).param, "stream_options");
  // No-op forms pass: an empty bias, COCOON's enable_thinking, tool_choice "none".
  json ok = chat_body();
  ok["logit_bias"] = json::object();
  ok["chat_template_kwargs"] = {{"enable_thinking", false}};
  ok["tool_choice"] = "none";
  ok["reasoning_effort"] = "low";
  EXPECT_NO_THROW(parse_chat(ok));
}

// Numbers beyond a double are 400 (not 500) and the message never quotes them; 110,000 nested
// arrays are a 400 with a position, not a stack overflow.
TEST(OpenAiParse, HostileJsonIsABadRequest) {
  ApiError e = error_of(std::string(R"({"model":"m","prompt":"x","temperature":1e999})"));
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.message.find("1e999"), std::string::npos) << e.message;
  const std::string deep = std::string(110000, '[') + std::string(110000, ']');
  e = error_of(deep);
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("line 1, column"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("nesting"), std::string::npos) << e.message;
}

TEST(OpenAiParse, WipeClearsText) {
  ApiRequest r = parse_chat(chat_body());
  r.stop = {"x"};
  r.user = "u";
  r.wipe();
  EXPECT_TRUE(r.messages[0].content.empty());
  EXPECT_TRUE(r.stop[0].empty());
  EXPECT_TRUE(r.user.empty());
}

TEST(OpenAiLimits, ResolveMaxTokens) {
  ApiRequest chat = parse_chat(chat_body());
  EXPECT_EQ(resolve_max_tokens(chat, 10, 100), 90);  // chat default: rest of the context
  ApiRequest completion = parse_completion({{"model", kModel}, {"prompt", "x"}});
  EXPECT_EQ(resolve_max_tokens(completion, 10, 100), 16);  // completions default 16
  EXPECT_EQ(resolve_max_tokens(completion, 95, 100), 5);
  completion.max_tokens = 90;
  EXPECT_EQ(resolve_max_tokens(completion, 10, 100), 90);
  try {
    resolve_max_tokens(completion, 11, 100);
    FAIL();
  } catch (const ApiException& e) {
    EXPECT_EQ(e.error().status, 400);
    EXPECT_NE(e.error().message.find("maximum context length is 100"), std::string::npos);
    EXPECT_NE(e.error().message.find("101"), std::string::npos);
  }
  try {
    resolve_max_tokens(chat, 100, 100);
    FAIL();
  } catch (const ApiException& e) {
    EXPECT_NE(e.error().message.find("your prompt has 100 tokens"), std::string::npos);
    EXPECT_EQ(e.error().param, "messages");
  }
  EXPECT_THROW(resolve_max_tokens(chat, 0, 100), ApiException);
  EXPECT_THROW(check_token_ids({1, 49152}, 49152), ApiException);
  EXPECT_NO_THROW(check_token_ids({0, 49151}, 49152));
}

TEST(OpenAiFormat, ErrorShape) {
  json e = json::parse(ApiError::bad_request("bad n", "n").body());
  EXPECT_EQ(e["error"]["message"], "bad n");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "n");
  EXPECT_TRUE(e["error"]["code"].is_null());
  json nf = ApiError::model_not_found("x").to_json();
  EXPECT_EQ(nf["error"]["code"], "model_not_found");
  EXPECT_EQ(ApiError::overloaded("busy").status, 429);
  EXPECT_EQ(ApiError::unavailable("draining").status, 503);
  EXPECT_EQ(ApiError::payload_too_large(10).status, 413);
  EXPECT_TRUE(ApiError::internal("x").to_json()["error"]["param"].is_null());
}

TEST(OpenAiFormat, Ids) {
  const std::string a = make_response_id(Endpoint::kCompletions);
  const std::string b = make_response_id(Endpoint::kChatCompletions);
  EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(b.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.size(), 5u + 32u);
  EXPECT_NE(make_response_id(Endpoint::kCompletions), a);
}

TEST(OpenAiFormat, CompletionResponse) {
  Usage usage{12, 5, 8};
  json r = completion_response(
      Endpoint::kCompletions, "cmpl-1", 1700000000, kModel,
      {{0, "hello", FinishReason::kLength}, {1, "bye", FinishReason::kStop}}, usage);
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["id"], "cmpl-1");
  EXPECT_EQ(r["created"], 1700000000);
  EXPECT_EQ(r["model"], kModel);
  ASSERT_EQ(r["choices"].size(), 2u);
  EXPECT_EQ(r["choices"][0]["text"], "hello");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(r["choices"][1]["index"], 1);
  EXPECT_EQ(r["choices"][1]["finish_reason"], "stop");
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(r["usage"]["prompt_tokens"], 12);
  EXPECT_EQ(r["usage"]["completion_tokens"], 5);
  EXPECT_EQ(r["usage"]["total_tokens"], 17);
  EXPECT_EQ(r["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
  EXPECT_EQ(r["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);

  json c = completion_response(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel,
                               {{0, "hi", FinishReason::kStop}}, usage);
  EXPECT_EQ(c["object"], "chat.completion");
  EXPECT_EQ(c["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(c["choices"][0]["message"]["content"], "hi");
  EXPECT_FALSE(c["choices"][0].contains("text"));
}

TEST(OpenAiFormat, StreamChunks) {
  json first = stream_chunk(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel, 0, "", true,
                            FinishReason::kNone, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["choices"][0]["delta"]["content"], "");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());

  json mid = stream_chunk(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel, 1, "abc", false,
                          FinishReason::kNone, false);
  EXPECT_FALSE(mid["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(mid["choices"][0]["delta"]["content"], "abc");
  EXPECT_EQ(mid["choices"][0]["index"], 1);
  EXPECT_FALSE(mid.contains("usage"));

  json last = stream_chunk(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel, 0, "", false,
                           FinishReason::kLength, false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");

  json text = stream_chunk(Endpoint::kCompletions, "cmpl-1", 1, kModel, 0, "xy", false,
                           FinishReason::kStop, false);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "xy");
  EXPECT_EQ(text["choices"][0]["finish_reason"], "stop");

  json usage = usage_chunk(Endpoint::kChatCompletions, "chatcmpl-1", 1, kModel, {3, 4, 0});
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);

  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(kSseDone, "data: [DONE]\n\n");
}

TEST(OpenAiFormat, InvalidUtf8IsReplacedNotThrown) {
  const std::string bad = std::string("ok") + char(0xE2) + char(0x82);
  EXPECT_NO_THROW(dump_json(json{{"t", bad}}));
  EXPECT_NE(dump_json(json{{"t", bad}}).find("\xEF\xBF\xBD"), std::string::npos);
}

TEST(OpenAiFormat, Models) {
  json m = models_response(kModel, 5, 2048);
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], kModel);
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(m["data"][0]["owned_by"], "alem");
  EXPECT_EQ(m["data"][0]["max_model_len"], 2048);
}

// Feeds `pieces` one by one and returns what the filter releases, joined.
std::string run_filter(StopStringFilter& f, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += f.push(p);
  out += f.finish();
  return out;
}

TEST(StopStrings, NoStopsPassThrough) {
  StopStringFilter f({}, false);
  EXPECT_EQ(f.push("abc"), "abc");
  EXPECT_EQ(f.finish(), "");
  EXPECT_FALSE(f.stopped());
}

TEST(StopStrings, StopAcrossPiecesIsExcluded) {
  StopStringFilter f({"STOP"}, false);
  EXPECT_EQ(run_filter(f, {"Hello S", "TO", "P and more"}), "Hello ");
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(f.push("later"), "");
}

TEST(StopStrings, IncludedWhenAsked) {
  StopStringFilter f({"\n"}, true);
  EXPECT_EQ(run_filter(f, {"line one", "\nline two"}), "line one\n");
}

TEST(StopStrings, HoldsBackOnlyPossibleStarts) {
  StopStringFilter f({"abc"}, false);
  EXPECT_EQ(f.push("xxab"), "xx");  // the last len("abc") - 1 bytes might start a stop string
  EXPECT_EQ(f.push("d"), "a");
  EXPECT_EQ(f.finish(), "bd");
  EXPECT_FALSE(f.stopped());
}

TEST(StopStrings, EarliestStopWins) {
  StopStringFilter f({"world", "lo w"}, false);
  EXPECT_EQ(run_filter(f, {"hello world"}), "hel");
}

TEST(StopStrings, NeverSplitsACharacter) {
  StopStringFilter f({"zz"}, false);
  // "é" is two bytes; with one byte held back the cut would fall inside it.
  std::string out = f.push("a\xC3\xA9");
  EXPECT_EQ(out, "a");
  EXPECT_EQ(f.finish(), "\xC3\xA9");
}

TEST(StopStrings, MatchesAtEveryPosition) {
  // Whatever the split of the text into pieces, the released text is the part before the stop.
  const std::string text = "the quick brown fox jumps";
  for (size_t cut1 = 0; cut1 <= text.size(); ++cut1) {
    for (size_t cut2 = cut1; cut2 <= text.size(); cut2 += 3) {
      StopStringFilter f({"own f", "zzz"}, false);
      const std::string out =
          run_filter(f, {text.substr(0, cut1), text.substr(cut1, cut2 - cut1), text.substr(cut2)});
      EXPECT_EQ(out, "the quick br") << cut1 << "," << cut2;
    }
  }
}

TEST(Metrics, ExpositionFormat) {
  ServingMetrics m(1);
  m.add_prompt_tokens(0, 10);
  m.add_generation_tokens(0, 4);
  m.observe_time_to_first_token(0, 0.05);
  m.observe_inter_token_latency(0, 0.003);
  m.count_success(0, "stop");
  m.count_failure(0, "client_disconnect");
  m.count_rejected("invalid");
  ReplicaGauges g;
  g.running_requests = 2;
  g.kv_blocks_used = 3;
  g.kv_blocks_total = 10;
  const std::string text = m.render({g});
  for (const char* line : {
           "# TYPE alem_requests_running gauge",
           "alem_requests_running{replica=\"0\"} 2",
           "alem_kv_blocks_used{replica=\"0\"} 3",
           "alem_kv_blocks_capacity{replica=\"0\"} 10",
           "# TYPE alem_prompt_tokens_total counter",
           "alem_prompt_tokens_total{replica=\"0\"} 10",
           "alem_generation_tokens_total{replica=\"0\"} 4",
           "# TYPE alem_time_to_first_token_seconds histogram",
           "alem_time_to_first_token_seconds_bucket{replica=\"0\",le=\"0.04\"} 0",
           "alem_time_to_first_token_seconds_bucket{replica=\"0\",le=\"0.06\"} 1",
           "alem_time_to_first_token_seconds_bucket{replica=\"0\",le=\"+Inf\"} 1",
           "alem_time_to_first_token_seconds_count{replica=\"0\"} 1",
           "alem_inter_token_latency_seconds_count{replica=\"0\"} 1",
           "alem_request_success_total{replica=\"0\",finish_reason=\"stop\"} 1",
           "alem_request_success_total{replica=\"0\",finish_reason=\"length\"} 0",
           "alem_request_failure_total{replica=\"0\",reason=\"client_disconnect\"} 1",
           "alem_requests_rejected_total{reason=\"invalid\"} 1",
           "alem_generation_tokens_per_second{replica=\"0\"}",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

TEST(Metrics, HistogramBucketsAreCumulative) {
  Histogram h({1.0, 2.0});
  h.observe(0.5);
  h.observe(1.5);
  h.observe(1.0);  // le is inclusive
  h.observe(9.0);
  std::string out;
  h.render("x", "", out);
  EXPECT_NE(out.find("x_bucket{le=\"1\"} 2"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"2\"} 3"), std::string::npos) << out;
  EXPECT_NE(out.find("x_bucket{le=\"+Inf\"} 4"), std::string::npos) << out;
  EXPECT_NE(out.find("x_sum 12"), std::string::npos) << out;
  EXPECT_NE(out.find("x_count 4"), std::string::npos) << out;
}

TEST(ServeConfig, ReadsNetworkAndLimits) {
  ServeConfigFile c = parse_serve_config(R"(
[job]
kind = "serve"
[network]
host = "0.0.0.0"
port = 8000
metrics_port = 9400
queue = ""
[limits]
max_batch_tokens = 8192
max_concurrent_requests = 256
max_context_tokens = 4096
drain_seconds = 270
)",
                                         "x.toml");
  EXPECT_EQ(*c.host, "0.0.0.0");
  EXPECT_EQ(*c.port, 8000);
  EXPECT_EQ(*c.metrics_port, 9400);
  EXPECT_EQ(*c.queue, "");
  EXPECT_EQ(*c.max_batch_tokens, 8192);
  EXPECT_EQ(*c.max_concurrent_requests, 256);
  EXPECT_EQ(*c.max_context_tokens, 4096);
  EXPECT_EQ(*c.drain_seconds, 270);
  ServeConfigFile empty = parse_serve_config("", "empty.toml");
  EXPECT_FALSE(empty.port.has_value());
  EXPECT_FALSE(empty.drain_seconds.has_value());
}

TEST(ServeConfig, RejectsTyposAndWrongTypes) {
  auto message = [](const std::string& text) {
    try {
      parse_serve_config(text, "x.toml");
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  EXPECT_NE(message("[network]\nprot = 1\n").find("unknown key [network] prot"), std::string::npos);
  EXPECT_NE(message("[limits]\ndrain_seconds = \"5\"\n").find("drain_seconds must be"),
            std::string::npos);
  EXPECT_NE(message("[limits]\nmax_batch_tokens = -1\n").find("max_batch_tokens"),
            std::string::npos);
  EXPECT_NE(message("[network\n").find("x.toml:"), std::string::npos);
}

}  // namespace
}  // namespace alem::serve
