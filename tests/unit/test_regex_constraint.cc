// Tests for guided_regex / guided_choice / guided_json / structured_outputs
// (engine/constrained/regex*, serve/response_format.*): the regex engine's verdicts against
// Python's `re` on tests/data/regex_reference.json (made by scripts/reference/
// make_regex_reference.py), every prefix of a match staying alive, every reachable state able
// to finish, refusals that name the construct, the masked token choice over a toy vocabulary,
// and the request fields.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/constrained/regex.h"
#include "engine/constrained/token_constraint.h"
#include "serve/openai_protocol.h"

namespace alem::constrained {
namespace {

using nlohmann::json;

json reference() {
  const char* dir = std::getenv("ALEM_TEST_DATA");
  EXPECT_NE(dir, nullptr) << "ALEM_TEST_DATA is not set";
  std::ifstream in(std::string(dir ? dir : ".") + "/regex_reference.json");
  EXPECT_TRUE(in.good()) << "tests/data/regex_reference.json is missing";
  return json::parse(in);
}

bool matches(const RegexDfa& dfa, const std::string& s) {
  RegexRecognizer r(&dfa);
  return r.feed(s) && r.complete();
}

TEST(Regex, VerdictsEqualPythonRe) {
  const json ref = reference();
  ASSERT_GE(ref["cases"].size(), 20u);
  int checked = 0, matched = 0;
  for (const json& c : ref["cases"]) {
    const std::string pattern = c["pattern"];
    const RegexMatch mode = c["mode"] == "full" ? RegexMatch::kFull : RegexMatch::kSearch;
    const RegexDfa dfa = compile_regex(pattern, mode);
    for (const json& entry : c["strings"]) {
      const std::string s = entry[0];
      const bool expected = entry[1];
      EXPECT_EQ(matches(dfa, s), expected) << "pattern " << pattern << " on \"" << s << "\"";
      ++checked;
      if (!expected) continue;
      ++matched;
      // Every prefix of a match is a prefix the automaton keeps alive.
      RegexRecognizer r(&dfa);
      for (size_t i = 0; i < s.size(); ++i) {
        ASSERT_TRUE(r.feed(static_cast<uint8_t>(s[i])))
            << "pattern " << pattern << " refused byte " << i << " of a match";
      }
    }
  }
  EXPECT_GT(matched, 100);
  EXPECT_GT(checked - matched, 300);
}

TEST(Regex, EveryReachableStateCanFinish) {
  for (const char* p :
       {R"(\d{3}-\d{4})", R"((a|b)*abb)", R"([^,]{1,4}(,[^,]{1,4})*)", R"(.{2,3})", R"(😀|😃+)"}) {
    const RegexDfa dfa = compile_regex(p, RegexMatch::kFull);
    std::vector<uint8_t> seen(dfa.num_states(), 0);
    std::vector<int32_t> work = {dfa.start};
    seen[dfa.start] = 1;
    while (!work.empty()) {
      const int32_t s = work.back();
      work.pop_back();
      EXPECT_TRUE(dfa.accepting[s] || dfa.can_grow[s]) << p << ": a dead end at state " << s;
      for (int b = 0; b < 256; ++b) {
        const int32_t t = dfa.next[static_cast<size_t>(s) * 256 + b];
        if (t >= 0 && !seen[t]) {
          seen[t] = 1;
          work.push_back(t);
        }
      }
    }
  }
}

TEST(Regex, OutputIsValidUtf8) {
  const RegexDfa dot = compile_regex(".+", RegexMatch::kFull);
  EXPECT_TRUE(matches(dot, "é€😃"));
  EXPECT_FALSE(matches(dot, "\xC3"));          // a truncated code point is not a match
  EXPECT_FALSE(matches(dot, "\xED\xA0\x80"));  // a surrogate
  EXPECT_FALSE(matches(dot, "\xC0\xAF"));      // an overlong encoding
  EXPECT_FALSE(matches(dot, "\xFF"));
  EXPECT_FALSE(matches(dot, "a\nb"));
  const RegexDfa negated = compile_regex("[^a]+", RegexMatch::kFull);
  EXPECT_TRUE(matches(negated, "bé\n"));
  EXPECT_FALSE(matches(negated, "bab"));
}

TEST(Regex, ChoicesMatchExactlyThemselves) {
  const std::vector<std::string> choices = {"a.b",   "(x)",       "c|d",     "1+1=2",
                                            "naïve", "tab\there", "$^[]{}\\"};
  const RegexDfa dfa = compile_regex(choice_regex(choices), RegexMatch::kFull);
  for (const std::string& c : choices) {
    EXPECT_TRUE(matches(dfa, c)) << c;
    for (size_t n = 0; n < c.size(); ++n) EXPECT_FALSE(matches(dfa, c.substr(0, n))) << c;
  }
  const RegexDfa words =
      compile_regex(choice_regex({"positive", "negative", "neutral"}), RegexMatch::kFull);
  EXPECT_FALSE(matches(words, "p"));
  EXPECT_TRUE(matches(words, "neutral"));
  for (const char* other : {"axb", "x", "c", "d", "11=2", "naive", "a.bb", ""}) {
    EXPECT_FALSE(matches(dfa, other)) << other;
  }
  EXPECT_THROW(choice_regex({}), Error);
  EXPECT_THROW(choice_regex({"a", ""}), Error);
}

TEST(Regex, RefusalsNameTheConstruct) {
  const std::vector<std::pair<const char*, const char*>> refused = {
      {R"((a)\1)", "backreference"},
      {R"(a(?=b))", "lookahead"},
      {R"((?<=a)b)", "lookbehind"},
      {R"(\bword)", "word boundary"},
      {R"(\p{L}+)", "Unicode property"},
      {R"(a++)", "possessive"},
      {R"((?i)abc)", "inline flags"},
      {R"(a^b)", "'^'"},
      {R"(a$b)", "'$'"},
      {R"(*a)", "nothing to repeat"},
      {R"([abc)", "unterminated character class"},
      {R"((ab)", "unterminated group"},
      {R"(ab))", "unmatched ')'"},
      {R"(a{5,2})", "m < n"},
      {R"(a{1001})", "repetition count"},
      {R"([z-a])", "out of order"},
      {R"(\q)", "unknown escape"},
      {R"(a\)", "ends with a backslash"},
      {R"((a|b)*a(a|b){16})", "automaton states"},
      {R"(((((a{1000}){1000}))))", "automaton states"},
  };
  for (const auto& [pattern, needle] : refused) {
    try {
      compile_regex(pattern, RegexMatch::kFull);
      ADD_FAILURE() << "accepted " << pattern;
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(needle), std::string::npos) << pattern << ": " << e.message();
    }
  }
  // Anchors in only some top-level alternatives change a search's meaning: refused there.
  EXPECT_THROW(compile_regex("^a|b", RegexMatch::kSearch), Error);
  EXPECT_NO_THROW(compile_regex("^a|^b", RegexMatch::kSearch));
  EXPECT_NO_THROW(compile_regex("^a|b", RegexMatch::kFull));
  EXPECT_EQ(cached_regex("a+", RegexMatch::kFull).get(),
            cached_regex("a+", RegexMatch::kFull).get());
}

// Mutated patterns (bytes inserted, deleted, replaced by regex syntax) compile or are refused
// with alem::Error; nothing else may happen (the fuzz target fuzz_openai_request goes further).
TEST(Regex, MutatedPatternsCompileOrAreRefused) {
  const json ref = reference();
  const std::string syntax = "()[]{}|*+?.^$\\-,:<>=!PdwsDSWbu0123456789aZé";
  std::mt19937 rng(7);
  int compiled = 0, refused = 0;
  for (const json& c : ref["cases"]) {
    const std::string base = c["pattern"];
    for (int i = 0; i < 200; ++i) {
      std::string p = base;
      for (int edits = 1 + rng() % 3; edits > 0; --edits) {
        const size_t at = p.empty() ? 0 : rng() % (p.size() + 1);
        const char ch = syntax[rng() % syntax.size()];
        switch (rng() % 3) {
          case 0:
            p.insert(p.begin() + at, ch);
            break;
          case 1:
            if (at < p.size()) p.erase(at, 1);
            break;
          default:
            if (at < p.size()) p[at] = ch;
        }
      }
      try {
        const RegexDfa dfa = compile_regex(p, RegexMatch::kFull);
        EXPECT_GT(dfa.num_states(), 0);
        ++compiled;
      } catch (const Error&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(compiled, 1000);
  EXPECT_GT(refused, 200);
}

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

TEST(RegexTokenConstraint, GreedyFollowsThePatternAndEndsWhenDone) {
  const std::vector<std::string> vocab = {"</s>", "Sure", "12", "3", "-", "45", "67", "x"};
  auto table = toy_table(vocab);
  SamplingParams params;
  params.temperature = 0;
  params.regex = R"(\d{3}-\d{4})";
  RowConstraint c(params, table, {0});
  Rng rng(1);
  std::vector<float> logits = {9, 10, 5, 4, 3, 2, 1, 8};
  std::string out;
  for (int step = 0; step < 10; ++step) {
    const int32_t t = c.choose(all_candidates(logits), params, rng);
    if (t == 0) break;
    out += vocab[t];
    c.advance(t);
  }
  EXPECT_EQ(out, "123-1212");  // "x" and "Sure" never fit; "12" is the best that does
  EXPECT_TRUE(c.state().finished());
}

TEST(RegexTokenConstraint, SampledChoicesAreAlwaysOneOfThem) {
  // Every letter is a token too (as every byte is in a real byte-level vocabulary), so no
  // prefix the pattern allows is a dead end for the vocabulary.
  std::vector<std::string> vocab = {"</s>", "po", "sitive", "neg", "ative", "neutral", "xyz"};
  for (char c = 'a'; c <= 'z'; ++c) vocab.push_back(std::string(1, c));
  auto table = toy_table(vocab);
  SamplingParams params;
  params.temperature = 1.0f;
  params.regex = choice_regex({"positive", "negative", "neutral"});
  std::vector<float> logits(vocab.size(), 1.0f);
  logits[0] = 2;  // the end and "xyz" are the favourites, and never fit before the end
  logits[6] = 3;
  for (uint64_t seed = 0; seed < 100; ++seed) {
    RowConstraint c(params, table, {0});
    Rng rng(seed);
    std::string out;
    for (int step = 0; step < 20; ++step) {
      const int32_t t = c.choose(all_candidates(logits), params, rng);
      if (t == 0) break;
      out += vocab[t];
      c.advance(t);
    }
    EXPECT_TRUE(out == "positive" || out == "negative" || out == "neutral") << out;
  }
}

}  // namespace
}  // namespace alem::constrained

namespace alem::serve {
namespace {

using nlohmann::json;

ApiRequest chat(json extra) {
  json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "Hi"}}}}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  return parse_request(body.dump(), Endpoint::kChatCompletions, "m");
}

ApiError error_of(json extra) {
  try {
    chat(std::move(extra));
  } catch (const ApiException& e) {
    return e.error();
  }
  return ApiError{};
}

TEST(GuidedFields, Parsed) {
  EXPECT_EQ(chat({{"guided_regex", "\\d+"}}).sampling.regex, "\\d+");
  const std::string choice = chat({{"guided_choice", {"yes", "no"}}}).sampling.regex;
  EXPECT_EQ(choice, constrained::choice_regex({"yes", "no"}));
  const json schema = {{"type", "object"}, {"properties", {{"a", {{"type", "integer"}}}}}};
  EXPECT_EQ(chat({{"guided_json", schema}}).sampling.json_schema, schema.dump());
  EXPECT_EQ(chat({{"guided_json", schema.dump()}}).sampling.json_schema, schema.dump());
  EXPECT_EQ(chat({{"structured_outputs", {{"json", schema}}}}).sampling.json_schema, schema.dump());
  EXPECT_EQ(chat({{"structured_outputs", {{"regex", "a|b"}}}}).sampling.regex, "a|b");
  EXPECT_EQ(chat({{"structured_outputs", {{"choice", {"x"}}}}}).sampling.regex,
            constrained::choice_regex({"x"}));
  EXPECT_EQ(chat({{"structured_outputs", {{"json_object", true}}}}).sampling.json_schema,
            R"({"type":"object"})");
  EXPECT_EQ(
      chat({{"structured_outputs", {{"regex", "a"}, {"disable_fallback", true}}}}).sampling.regex,
      "a");
  EXPECT_EQ(chat({{"guided_regex", "a"}, {"guided_decoding_backend", "xgrammar"}}).sampling.regex,
            "a");
  // A text response_format does not conflict with a guided field.
  EXPECT_EQ(chat({{"guided_regex", "a"}, {"response_format", {{"type", "text"}}}}).sampling.regex,
            "a");
  EXPECT_FALSE(chat({{"guided_json", nullptr}}).sampling.constrained());
  const json completion = {{"model", "m"}, {"prompt", "x"}, {"guided_choice", {"a", "b"}}};
  EXPECT_FALSE(
      parse_request(completion.dump(), Endpoint::kCompletions, "m").sampling.regex.empty());
}

TEST(GuidedFields, RefusalsAre400sNamingTheField) {
  auto expect = [](json extra, const char* param, const char* needle) {
    const ApiError e = error_of(extra);
    EXPECT_EQ(e.status, 400) << extra.dump();
    EXPECT_EQ(e.param, param) << extra.dump();
    EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
  };
  expect({{"guided_regex", "(a"}}, "guided_regex", "unterminated group");
  expect({{"guided_regex", 5}}, "guided_regex", "string");
  expect({{"guided_choice", json::array()}}, "guided_choice", "non-empty list");
  expect({{"guided_choice", {"a", 1}}}, "guided_choice", "strings");
  expect({{"guided_json", "{not json"}}, "guided_json", "not JSON Schema");
  expect({{"guided_json", {{"type", "object"}, {"not", {{"type", "null"}}}}}}, "guided_json",
         "'not'");
  expect({{"guided_regex", "a"}, {"guided_choice", {"a"}}}, "guided_choice", "only one");
  expect({{"guided_json", {{"type", "object"}}}, {"response_format", {{"type", "json_object"}}}},
         "guided_json", "only one");
  expect({{"structured_outputs", {{"regex", "a"}, {"choice", {"a"}}}}}, "structured_outputs",
         "only one");
  expect({{"structured_outputs", {{"grammar", "root ::= \"a\""}}}}, "structured_outputs",
         "grammar");
  expect({{"structured_outputs", {{"disable_any_whitespace", true}, {"json_object", true}}}},
         "structured_outputs", "disable_any_whitespace");
  expect({{"structured_outputs", {{"frobnicate", 1}}}}, "structured_outputs", "frobnicate");
  expect({{"guided_grammar", "root ::= \"a\""}}, "guided_grammar", "not supported");
  expect({{"guided_regex", "a"}, {"ignore_eos", true}}, "ignore_eos", "ignore_eos");
}

}  // namespace
}  // namespace alem::serve
