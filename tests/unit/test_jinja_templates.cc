// Real Hugging Face chat templates (tests/data/chat_templates/) rendered by alem's Jinja
// interpreter must equal, byte for byte, what jinja2 renders under transformers' settings
// (tests/data/chat_template_reference.json, made by
// scripts/reference/make_chat_template_reference.py), errors from raise_exception included.
// Needs no model.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "model/chat_template.h"
#include "model/jinja/jinja.h"
#include "tests/test_env.h"

namespace alem::jinja {
namespace {

using nlohmann::ordered_json;

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const ordered_json& reference() {
  static const ordered_json ref =
      ordered_json::parse(read(test::data_dir() + "/chat_template_reference.json"));
  return ref;
}

RenderOptions reference_options() {
  RenderOptions opt;
  std::tm tm{};  // the generator pins strftime_now to 2025-02-03 14:05:06
  tm.tm_year = 125;
  tm.tm_mon = 1;
  tm.tm_mday = 3;
  tm.tm_hour = 14;
  tm.tm_min = 5;
  tm.tm_sec = 6;
  tm.tm_wday = 1;
  opt.now = tm;
  return opt;
}

TEST(JinjaTemplates, RenderLikeJinja2) {
  const ordered_json& cases = reference()["cases"];
  ASSERT_GE(cases.size(), 50u);
  std::set<std::string> templates;
  for (const ordered_json& c : cases) {
    const std::string name = c["template"];
    templates.insert(name);
    SCOPED_TRACE(name + " / " + c["name"].get<std::string>());
    const Template tpl(read(test::data_dir() + "/chat_templates/" + name));
    Dict ctx;
    ctx.set(Str::literal("messages"), Value::from_json(c["messages"], true));
    ctx.set(Str::literal("tools"), Value::from_json(c["tools"], true));
    ctx.set(Str::literal("documents"), Value::none());
    ctx.set(Str::literal("add_generation_prompt"), Value::boolean(c["add_generation_prompt"]));
    if (!c["bos_token"].is_null()) {
      ctx.set(Str::literal("bos_token"), Value::string(c["bos_token"].get<std::string>()));
    }
    ctx.set(Str::literal("eos_token"), Value::string(c["eos_token"].get<std::string>()));
    for (auto it = c["kwargs"].begin(); it != c["kwargs"].end(); ++it) {
      ctx.set(Str::literal(it.key()), Value::from_json(it.value(), true));
    }
    if (c.contains("error")) {
      try {
        tpl.render(ctx, reference_options());
        ADD_FAILURE() << "expected an error";
      } catch (const Error& e) {
        EXPECT_NE(e.message().find(c["error"].get<std::string>()), std::string::npos)
            << e.message();
      }
      continue;
    }
    EXPECT_EQ(tpl.render(ctx, reference_options()).text, c["text"].get<std::string>());
  }
  EXPECT_GE(templates.size(), 7u);
}

// SmolLM2's own template through the interpreter gives the prompts transformers made from the
// GGUF (tokenizer_reference.json's chats), which the built-in ChatML path gave before.
TEST(JinjaTemplates, SmolLM2TemplateMatchesTransformers) {
  TokenizerData data;
  data.chat_template =
      read(test::data_dir() + "/chat_templates/HuggingFaceTB-SmolLM2-135M-Instruct.jinja");
  const nlohmann::json ref =
      nlohmann::json::parse(read(test::data_dir() + "/tokenizer_reference.json"));
  ASSERT_GE(ref["chats"].size(), 3u);
  for (const nlohmann::json& chat : ref["chats"]) {
    std::vector<ChatMessage> messages;
    for (const nlohmann::json& m : chat["messages"]) messages.push_back({m["role"], m["content"]});
    EXPECT_EQ(apply_chat_template(messages, chat["add_generation_prompt"], data),
              chat["text"].get<std::string>());
  }
}

TEST(JinjaTemplates, StoresWithoutATemplateGetChatML) {
  const TokenizerData none;
  EXPECT_EQ(
      apply_chat_template({{"system", "S"}, {"user", "Hi"}}, true, none),
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_NO_THROW(check_chat_template(none));
}

TEST(JinjaTemplates, BadTemplateFailsAtCheckWithPosition) {
  TokenizerData data;
  data.chat_template = "{% for m in messages %}\n{{ m.content + }}\n{% endfor %}";
  try {
    check_chat_template(data);
    FAIL() << "a broken template must fail the check";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("line 2, column"), std::string::npos) << e.message();
  }
}

TEST(JinjaTemplates, ChatTemplateKwargsReachTheTemplate) {
  TokenizerData data;
  data.chat_template = read(test::data_dir() + "/chat_templates/Qwen-Qwen3-0.6B.jinja");
  const nlohmann::json off = {{"enable_thinking", false}};
  EXPECT_EQ(apply_chat_template({{"user", "Hi"}}, true, data, &off),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(apply_chat_template({{"user", "Hi"}}, true, data),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

}  // namespace
}  // namespace alem::jinja
