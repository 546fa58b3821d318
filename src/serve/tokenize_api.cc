// /tokenize and /detokenize (see the header).
#include "serve/tokenize_api.h"

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/json_input.h"
#include "model/chat_template.h"

namespace alem::serve {
namespace {

using json = nlohmann::json;

json parse_object(std::string_view body) {
  json root;
  try {
    root = parse_json_bounded(body);
  } catch (const JsonInputError& e) {
    throw ApiException(ApiError::bad_request(e.what()));
  }
  if (!root.is_object()) {
    throw ApiException(ApiError::bad_request("The request body must be a JSON object."));
  }
  return root;
}

void check_model(const json& root, const ServedModel& model) {
  auto it = root.find("model");
  if (it == root.end() || it->is_null()) return;  // optional, as in vLLM
  if (!it->is_string())
    throw ApiException(ApiError::bad_request("'model' must be a string", "model"));
  if (!model_name_matches(it->get<std::string>(), model.name)) {
    throw ApiException(ApiError::model_not_found(it->get<std::string>()));
  }
}

struct WipeJson {  // the parsed tree holds client text
  json& j;
  ~WipeJson() { wipe_json_strings(j); }
};

}  // namespace

json tokenize_response(std::string_view body, const ServedModel& model, int64_t max_model_len) {
  json root = parse_object(body);
  WipeJson wipe_root{root};
  check_model(root, model);
  const bool chat = root.contains("messages") && !root["messages"].is_null();
  // The completion endpoints' own validation, on just the fields that shape the tokens.
  json request = {{"model", model.name}};
  WipeJson wipe_request{request};
  if (chat) {
    request["messages"] = root["messages"];
    for (const char* key : {"add_generation_prompt", "chat_template_kwargs"}) {
      if (root.contains(key)) request[key] = root[key];
    }
  } else {
    if (!root.contains("prompt") || !root["prompt"].is_string()) {
      throw ApiException(
          ApiError::bad_request("'prompt' (a string) or 'messages' is required", "prompt"));
    }
    request["prompt"] = root["prompt"];
  }
  std::string text = request.dump();
  struct WipeText {
    std::string& s;
    ~WipeText() { secure_wipe(s.data(), s.size()); }
  } wipe_text{text};
  ApiRequest parsed =
      parse_request(text, chat ? Endpoint::kChatCompletions : Endpoint::kCompletions, model.name);
  std::vector<int32_t> ids;
  try {
    if (chat) {
      json kwargs;  // null: no template arguments
      if (parsed.enable_thinking) kwargs["enable_thinking"] = *parsed.enable_thinking;
      ids = encode_chat(parsed.messages, parsed.add_generation_prompt, *model.tokenizer_data,
                        *model.tokenizer, &kwargs);
    } else {
      ids = model.tokenizer->encode(parsed.prompts.front().text, /*parse_special=*/false);
      if (model.tokenizer_data->add_bos_token && model.tokenizer->bos_id() >= 0) {
        ids.insert(ids.begin(), model.tokenizer->bos_id());
      }
    }
  } catch (const Error& e) {  // unsupported template or role; the message names no content
    parsed.wipe();
    throw ApiException(ApiError::bad_request(e.message(), "messages"));
  }
  parsed.wipe();
  json out = {{"count", ids.size()},
              {"max_model_len", max_model_len},
              {"tokens", ids},
              {"token_strs", nullptr}};
  secure_wipe(ids.data(), ids.size() * sizeof(int32_t));
  return out;
}

json detokenize_response(std::string_view body, const ServedModel& model) {
  json root = parse_object(body);
  check_model(root, model);
  auto it = root.find("tokens");
  if (it == root.end() || !it->is_array()) {
    throw ApiException(
        ApiError::bad_request("'tokens' (an array of token ids) is required", "tokens"));
  }
  std::vector<int32_t> ids;
  for (const json& v : *it) {
    if (!v.is_number_integer()) {
      throw ApiException(ApiError::bad_request("'tokens' must hold integer token ids", "tokens"));
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= model.tokenizer->vocab_size()) {
      throw ApiException(ApiError::bad_request(
          "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
              std::to_string(model.tokenizer->vocab_size()) + ")",
          "tokens"));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  std::string text = model.tokenizer->decode(ids);
  json out = {{"prompt", text}};
  secure_wipe(text.data(), text.size());
  secure_wipe(ids.data(), ids.size() * sizeof(int32_t));
  return out;
}

}  // namespace alem::serve
