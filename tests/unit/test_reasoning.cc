// Reasoning models at the session level: the token-exact <think> split (serve/reasoning.h) and
// what CompletionSession makes of it (message.reasoning_content, delta.reasoning_content,
// usage.completion_tokens_details.reasoning_tokens), fed forced token streams by a scripted
// engine, with the tiny Qwen3 tokenizer (tests/data/tiny-qwen3, whose <think>/</think> are
// found by spelling). Also: a vocabulary without think markers gets no parser; the request
// fields a Qwen3 history carries (tool_calls, tool_call_id, chat_template_kwargs) parse and
// reach the template.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "model/chat_template.h"
#include "model/hf_tokenizer_json.h"
#include "serve/completion_session.h"
#include "test_env.h"

namespace alem::serve {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// Records submissions; the test sends their events itself.
class ScriptedEngine : public EngineClient {
 public:
  SubmitResult submit(EngineRequest request) override {
    const int64_t id = next_id_++;
    prompts[id] = request.prompt;
    callbacks[id] = std::move(request.on_event);
    max_tokens[id] = request.params.max_tokens;
    return {SubmitStatus::kAccepted, id, 0};
  }
  void cancel(int64_t) override {}
  std::vector<ReplicaStats> stats() const override { return {ReplicaStats{}}; }
  bool healthy() const override { return true; }
  int max_model_len() const override { return 512; }

  // Sends `tokens` for request `id`, then a finish event.
  void play(int64_t id, const std::vector<int32_t>& tokens, FinishReason finish) {
    for (int32_t t : tokens) {
      RequestEvent e;
      e.request_id = id;
      e.has_token = true;
      e.token_id = t;
      callbacks.at(id)(e);
    }
    RequestEvent end;
    end.request_id = id;
    end.finished = true;
    end.finish_reason = finish;
    callbacks.at(id)(end);
  }

  std::map<int64_t, std::vector<int32_t>> prompts;
  std::map<int64_t, EngineEventCallback> callbacks;
  std::map<int64_t, int32_t> max_tokens;

 private:
  int64_t next_id_ = 1;
};

struct TinyQwen3 {
  TinyQwen3() : data(load_hf_tokenizer(test::data_dir() + "/tiny-qwen3")), tokenizer(data) {
    served.name = "tiny-qwen3";
    served.tokenizer = &tokenizer;
    served.tokenizer_data = &data;
    served.im_end_id = tokenizer.token_id("<|im_end|>");
    served.reasoning = ReasoningTokens::find(tokenizer);
  }
  std::vector<int32_t> ids(const std::string& text) const {
    return tokenizer.encode(text, /*parse_special=*/false);
  }
  TokenizerData data;
  Tokenizer tokenizer;
  ServedModel served;
};

ApiRequest chat_request(const std::string& extra = "", bool stream = false) {
  std::string body = R"({"model":"tiny-qwen3","messages":[{"role":"user","content":"Hi"}])";
  if (stream) body += R"(,"stream":true,"stream_options":{"include_usage":true})";
  body += extra + "}";
  return parse_request(body, Endpoint::kChatCompletions, "tiny-qwen3");
}

struct Outcome {
  json body;  // the response, or the streamed pieces joined into the same shape
  Usage usage;
};

// Runs one chat request against forced tokens; streaming joins the deltas.
Outcome run(const TinyQwen3& m, ApiRequest request, const std::vector<int32_t>& tokens,
            FinishReason finish = FinishReason::kStop) {
  ScriptedEngine engine;
  ServingMetrics metrics(1);
  const bool stream = request.stream;
  auto session = std::make_shared<CompletionSession>(m.served, engine, metrics, std::move(request),
                                                     CompletionSession::Clock::now());
  session->start();
  engine.play(1, tokens, finish);
  Outcome out;
  if (!stream) {
    out.body = json::parse(session->wait_for_response());
    out.usage = session->usage();  // what the network provider bills from
    return out;
  }
  std::string content, reasoning;
  bool saw_reasoning = false;
  std::vector<StreamChunk> chunks;
  while (session->next_stream_chunks(chunks, 10ms)) {
  }
  for (const StreamChunk& c : chunks) {
    if (c.value.at("choices").empty()) {
      out.body["usage"] = c.value.at("usage");
      continue;
    }
    const json& delta = c.value["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    if (delta.contains("reasoning_content")) {
      saw_reasoning = true;
      reasoning += delta["reasoning_content"].get<std::string>();
    }
  }
  out.body["content"] = content;
  out.body["reasoning_content"] = saw_reasoning ? json(reasoning) : json(nullptr);
  out.usage = session->usage();
  session->close(true);
  return out;
}

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

TEST(ReasoningTokens, FoundByNameAndAbsentWithoutThem) {
  const TinyQwen3 m;
  EXPECT_TRUE(m.served.reasoning.enabled());
  EXPECT_EQ(m.tokenizer.token_text(m.served.reasoning.think_start), "<think>");
  EXPECT_EQ(m.tokenizer.token_text(m.served.reasoning.think_end), "</think>");
  // A vocabulary without the markers (SmolLM2's tiny stand-in) gets no parser.
  const TokenizerData llama = load_hf_tokenizer(test::data_dir() + "/tiny-llama");
  EXPECT_FALSE(ReasoningTokens::find(Tokenizer(llama)).enabled());
}

TEST(ReasoningParser, SplitsAndCountsEveryToken) {
  const ReasoningTokens t{100, 101, 1};
  const std::vector<int32_t> gen_prompt = {1, 7, 8};  // "<|im_start|>assistant\n"
  {                                                   // <think> a b </think> c d
    ReasoningParser p(t, gen_prompt);
    std::vector<TokenRole> roles;
    for (int32_t id : {100, 5, 6, 101, 9, 10}) roles.push_back(p.push(id));
    EXPECT_EQ(roles, (std::vector<TokenRole>{TokenRole::kMarker, TokenRole::kReasoning,
                                             TokenRole::kReasoning, TokenRole::kMarker,
                                             TokenRole::kContent, TokenRole::kContent}));
    EXPECT_EQ(p.reasoning_tokens(), 4);
  }
  {  // cut by max_tokens inside the block: all reasoning
    ReasoningParser p(t, gen_prompt);
    for (int32_t id : {100, 5, 6, 7}) p.push(id);
    EXPECT_TRUE(p.in_reasoning());
    EXPECT_EQ(p.reasoning_tokens(), 4);
  }
  {  // enable_thinking=false: the prompt ends with an empty block; later markers are content
    ReasoningParser p(t, {1, 7, 8, 100, 3, 101, 3});
    EXPECT_EQ(p.push(5), TokenRole::kContent);
    EXPECT_EQ(p.push(100), TokenRole::kContent);
    EXPECT_EQ(p.reasoning_tokens(), 0);
  }
  {  // the template opened <think>: reasoning from the first token
    ReasoningParser p(t, {1, 7, 8, 100, 3});
    EXPECT_EQ(p.push(5), TokenRole::kReasoning);
    EXPECT_EQ(p.push(101), TokenRole::kMarker);
    EXPECT_EQ(p.push(6), TokenRole::kContent);
    EXPECT_EQ(p.reasoning_tokens(), 2);
  }
  {  // a closed block in an earlier turn does not count: only the generation prompt does
    ReasoningParser p(t, {1, 100, 5, 101, 2, 1, 7, 8});
    EXPECT_EQ(p.push(5), TokenRole::kContent);
  }
  {  // one block: a second <think> after </think> is answer text
    ReasoningParser p(t, gen_prompt);
    for (int32_t id : {100, 5, 101}) p.push(id);
    EXPECT_EQ(p.push(100), TokenRole::kContent);
    EXPECT_EQ(p.reasoning_tokens(), 3);
  }
}

TEST(ReasoningSession, NonStreamingSplitsTextAndBillsReasoning) {
  const TinyQwen3 m;
  const int32_t open = m.served.reasoning.think_start, close = m.served.reasoning.think_end;
  const auto thought = m.ids("\nOkay, let me think about this.\n");
  const auto answer = m.ids("\n\nThe capital of France is Paris.");
  const auto tokens = concat({{open}, thought, {close}, answer, {m.served.im_end_id}});
  const Outcome o = run(m, chat_request(), tokens);
  const json& message = o.body["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "\nOkay, let me think about this.\n");
  EXPECT_EQ(message["content"], "\n\nThe capital of France is Paris.");  // as vLLM: not stripped
  const json& usage = o.body["usage"];
  EXPECT_EQ(usage["completion_tokens"], static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(usage["completion_tokens_details"]["reasoning_tokens"],
            static_cast<int64_t>(thought.size() + 2));
  EXPECT_EQ(o.usage.reasoning_tokens, static_cast<int64_t>(thought.size() + 2));
}

TEST(ReasoningSession, StreamingDeltasCarryReasoningThenContent) {
  const TinyQwen3 m;
  const int32_t open = m.served.reasoning.think_start, close = m.served.reasoning.think_end;
  const auto thought = m.ids("Hmm, 12 plus 30 is 42. Ünïcödé 🙂");
  const auto answer = m.ids("It is 42.");
  const auto tokens = concat({{open}, thought, {close}, answer});
  const Outcome o = run(m, chat_request("", /*stream=*/true), tokens);
  EXPECT_EQ(o.body["reasoning_content"], "Hmm, 12 plus 30 is 42. Ünïcödé 🙂");
  EXPECT_EQ(o.body["content"], "It is 42.");
  EXPECT_EQ(o.body["usage"]["completion_tokens"], static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(o.body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            static_cast<int64_t>(thought.size() + 2));
}

TEST(ReasoningSession, BudgetCutInsideThinkIsAllReasoning) {
  const TinyQwen3 m;
  const auto thought = m.ids("Wait, maybe I should reconsider");
  const auto tokens = concat({{m.served.reasoning.think_start}, thought});
  for (bool stream : {false, true}) {
    const Outcome o =
        run(m, chat_request(R"(,"max_tokens":)" + std::to_string(tokens.size()), stream), tokens,
            FinishReason::kLength);
    const json usage = o.body["usage"];
    EXPECT_EQ(usage["completion_tokens"], static_cast<int64_t>(tokens.size())) << stream;
    EXPECT_EQ(usage["completion_tokens_details"]["reasoning_tokens"],
              static_cast<int64_t>(tokens.size()))
        << stream;
    const json& text = stream ? o.body : o.body["choices"][0]["message"];
    EXPECT_EQ(text["reasoning_content"], "Wait, maybe I should reconsider");
    EXPECT_EQ(text["content"], "");
  }
}

TEST(ReasoningSession, EnableThinkingFalseReachesTheTemplateAndAllIsContent) {
  const TinyQwen3 m;
  ScriptedEngine engine;
  ServingMetrics metrics(1);
  CompletionSession session(m.served, engine, metrics,
                            chat_request(R"(,"chat_template_kwargs":{"enable_thinking":false})"),
                            CompletionSession::Clock::now());
  session.start();
  const std::vector<int32_t>& prompt = engine.prompts.at(1);
  const std::vector<int32_t> tail =
      m.tokenizer.encode("<|im_start|>assistant\n<think>\n\n</think>\n\n");
  ASSERT_GE(prompt.size(), tail.size());
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), prompt.end() - tail.size()))
      << "the empty think block of enable_thinking=false is in the prompt";
  // Even a stray <think> is answer text now (reasoning ended in the prompt, as vLLM decides).
  const auto answer = m.ids("Paris.");
  engine.play(1, concat({answer, {m.served.reasoning.think_start}}), FinishReason::kStop);
  const json body = json::parse(session.wait_for_response());
  EXPECT_EQ(body["choices"][0]["message"]["content"], "Paris.<think>");
  EXPECT_TRUE(body["choices"][0]["message"]["reasoning_content"].is_null());
  EXPECT_EQ(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);

  // Thinking on (the default): the generation prompt ends "<|im_start|>assistant\n".
  ScriptedEngine engine2;
  CompletionSession on(m.served, engine2, metrics, chat_request(), CompletionSession::Clock::now());
  on.start();
  const std::vector<int32_t> open_tail = m.tokenizer.encode("<|im_start|>assistant\n");
  const std::vector<int32_t>& p2 = engine2.prompts.at(1);
  EXPECT_TRUE(std::equal(open_tail.begin(), open_tail.end(), p2.end() - open_tail.size()));
  on.close(true);
}

TEST(ReasoningSession, StopStringsApplyToTheAnswerOnly) {
  const TinyQwen3 m;
  const auto thought = m.ids("the answer is Paris");
  const auto answer = m.ids("Paris is the capital.");
  const auto tokens =
      concat({{m.served.reasoning.think_start}, thought, {m.served.reasoning.think_end}, answer});
  const Outcome o = run(m, chat_request(R"(,"stop":["capital"])"), tokens);
  const json& message = o.body["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "the answer is Paris");
  EXPECT_EQ(message["content"], "Paris is the ");
  EXPECT_EQ(o.body["choices"][0]["finish_reason"], "stop");
}

TEST(ReasoningSession, CompletionsEndpointHasNoParser) {
  const TinyQwen3 m;
  ScriptedEngine engine;
  ServingMetrics metrics(1);
  CompletionSession session(m.served, engine, metrics,
                            parse_request(R"({"model":"tiny-qwen3","prompt":"Hi","max_tokens":8})",
                                          Endpoint::kCompletions, "tiny-qwen3"),
                            CompletionSession::Clock::now());
  session.start();
  const auto tokens = concat(
      {{m.served.reasoning.think_start}, m.ids("x"), {m.served.reasoning.think_end}, m.ids("y")});
  engine.play(1, tokens, FinishReason::kStop);
  const json body = json::parse(session.wait_for_response());
  EXPECT_EQ(body["choices"][0]["text"], "<think>x</think>y");  // raw text, as vLLM's completions
  EXPECT_EQ(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 0);
}

TEST(ReasoningProtocol, HistoryFieldsParseAndReachTheTemplate) {
  const std::string body = R"({"model":"m","messages":[
    {"role":"user","content":"Weather in Paris?"},
    {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
      "function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
    {"role":"tool","tool_call_id":"call_1","content":"{\"temperature\": 24}"},
    {"role":"user","content":"Thanks"}],
    "chat_template_kwargs":{"enable_thinking":true}})";
  ApiRequest r = parse_request(body, Endpoint::kChatCompletions, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  ASSERT_EQ(r.messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.messages[1].tool_calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.messages[2].tool_call_id, "call_1");
  EXPECT_EQ(r.enable_thinking, std::optional<bool>(true));
  const TinyQwen3 m;
  const std::string text = apply_chat_template(r.messages, true, m.data);
  EXPECT_NE(text.find("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                      "\"Paris\"}}\n</tool_call>"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("<|im_start|>user\n<tool_response>\n{\"temperature\": 24}\n</tool_response>"),
            std::string::npos)
      << text;
  r.wipe();
  EXPECT_TRUE(r.messages[1].tool_calls.empty());
}

TEST(ReasoningProtocol, RefusesToolsAndBadKwargs) {
  auto status_of = [](const std::string& extra,
                      const std::string& messages = R"([{"role":"user","content":"x"}])") {
    try {
      parse_request(R"({"model":"m","messages":)" + messages + extra + "}",
                    Endpoint::kChatCompletions, "m");
      return std::string("accepted");
    } catch (const ApiException& e) {
      return std::to_string(e.error().status) + " " + e.error().param;
    }
  };
  EXPECT_EQ(status_of(R"(,"tools":[{"type":"function","function":{"name":"f"}}])"), "400 tools");
  EXPECT_EQ(status_of(R"(,"chat_template_kwargs":{"enable_thinking":"no"})"),
            "400 chat_template_kwargs.enable_thinking");
  EXPECT_EQ(status_of(R"(,"chat_template_kwargs":{"thinking":true})"), "400 chat_template_kwargs");
  EXPECT_EQ(status_of("", R"([{"role":"user","content":"x","tool_calls":[{"type":"function",
               "function":{"name":"f","arguments":"{}"}}]}])"),
            "400 messages[0].tool_calls");
  EXPECT_EQ(status_of("", R"([{"role":"assistant","tool_calls":[{"type":"function",
               "function":{"arguments":"{}"}}]}])"),
            "400 messages[0].tool_calls[0].function.name");
  EXPECT_EQ(status_of("", R"([{"role":"user","content":"x","tool_calls":[]}])"), "accepted");
}

}  // namespace
}  // namespace alem::serve
