// Request validation and response formatting for the OpenAI-compatible API (see the header).
// Field rules follow vLLM's pydantic models in lax mode: numbers where numbers belong (integral
// floats accepted for integers), null = absent, unknown keys ignored.
#include "serve/openai_protocol.h"

#include <cmath>
#include <limits>
#include <random>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/json_input.h"
#include "engine/logprobs.h"
#include "serve/response_format.h"

namespace alem::serve {

using nlohmann::json;

// ---- errors ----

ApiError ApiError::bad_request(std::string message, std::string param) {
  ApiError e;
  e.status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

ApiError ApiError::model_not_found(const std::string& model) {
  ApiError e;
  e.status = 404;
  e.message = "The model `" + model + "` does not exist.";
  e.type = "invalid_request_error";
  e.param = "model";
  e.code = "model_not_found";
  return e;
}

ApiError ApiError::payload_too_large(size_t limit_bytes) {
  ApiError e;
  e.status = 413;
  e.message = "The request body is larger than " + std::to_string(limit_bytes) + " bytes.";
  e.code = "payload_too_large";
  return e;
}

ApiError ApiError::overloaded(const std::string& why) {
  ApiError e;
  e.status = 429;
  e.message = why;
  e.type = "rate_limit_error";
  e.code = "rate_limit_exceeded";
  return e;
}

ApiError ApiError::unavailable(const std::string& why) {
  ApiError e;
  e.status = 503;
  e.message = why;
  e.type = "service_unavailable";
  e.code = "service_unavailable";
  return e;
}

ApiError ApiError::internal(const std::string& why) {
  ApiError e;
  e.status = 500;
  e.message = why;
  e.type = "internal_error";
  e.code = "internal_error";
  return e;
}

json ApiError::to_json() const {
  return json{{"error",
               {{"message", message},
                {"type", type},
                {"param", param.empty() ? json(nullptr) : json(param)},
                {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

std::string ApiError::body() const {
  return dump_json(to_json());
}

void ApiRequest::wipe() {
  auto wipe_string = [](std::string& s) {
    secure_wipe(s.data(), s.size());
    s.clear();
  };
  for (PromptInput& p : prompts) {
    wipe_string(p.text);
    secure_wipe(p.token_ids.data(), p.token_ids.size() * sizeof(int32_t));
    p.token_ids.clear();
  }
  for (ChatMessage& m : messages) {
    wipe_string(m.role);
    wipe_string(m.content);
    for (ChatToolCall& c : m.tool_calls) {
      wipe_string(c.id);
      wipe_string(c.name);
      wipe_string(c.arguments);
    }
    m.tool_calls.clear();
    wipe_string(m.tool_call_id);
    wipe_string(m.name);
    if (m.reasoning_content) wipe_string(*m.reasoning_content);
  }
  for (std::string& s : stop) wipe_string(s);
  wipe_string(user);
}

namespace {

[[noreturn]] void reject(std::string message, std::string param) {
  throw ApiException(ApiError::bad_request(std::move(message), std::move(param)));
}

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "integer";
    case json::value_t::number_float:
      return "number";
    case json::value_t::string:
      return "string";
    case json::value_t::array:
      return "array";
    case json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

[[noreturn]] void wrong_type(const std::string& field, const char* expected, const json& got) {
  reject("'" + field + "' must be " + expected + ", got " + json_type_name(got), field);
}

// Typed, optional access to the fields of one JSON object.
class Fields {
 public:
  Fields(const json& object, std::string prefix = {})
      : object_(object), prefix_(std::move(prefix)) {}

  // The value, or nullptr when absent or null.
  const json* get(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  std::string name(const char* key) const { return prefix_ + key; }

  std::optional<double> number(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) wrong_type(name(key), "a number", *v);
    return v->get<double>();
  }
  std::optional<int64_t> integer(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    return as_integer(*v, name(key));
  }
  std::optional<bool> boolean(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) wrong_type(name(key), "a boolean", *v);
    return v->get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) wrong_type(name(key), "a string", *v);
    return v->get<std::string>();
  }

  static int64_t as_integer(const json& v, const std::string& field) {
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        reject("'" + field + "' is too large", field);
      }
      return static_cast<int64_t>(u);
    }
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) {
        return static_cast<int64_t>(d);
      }
    }
    wrong_type(field, "an integer", v);
  }

 private:
  const json& object_;
  std::string prefix_;
};

// Outside JSON: bounded nesting (no stack overflow on 110,000 nested arrays), numbers that
// overflow a double refused (400, not 500), and a message that names the position, never bytes
// of the body (core/json_input.h).
json parse_body(std::string_view body) {
  try {
    return parse_json_bounded(body);
  } catch (const JsonInputError& e) {
    reject(e.what(), "");
  }
}

std::vector<int32_t> token_id_list(const json& array, const std::string& field) {
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const std::string element = field + "[" + std::to_string(i) + "]";
    const int64_t id = Fields::as_integer(array[i], element);
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
      reject("'" + element + "' is not a valid token id: " + std::to_string(id), field);
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

void parse_prompt(const Fields& f, const ProtocolLimits& limits, ApiRequest& r) {
  const json* prompt = f.get("prompt");
  if (!prompt) reject("'prompt' is required", "prompt");
  if (prompt->is_string()) {
    r.prompts.push_back({prompt->get<std::string>(), {}, false});
    return;
  }
  if (!prompt->is_array()) wrong_type("prompt", "a string or an array", *prompt);
  if (prompt->empty()) reject("'prompt' must not be an empty array", "prompt");
  const json& first = prompt->front();
  if (first.is_number()) {  // one prompt given as token ids
    r.prompts.push_back({{}, token_id_list(*prompt, "prompt"), true});
    return;
  }
  if (prompt->size() > static_cast<size_t>(limits.max_batch_prompts)) {
    reject("'prompt' holds " + std::to_string(prompt->size()) + " prompts; at most " +
               std::to_string(limits.max_batch_prompts) + " are accepted in one request",
           "prompt");
  }
  for (size_t i = 0; i < prompt->size(); ++i) {  // a batch: all strings or all id lists
    const json& p = (*prompt)[i];
    const std::string field = "prompt[" + std::to_string(i) + "]";
    if (first.is_string() && p.is_string()) {
      r.prompts.push_back({p.get<std::string>(), {}, false});
    } else if (first.is_array() && p.is_array()) {
      if (p.empty()) reject("'" + field + "' must not be empty", "prompt");
      r.prompts.push_back({{}, token_id_list(p, field), true});
    } else {
      wrong_type(field, first.is_string() ? "a string" : "an array of token ids", p);
    }
  }
}

std::string message_content(const json& content, const std::string& field) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) wrong_type(field, "a string or an array of content parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string part_field = field + "[" + std::to_string(i) + "]";
    if (!part.is_object()) wrong_type(part_field, "an object", part);
    const Fields pf(part, part_field + ".");
    const std::string type = pf.string("type").value_or("");
    if (type != "text") {
      reject("'" + part_field + ".type' must be \"text\": only text content is supported",
             part_field + ".type");
    }
    const std::optional<std::string> piece = pf.string("text");
    if (!piece) reject("'" + part_field + ".text' is required", part_field + ".text");
    if (!text.empty()) text += "\n";  // vLLM joins text parts with newlines
    text += *piece;
  }
  return text;
}

// What a history carries besides role and content (a COCOON worker forwards such histories):
// an assistant's tool_calls, a tool result's tool_call_id, a name, and earlier reasoning. They
// go to the template as Hugging Face passes them; `tools` itself is refused elsewhere.
void parse_history_fields(const Fields& mf, const std::string& field, ChatMessage& message) {
  if (const json* calls = mf.get("tool_calls")) {
    if (!calls->is_array()) wrong_type(field + ".tool_calls", "an array", *calls);
    if (message.role != "assistant" && !calls->empty()) {
      reject("'" + field + ".tool_calls' is only allowed on assistant messages",
             field + ".tool_calls");
    }
    for (size_t i = 0; i < calls->size(); ++i) {
      const std::string call_field = field + ".tool_calls[" + std::to_string(i) + "]";
      const json& call = (*calls)[i];
      if (!call.is_object()) wrong_type(call_field, "an object", call);
      const Fields cf(call, call_field + ".");
      ChatToolCall c;
      c.id = cf.string("id").value_or("");
      c.type = cf.string("type").value_or("function");
      if (c.type != "function") {
        reject("'" + call_field + ".type' must be \"function\"", call_field + ".type");
      }
      const json* function = cf.get("function");
      if (!function) reject("'" + call_field + ".function' is required", call_field + ".function");
      if (!function->is_object()) wrong_type(call_field + ".function", "an object", *function);
      const Fields ff(*function, call_field + ".function.");
      const std::optional<std::string> name = ff.string("name");
      if (!name) {
        reject("'" + call_field + ".function.name' is required", call_field + ".function.name");
      }
      c.name = *name;
      c.arguments = ff.string("arguments").value_or("");
      message.tool_calls.push_back(std::move(c));
    }
  }
  if (auto id = mf.string("tool_call_id")) message.tool_call_id = std::move(*id);
  if (auto name = mf.string("name")) message.name = std::move(*name);
  if (auto reasoning = mf.string("reasoning_content")) {
    message.reasoning_content = std::move(*reasoning);
  }
}

void parse_messages(const Fields& f, ApiRequest& r) {
  const json* messages = f.get("messages");
  if (!messages) reject("'messages' is required", "messages");
  if (!messages->is_array()) wrong_type("messages", "an array", *messages);
  if (messages->empty()) reject("'messages' must not be empty", "messages");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) wrong_type(field, "an object", m);
    const Fields mf(m, field + ".");
    std::optional<std::string> role = mf.string("role");
    if (!role) reject("'" + field + ".role' is required", field + ".role");
    if (*role == "developer") role = "system";
    if (*role != "system" && *role != "user" && *role != "assistant" && *role != "tool") {
      reject("'" + field + ".role' must be one of system, developer, user, assistant, tool",
             field + ".role");
    }
    const json* content = mf.get("content");
    std::string text;
    if (content) {
      text = message_content(*content, field + ".content");
    } else if (*role != "assistant") {
      reject("'" + field + ".content' is required", field + ".content");
    }
    ChatMessage message{*role, std::move(text)};
    parse_history_fields(mf, field, message);
    r.messages.push_back(std::move(message));
  }
}

void parse_stop(const Fields& f, const ProtocolLimits& limits, ApiRequest& r) {
  const json* stop = f.get("stop");
  if (!stop) return;
  auto add = [&](const json& s, const std::string& field) {
    if (!s.is_string()) wrong_type(field, "a string", s);
    std::string text = s.get<std::string>();
    if (text.empty()) reject("'" + field + "' must not be empty", "stop");
    if (text.size() > static_cast<size_t>(limits.max_stop_string_bytes)) {
      reject("'" + field + "' is longer than " + std::to_string(limits.max_stop_string_bytes) +
                 " bytes",
             "stop");
    }
    r.stop.push_back(std::move(text));
  };
  if (stop->is_string()) {
    add(*stop, "stop");
  } else if (stop->is_array()) {
    if (stop->size() > static_cast<size_t>(limits.max_stop_strings)) {
      reject("'stop' holds more than " + std::to_string(limits.max_stop_strings) + " strings",
             "stop");
    }
    for (size_t i = 0; i < stop->size(); ++i) add((*stop)[i], "stop[" + std::to_string(i) + "]");
  } else {
    wrong_type("stop", "a string or an array of strings", *stop);
  }
}

int32_t checked_int32(int64_t v, const std::string& field, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    reject("'" + field + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
               "], got " + std::to_string(v),
           field);
  }
  return static_cast<int32_t>(v);
}

void parse_sampling(const Fields& f, ApiRequest& r) {
  SamplingParams& s = r.sampling;
  if (auto v = f.number("temperature")) s.temperature = static_cast<float>(*v);
  if (auto v = f.number("top_p")) s.top_p = static_cast<float>(*v);
  if (auto v = f.number("min_p")) s.min_p = static_cast<float>(*v);
  if (auto v = f.integer("top_k")) s.top_k = checked_int32(*v, "top_k", -1, 1 << 30);
  if (auto v = f.number("presence_penalty")) s.presence_penalty = static_cast<float>(*v);
  if (auto v = f.number("frequency_penalty")) s.frequency_penalty = static_cast<float>(*v);
  if (auto v = f.number("repetition_penalty")) s.repetition_penalty = static_cast<float>(*v);
  if (const json* seed = f.get("seed")) {
    if (seed->is_number_unsigned()) {
      s.seed = seed->get<uint64_t>();
    } else {
      s.seed = static_cast<uint64_t>(Fields::as_integer(*seed, "seed"));
    }
  }
  if (auto v = f.boolean("ignore_eos")) s.ignore_eos = *v;
  if (const json* ids = f.get("stop_token_ids")) {
    if (!ids->is_array()) wrong_type("stop_token_ids", "an array of token ids", *ids);
    s.stop_token_ids = token_id_list(*ids, "stop_token_ids");
  }
  const char* max_field = "max_tokens";
  std::optional<int64_t> max_tokens = f.integer("max_tokens");
  if (r.endpoint == Endpoint::kChatCompletions) {
    if (auto v = f.integer("max_completion_tokens")) {
      max_tokens = v;
      max_field = "max_completion_tokens";
    }
  }
  if (max_tokens) {
    r.max_tokens = checked_int32(*max_tokens, max_field, 1, std::numeric_limits<int32_t>::max());
  }
  s.max_tokens = r.max_tokens.value_or(16);
  for (float* x : {&s.temperature, &s.top_p, &s.min_p, &s.presence_penalty, &s.frequency_penalty,
                   &s.repetition_penalty}) {
    if (std::isinf(*x)) *x = std::numeric_limits<float>::quiet_NaN();  // out of every range
  }
  try {
    s.validate();
  } catch (const Error& e) {
    const std::string& message = e.message();
    reject(message, message.substr(0, message.find(' ')));
  }
}

// logprobs (completions: top-N integer; chat: boolean + top_logprobs) and echo (completions).
void parse_logprobs(const Fields& f, ApiRequest& r) {
  std::optional<int64_t> top;
  const char* field = "logprobs";
  if (r.endpoint == Endpoint::kCompletions) {
    top = f.integer("logprobs");
    r.echo = f.boolean("echo").value_or(false);
  } else {
    const bool wanted = f.boolean("logprobs").value_or(false);
    const std::optional<int64_t> top_logprobs = f.integer("top_logprobs");
    if (top_logprobs.value_or(0) > 0 && !wanted) {
      reject("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
    }
    if (wanted) top = top_logprobs.value_or(0);
    field = "top_logprobs";
  }
  if (!top) return;
  r.sampling.logprobs = checked_int32(*top, field, 0, kMaxTopLogprobs);
  if (r.echo) {
    // Prompt logprobs would need the LM head over every prompt position; the engine computes
    // only the sampled rows, so the pair is refused rather than answered without them.
    reject(
        "'echo' together with 'logprobs' is not supported by this server (prompt logprobs "
        "are not computed); drop one of 'echo' and 'logprobs'",
        "echo");
  }
}

// response_format, guided_json/regex/choice and structured_outputs (both endpoints, as vLLM):
// the JSON Schema or the pattern the output must follow.
void parse_output_constraint(const json& body, ApiRequest& r) {
  std::string field;
  OutputConstraint c;
  try {
    c = read_output_constraint(body, &field);
  } catch (const Error& e) {
    reject(e.message(), field.empty() ? "response_format" : field);
  }
  r.sampling.json_schema = std::move(c.json_schema);
  r.sampling.regex = std::move(c.regex);
  if (r.sampling.constrained() && r.sampling.ignore_eos) {
    reject(
        "'ignore_eos' cannot be combined with a constrained output (response_format, guided_* "
        "or structured_outputs: the output ends when it is complete)",
        "ignore_eos");
  }
}

// Features alem does not implement: rejected clearly rather than silently ignored.
void reject_unsupported(const Fields& f, const ApiRequest& r) {
  if (r.endpoint == Endpoint::kCompletions) {
    if (!f.string("suffix").value_or("").empty()) {
      reject("'suffix' is not supported by this server", "suffix");
    }
  } else {
    const json* tools = f.get("tools");
    const json* choice = f.get("tool_choice");
    const bool tools_off = choice && choice->is_string() && choice->get<std::string>() == "none";
    if (tools && !tools->is_array()) wrong_type("tools", "an array", *tools);
    if (tools && !tools->empty() && !tools_off) {
      reject("'tools' are not supported by this server", "tools");
    }
  }
  if (f.get("prompt_logprobs")) {
    reject("'prompt_logprobs' is not supported by this server", "prompt_logprobs");
  }
  // Fields that would change the output and that alem does not implement: refused when their
  // value would have an effect (null, false, "", [] and {} are no-ops and pass), never ignored.
  auto has_effect = [](const json& v) {
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_structured() || v.is_string()) return !v.empty();
    return true;
  };
  for (const char* key :
       {"logit_bias", "logits_processors", "bad_words", "allowed_token_ids", "guided_grammar",
        "guided_whitespace_pattern", "truncate_prompt_tokens", "return_tokens_as_token_ids",
        "functions", "function_call", "chat_template", "mm_processor_kwargs"}) {
    if (const json* v = f.get(key); v && has_effect(*v)) {
      reject("'" + std::string(key) + "' is not supported by this server", key);
    }
  }
  if (r.endpoint == Endpoint::kChatCompletions) {
    if (f.boolean("echo").value_or(false)) reject("'echo' is not supported by this server", "echo");
    if (f.boolean("add_special_tokens").value_or(false)) {
      reject("'add_special_tokens' is not supported by this server", "add_special_tokens");
    }
    if (const json* tool_choice = f.get("tool_choice");
        tool_choice && !(tool_choice->is_string() && (tool_choice->get<std::string>() == "none" ||
                                                      tool_choice->get<std::string>() == "auto"))) {
      reject("'tool_choice' other than \"none\" or \"auto\" is not supported by this server",
             "tool_choice");
    }
    // COCOON forwards chat_template_kwargs.enable_thinking (Qwen3's switch), which goes to the
    // template (a template without the switch ignores it, as in transformers). Any other key is
    // refused rather than passed on unchecked.
    if (const json* kwargs = f.get("chat_template_kwargs")) {
      if (!kwargs->is_object()) wrong_type("chat_template_kwargs", "an object", *kwargs);
      for (const auto& [key, value] : kwargs->items()) {
        if (key != "enable_thinking") {
          reject("'chat_template_kwargs' holds a key this server does not support",
                 "chat_template_kwargs");
        }
      }
    }
  }
  if (const json* options = f.get("stream_options")) {
    if (Fields(*options, "stream_options.").boolean("continuous_usage_stats").value_or(false)) {
      reject("'stream_options.continuous_usage_stats' is not supported by this server",
             "stream_options");
    }
  }
  if (f.integer("min_tokens").value_or(0) > 0) {
    reject("'min_tokens' is not supported by this server", "min_tokens");
  }
  if (f.boolean("use_beam_search").value_or(false)) {
    reject("'use_beam_search' is not supported by this server", "use_beam_search");
  }
  if (auto best_of = f.integer("best_of"); best_of && *best_of != r.n) {
    reject("'best_of' must equal 'n' (" + std::to_string(r.n) + ") on this server", "best_of");
  }
}

}  // namespace

bool model_name_matches(const std::string& requested, const std::string& served) {
  if (requested == served) return true;
  const size_t slash = served.rfind('/');
  return slash != std::string::npos && requested == served.substr(slash + 1);
}

ApiRequest parse_request(std::string_view body, Endpoint endpoint, const std::string& served_model,
                         const ProtocolLimits& limits) {
  json root = parse_body(body);
  struct WipeJson {  // the parsed tree holds the prompt text too
    json& j;
    ~WipeJson() { wipe_json_strings(j); }
  } wipe_tree{root};
  if (!root.is_object()) wrong_type("request body", "a JSON object", root);
  const Fields f(root);

  ApiRequest r;
  r.endpoint = endpoint;
  const std::optional<std::string> model = f.string("model");
  if (!model) reject("'model' is required", "model");
  r.model = *model;
  if (!model_name_matches(r.model, served_model)) {
    throw ApiException(ApiError::model_not_found(r.model));
  }

  if (endpoint == Endpoint::kCompletions) {
    parse_prompt(f, limits, r);
  } else {
    parse_messages(f, r);
    r.add_generation_prompt = f.boolean("add_generation_prompt").value_or(true);
    if (const json* kwargs = f.get("chat_template_kwargs"); kwargs && kwargs->is_object()) {
      r.enable_thinking = Fields(*kwargs, "chat_template_kwargs.").boolean("enable_thinking");
    }
  }

  if (auto n = f.integer("n")) r.n = checked_int32(*n, "n", 1, limits.max_n);
  r.stream = f.boolean("stream").value_or(false);
  if (const json* options = f.get("stream_options")) {
    if (!options->is_object()) wrong_type("stream_options", "an object", *options);
    if (!r.stream) {
      reject("'stream_options' may only be given when 'stream' is true", "stream_options");
    }
    r.include_usage = Fields(*options, "stream_options.").boolean("include_usage").value_or(false);
  }
  parse_stop(f, limits, r);
  parse_sampling(f, r);
  parse_output_constraint(root, r);
  r.include_stop_str_in_output = f.boolean("include_stop_str_in_output").value_or(false);
  r.skip_special_tokens = f.boolean("skip_special_tokens").value_or(true);
  r.user = f.string("user").value_or("");
  parse_logprobs(f, r);
  reject_unsupported(f, r);
  return r;
}

int32_t resolve_max_tokens(const ApiRequest& request, int64_t prompt_tokens,
                           int64_t max_model_len) {
  if (prompt_tokens == 0) reject("the prompt is empty", "prompt");
  const char* field = request.endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
  if (prompt_tokens >= max_model_len) {
    reject("This model's maximum context length is " + std::to_string(max_model_len) +
               " tokens. However, your prompt has " + std::to_string(prompt_tokens) +
               " tokens, which leaves no room for a completion. Please reduce the length of the "
               "prompt.",
           field);
  }
  const int64_t room = max_model_len - prompt_tokens;
  if (!request.max_tokens) {
    if (request.endpoint == Endpoint::kCompletions)
      return static_cast<int32_t>(std::min<int64_t>(16, room));
    return static_cast<int32_t>(room);
  }
  if (*request.max_tokens > room) {
    reject("This model's maximum context length is " + std::to_string(max_model_len) +
               " tokens. However, you requested " +
               std::to_string(prompt_tokens + *request.max_tokens) + " tokens (" +
               std::to_string(prompt_tokens) + " in the prompt, " +
               std::to_string(*request.max_tokens) +
               " in the completion). Please reduce the length of the prompt or completion.",
           "max_tokens");
  }
  return *request.max_tokens;
}

void check_token_ids(const std::vector<int32_t>& ids, int32_t vocab_size) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      reject("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                 std::to_string(vocab_size) + ")",
             "prompt");
    }
  }
}

// ---- responses ----

json Usage::to_json() const {
  return json{{"prompt_tokens", prompt_tokens},
              {"completion_tokens", completion_tokens},
              {"total_tokens", prompt_tokens + completion_tokens},
              {"prompt_tokens_details", {{"cached_tokens", cached_tokens}}},
              {"completion_tokens_details", {{"reasoning_tokens", reasoning_tokens}}}};
}

std::string make_response_id(Endpoint endpoint) {
  thread_local std::mt19937_64 gen{std::random_device{}()};
  static const char* kHex = "0123456789abcdef";
  std::string id = endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 2; ++i) {
    uint64_t bits = gen();
    for (int j = 0; j < 16; ++j, bits >>= 4) id += kHex[bits & 15];
  }
  return id;
}

namespace {

json finish_value(FinishReason reason) {
  return reason == FinishReason::kNone ? json(nullptr) : json(finish_reason_name(reason));
}

}  // namespace

json completion_response(Endpoint endpoint, const std::string& id, int64_t created,
                         const std::string& model, const std::vector<ChoiceResult>& choices,
                         const Usage& usage) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  json out_choices = json::array();
  for (const ChoiceResult& c : choices) {
    json choice = {{"index", c.index}};
    if (chat) {
      choice["message"] = {
          {"role", "assistant"}, {"content", c.text}, {"tool_calls", json::array()}};
      if (c.reasoning) {  // a reasoning model: null when it did not think (as vLLM)
        choice["message"]["reasoning_content"] =
            c.reasoning->empty() ? json(nullptr) : json(*c.reasoning);
      }
    } else {
      choice["text"] = c.text;
    }
    choice["logprobs"] = c.logprobs;
    choice["finish_reason"] = finish_value(c.finish_reason);
    choice["stop_reason"] = c.stop_reason;
    out_choices.push_back(std::move(choice));
  }
  return json{{"id", id},
              {"object", chat ? "chat.completion" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", std::move(out_choices)},
              {"usage", usage.to_json()}};
}

json stream_chunk(Endpoint endpoint, const std::string& id, int64_t created,
                  const std::string& model, int index, const std::string& text, bool first,
                  FinishReason finish_reason, bool include_usage, const std::string& reasoning,
                  const json& logprobs, const json& stop_reason) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  json choice = {{"index", index}};
  if (chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!reasoning.empty()) delta["reasoning_content"] = reasoning;
    if (first || !text.empty()) delta["content"] = text;
    choice["delta"] = std::move(delta);
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish_value(finish_reason);
  if (finish_reason != FinishReason::kNone) choice["stop_reason"] = stop_reason;
  json chunk = {{"id", id},
                {"object", chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"choices", json::array({std::move(choice)})}};
  if (include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json usage_chunk(Endpoint endpoint, const std::string& id, int64_t created,
                 const std::string& model, const Usage& usage) {
  const bool chat = endpoint == Endpoint::kChatCompletions;
  return json{{"id", id},
              {"object", chat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"choices", json::array()},
              {"usage", usage.to_json()}};
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& value) {
  return "data: " + dump_json(value) + "\n\n";
}

json models_response(const std::string& served_model, int64_t created, int64_t max_model_len) {
  return json{{"object", "list"},
              {"data", json::array({{{"id", served_model},
                                     {"object", "model"},
                                     {"created", created},
                                     {"owned_by", "alem"},
                                     {"root", served_model},
                                     {"parent", nullptr},
                                     {"max_model_len", max_model_len}}})}};
}

}  // namespace alem::serve
