// The simulator's client load generator: builds and seals requests, opens and checks answers
// (see netsim_client.h).
#include "network/netsim_client.h"

#include <sodium.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_input.h"
#include "network/provider.pb.h"

namespace alem::netsim {

namespace {

using nlohmann::json;

const char* const kPrompts[] = {
    "The capital of France is",     "List three colours:", "Water boils at",
    "Write a haiku about the sea.", "What is 2 + 2?",      "Name a planet in the solar system.",
};

std::string random_request_id() {
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  std::string id(network::kRequestIdBytes, '\0');
  randombytes_buf(id.data(), id.size());
  return id;
}

bool is_chat(const std::string& endpoint) {
  return endpoint == "/v1/chat/completions";
}

// Wipes a string or a JSON value holding answer text when it goes out of scope, on every path.
struct TextWiper {
  std::string* text = nullptr;
  json* value = nullptr;
  ~TextWiper() {
    if (text) network::wipe_string(*text);
    if (value) wipe_json_strings(*value);  // no recursion, however deep the value
  }
};

}  // namespace

struct LoadGenerator::ClientRequest {
  std::string id;
  network::X25519KeyPair key = network::X25519KeyPair::generate();
  std::string endpoint;
  std::string body;  // the full JSON body sent
  std::optional<std::string> expect_text;
  uint32_t max_tokens = 0;
  ~ClientRequest() {
    network::wipe_string(body);
    if (expect_text) network::wipe_string(*expect_text);
  }
};

std::vector<RequestTemplate> builtin_request_mix(uint32_t max_tokens) {
  std::vector<RequestTemplate> mix;
  size_t n = sizeof kPrompts / sizeof kPrompts[0];
  for (size_t i = 0; i < 2 * n; ++i) {
    const char* prompt = kPrompts[i % n];
    bool chat = i % 2 == 1;
    bool greedy = (i / 2) % 2 == 0;
    json body;
    if (chat) {
      body["messages"] = json::array({{{"role", "user"}, {"content", prompt}}});
    } else {
      body["prompt"] = prompt;
    }
    body["max_tokens"] = max_tokens;
    if (greedy) {
      body["temperature"] = 0;
    } else {
      body["temperature"] = 0.8;
      body["top_p"] = 0.9;
      body["seed"] = static_cast<int>(i + 1);
    }
    mix.push_back({chat ? "/v1/chat/completions" : "/v1/completions", body.dump(), std::nullopt});
  }
  return mix;
}

std::vector<RequestTemplate> read_request_file(const std::string& path) {
  std::ifstream in(path);
  ALEM_CHECK(in, "cannot open the request file " + path);
  std::vector<RequestTemplate> out;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = path + " line " + std::to_string(line_no);
    json entry;
    try {
      entry = parse_json_bounded(line);
    } catch (const JsonInputError& e) {
      ALEM_FAIL(where + ": not valid JSON (" + e.what() + ")");
    }
    ALEM_CHECK(entry.is_object(), where + ": not a JSON object");
    ALEM_CHECK(entry.contains("endpoint") && entry["endpoint"].is_string(),
               where + ": needs \"endpoint\"");
    std::string endpoint = entry["endpoint"];
    ALEM_CHECK(endpoint == "/v1/completions" || is_chat(endpoint),
               where + ": endpoint must be /v1/completions or /v1/chat/completions");
    ALEM_CHECK(entry.contains("body") && entry["body"].is_object(),
               where + ": needs \"body\", an object");
    RequestTemplate t{endpoint, entry["body"].dump(), std::nullopt};
    if (entry.contains("expect_text")) {
      ALEM_CHECK(entry["expect_text"].is_string(), where + ": expect_text must be a string");
      t.expect_text = entry["expect_text"].get<std::string>();
    }
    out.push_back(std::move(t));
  }
  ALEM_CHECK(!out.empty(), "the request file " + path + " holds no requests");
  return out;
}

LoadGenerator::LoadGenerator(const LoadConfig& config, const network::X25519PublicKey& provider_key)
    : config_(config), provider_key_(provider_key) {
  ALEM_CHECK(config_.requests > 0, "the load needs at least one request");
  ALEM_CHECK(!config_.model.empty(), "the load needs a model name");
  std::vector<RequestTemplate> mix = config_.requests_file.empty()
                                         ? builtin_request_mix(config_.max_tokens)
                                         : read_request_file(config_.requests_file);
  for (uint64_t i = 0; i < config_.requests; ++i) {
    const RequestTemplate& t = mix[i % mix.size()];
    auto r = std::make_unique<ClientRequest>();
    r->id = random_request_id();
    r->endpoint = t.endpoint;
    json body = parse_json_bounded(t.body);
    body["model"] = config_.model;
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    if (body.contains("max_completion_tokens") && body["max_completion_tokens"].is_number()) {
      r->max_tokens = body["max_completion_tokens"];
    } else if (body.contains("max_tokens") && body["max_tokens"].is_number()) {
      r->max_tokens = body["max_tokens"];
    }
    r->body = body.dump();
    r->expect_text = t.expect_text;
    index_[r->id] = requests_.size();
    requests_.push_back(std::move(r));
  }
}

LoadGenerator::~LoadGenerator() = default;

const std::string& LoadGenerator::request_id(size_t index) const {
  ALEM_CHECK(index < requests_.size(), "request index out of range");
  return requests_[index]->id;
}

long LoadGenerator::index_of(const std::string& request_id) const {
  auto it = index_.find(request_id);
  return it == index_.end() ? -1 : static_cast<long>(it->second);
}

std::string LoadGenerator::payload_bytes(const ClientRequest& r) const {
  network::v1::RequestPayload payload;
  payload.set_client_public_key(r.key.public_key().data(), r.key.public_key().size());
  payload.set_endpoint(r.endpoint);
  payload.set_body(r.body);
  std::string bytes = payload.SerializeAsString();
  network::wipe_string(*payload.mutable_body());
  return bytes;
}

std::string LoadGenerator::seal(size_t index) const {
  return seal_to(index, provider_key_);
}

std::string LoadGenerator::seal_to(size_t index, const network::X25519PublicKey& recipient) const {
  ALEM_CHECK(index < requests_.size(), "request index out of range");
  const ClientRequest& r = *requests_[index];
  std::string plain = payload_bytes(r);
  std::string sealed = network::seal(recipient, r.id, network::kPurposeRequest, plain);
  network::wipe_string(plain);
  return sealed;
}

Verdict LoadGenerator::verify(const std::string& request_id,
                              const std::map<uint32_t, std::string>& chunks,
                              const FinalReport& final_report) const {
  Verdict v;
  long index = index_of(request_id);
  if (index < 0) {
    v.reason = "not a request of this load";
    return v;
  }
  const ClientRequest& r = *requests_[index];
  const bool chat = is_chat(r.endpoint);
  const UsageRecord& usage = final_report.usage;
  v.completion_tokens = usage.completion_tokens;
  auto fail = [&](const std::string& why) {
    v.ok = false;
    v.reason = why;
    return v;
  };
  if (chunks.empty()) return fail("no answer chunks arrived");
  if (final_report.chunk_count != chunks.size()) {
    return fail("final says " + std::to_string(final_report.chunk_count) + " chunks, " +
                std::to_string(chunks.size()) + " arrived");
  }
  if (chunks.rbegin()->first != chunks.size() - 1) return fail("chunk sequence has gaps");

  std::string text, response_id, finish;
  TextWiper text_wiper{&text, nullptr};
  uint32_t text_chunks = 0;
  bool usage_seen = false;
  for (const auto& [seq, sealed] : chunks) {
    std::string where = "chunk " + std::to_string(seq) + ": ";
    auto opened = network::open_envelope(r.key, r.id, network::chunk_purpose(seq), sealed);
    if (!opened.ok()) {
      return fail(where + "does not open (" + network::open_error_name(opened.error) + ")");
    }
    std::string_view data = opened.payload.view();
    if (data.substr(0, 6) == "data: ") data.remove_prefix(6);
    while (!data.empty() && (data.back() == '\n' || data.back() == '\r')) data.remove_suffix(1);
    if (data == "[DONE]") continue;
    json chunk;
    try {
      chunk = parse_json_bounded(data);
    } catch (const JsonInputError& e) {
      return fail(where + "not valid JSON (" + e.reason() + ")");
    }
    TextWiper chunk_wiper{nullptr, &chunk};
    if (!chunk.is_object()) return fail(where + "not a JSON object");
    const char* object = chat ? "chat.completion.chunk" : "text_completion";
    if (chunk.value("object", "") != object) return fail(where + "object is not " + object);
    std::string id = chunk.value("id", "");
    if (response_id.empty()) response_id = id;
    if (id.empty() || id != response_id) return fail(where + "response id missing or changed");
    if (!chunk.contains("choices") || !chunk["choices"].is_array()) {
      return fail(where + "no choices array");
    }
    for (const auto& choice : chunk["choices"]) {
      std::string piece;
      if (chat) {
        if (choice.contains("delta") && choice["delta"].contains("content") &&
            choice["delta"]["content"].is_string()) {
          piece = choice["delta"]["content"];
        }
      } else if (choice.contains("text") && choice["text"].is_string()) {
        piece = choice["text"];
      }
      if (!piece.empty()) {
        if (!finish.empty()) return fail(where + "text after the finish reason");
        ++text_chunks;
        text += piece;
        network::wipe_string(piece);
      }
      if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
        if (!finish.empty()) return fail(where + "a second finish reason");
        finish = choice["finish_reason"];
      }
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      const json& u = chunk["usage"];
      usage_seen = true;
      if (u.value("prompt_tokens", -1) != static_cast<int64_t>(usage.prompt_tokens) ||
          u.value("completion_tokens", -1) != static_cast<int64_t>(usage.completion_tokens)) {
        return fail(where + "usage differs from the final message's usage");
      }
      const uint32_t reasoning =
          u.contains("completion_tokens_details") && u["completion_tokens_details"].is_object()
              ? u["completion_tokens_details"].value("reasoning_tokens", 0u)
              : 0u;
      if (reasoning != usage.reasoning_tokens) {
        return fail(where + "reasoning tokens differ from the final message's usage");
      }
    }
  }
  auto wipe_text = [&] { network::wipe_string(text); };
  if (finish.empty()) return wipe_text(), fail("no finish_reason in the chunks");
  if (finish != "stop" && finish != "length") {
    return wipe_text(), fail("finish_reason is '" + finish + "'");
  }
  if (finish != final_report.finish_reason) {
    return wipe_text(), fail("final finish_reason '" + final_report.finish_reason +
                             "' differs from the chunks' '" + finish + "'");
  }
  if (!usage_seen) return wipe_text(), fail("no usage chunk (include_usage was asked)");
  if (usage.prompt_tokens == 0) return wipe_text(), fail("usage has no prompt tokens");
  if (usage.completion_tokens < text_chunks) {
    return wipe_text(), fail(std::to_string(text_chunks) + " text chunks but only " +
                             std::to_string(usage.completion_tokens) + " completion tokens");
  }
  if (r.max_tokens > 0) {
    if (usage.completion_tokens > r.max_tokens) {
      return wipe_text(), fail("more completion tokens than max_tokens");
    }
    if (finish == "length" && usage.completion_tokens != r.max_tokens) {
      return wipe_text(), fail("finish_reason length before max_tokens");
    }
  }
  if (finish == "length" && usage.completion_tokens == 0) {
    return wipe_text(), fail("finish_reason length with no tokens");
  }
  if (r.expect_text && text != *r.expect_text) {
    return wipe_text(), fail("greedy text differs from the expected text");
  }
  wipe_text();
  v.ok = true;
  return v;
}

}  // namespace alem::netsim
