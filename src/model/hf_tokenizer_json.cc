// tokenizer.json -> TokenizerData. The pre-tokenizer family is inferred from the structure the
// `tokenizers` library writes: SmolLM-style Sequence[Digits(individual), ByteLevel] -> "smollm",
// a Split regex with \p{N}{1,3} -> "llama3", a Split regex with single \p{N} -> "qwen2",
// a bare ByteLevel -> "gpt2".
#include "model/hf_tokenizer_json.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_input.h"

namespace alem {
namespace {

using nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Bounded nesting (core/json_input.h): a deeply nested file is an error, not a stack overflow.
json parse(const std::string& text, const std::string& source) {
  try {
    return parse_json_bounded(text);
  } catch (const JsonInputError& e) {
    ALEM_FAIL(source + " is not valid JSON: " + e.what());
  }
}

// Collects every pre-tokenizer node (flattening Sequence) into `out`.
void flatten_pre_tokenizers(const json& node, std::vector<json>& out) {
  if (!node.is_object()) return;
  if (node.value("type", "") == "Sequence" && node.contains("pretokenizers")) {
    for (const json& child : node["pretokenizers"]) flatten_pre_tokenizers(child, out);
  } else {
    out.push_back(node);
  }
}

std::string guess_pre_tokenizer(const json& root) {
  std::vector<json> nodes;
  if (root.contains("pre_tokenizer")) flatten_pre_tokenizers(root["pre_tokenizer"], nodes);
  bool digits_individual = false;
  bool byte_level_regex = false;
  for (const json& n : nodes) {
    const std::string type = n.value("type", "");
    if (type == "Split" && n.contains("pattern") && n["pattern"].is_object()) {
      const std::string re = n["pattern"].value("Regex", "");
      if (re.find("\\p{N}{1,3}") != std::string::npos) return "llama3";
      if (re.find("\\p{N}") != std::string::npos) return "qwen2";
    }
    if (type == "Digits") digits_individual = n.value("individual_digits", false);
    if (type == "ByteLevel") byte_level_regex = n.value("use_regex", true);
  }
  if (digits_individual) return "smollm";
  if (byte_level_regex) return "gpt2";
  return "gpt2";
}

bool mentions_byte_level(const json& root) {
  for (const char* section : {"pre_tokenizer", "decoder"}) {
    if (root.contains(section) && root[section].dump().find("\"ByteLevel\"") != std::string::npos) {
      return true;
    }
  }
  return false;
}

// A special-token field of tokenizer_config.json: "text" or {"content": "text", ...}.
std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return "";
}

int find_token(const TokenizerData& t, const std::string& text) {
  if (text.empty()) return -1;
  for (size_t i = 0; i < t.tokens.size(); ++i) {
    if (t.tokens[i] == text) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace

TokenizerData tokenizer_data_from_hf_json(const std::string& json_text, const std::string& source) {
  const json root = parse(json_text, source);
  ALEM_CHECK(root.is_object() && root.contains("model") && root["model"].is_object(),
             source + " has no \"model\" object");
  const json& model = root["model"];
  const std::string type = model.value("type", "");
  ALEM_CHECK(type == "BPE", source + " has tokenizer model type '" + type +
                                "'; alem supports byte-level BPE only");
  ALEM_CHECK(!model.value("byte_fallback", false) && mentions_byte_level(root),
             source +
                 " is a BPE tokenizer without ByteLevel pre-tokenizer/decoder "
                 "(SentencePiece-style byte fallback is not supported)");
  ALEM_CHECK(model.contains("vocab") && model["vocab"].is_object(),
             source + " has no model.vocab object");

  TokenizerData t;
  t.model = "gpt2";
  t.pre_tokenizer = guess_pre_tokenizer(root);
  std::vector<std::pair<int64_t, std::pair<std::string, TokenKind>>> entries;
  int64_t max_id = -1;
  for (const auto& [text, id] : model["vocab"].items()) {
    ALEM_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (1 << 24),
               source + ": vocab entry '" + text + "' has an invalid id");
    entries.push_back({id.get<int64_t>(), {text, TokenKind::Normal}});
    max_id = std::max(max_id, id.get<int64_t>());
  }
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json& a : root["added_tokens"]) {
      ALEM_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() &&
                     a.contains("content") && a["content"].is_string(),
                 source + ": an added_tokens entry lacks id or content");
      const int64_t id = a["id"].get<int64_t>();
      ALEM_CHECK(id >= 0 && id < (1 << 24),
                 source + ": added token id " + std::to_string(id) + " is out of range");
      const TokenKind kind =
          a.value("special", false) ? TokenKind::Control : TokenKind::UserDefined;
      entries.push_back({id, {a["content"].get<std::string>(), kind}});
      max_id = std::max(max_id, id);
    }
  }
  ALEM_CHECK(max_id >= 0, source + " has an empty vocabulary");
  t.tokens.assign(static_cast<size_t>(max_id + 1), "");
  t.token_kinds.assign(static_cast<size_t>(max_id + 1), static_cast<int32_t>(TokenKind::Unused));
  std::vector<bool> seen(static_cast<size_t>(max_id + 1), false);
  for (const auto& [id, value] : entries) {
    // An added token may repeat a vocab entry with the same id; it then only sets the kind.
    if (seen[id]) {
      ALEM_CHECK(t.tokens[id] == value.first, source + ": id " + std::to_string(id) +
                                                  " names two different tokens '" + t.tokens[id] +
                                                  "' and '" + value.first + "'");
    }
    seen[id] = true;
    t.tokens[id] = value.first;
    if (value.second != TokenKind::Normal ||
        t.token_kinds[id] == static_cast<int32_t>(TokenKind::Unused)) {
      t.token_kinds[id] = static_cast<int32_t>(value.second);
    }
  }
  if (model.contains("merges") && model["merges"].is_array()) {
    t.merges.reserve(model["merges"].size());
    for (const json& m : model["merges"]) {
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        ALEM_CHECK(s.find(' ') != std::string::npos, source + ": merge '" + s + "' has no space");
        t.merges.push_back(s);
      } else {
        ALEM_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                   source + ": a merge is neither \"a b\" nor [\"a\", \"b\"]");
        t.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      }
    }
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    t.unknown_token_id = find_token(t, model["unk_token"].get<std::string>());
  }
  return t;
}

TokenizerData load_hf_tokenizer(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string tokenizer_path = (fs::path(dir) / "tokenizer.json").string();
  ALEM_CHECK(fs::exists(tokenizer_path),
             "Hugging Face model folder " + dir + " has no tokenizer.json");
  TokenizerData t = tokenizer_data_from_hf_json(read_file(tokenizer_path), tokenizer_path);
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  if (fs::exists(config_path)) {
    const json c = parse(read_file(config_path), config_path);
    if (c.contains("chat_template") && c["chat_template"].is_string()) {
      t.chat_template = c["chat_template"].get<std::string>();
    }
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) {
      t.add_bos_token = c["add_bos_token"].get<bool>();
    }
    if (c.contains("bos_token")) t.bos_token_id = find_token(t, token_content(c["bos_token"]));
    if (c.contains("eos_token")) t.eos_token_id = find_token(t, token_content(c["eos_token"]));
    if (c.contains("pad_token")) t.padding_token_id = find_token(t, token_content(c["pad_token"]));
    if (c.contains("unk_token")) {
      const int unk = find_token(t, token_content(c["unk_token"]));
      if (unk >= 0) t.unknown_token_id = unk;
    }
  }
  // transformers 5 may keep the template in a separate file.
  const std::string jinja_path = (fs::path(dir) / "chat_template.jinja").string();
  if (t.chat_template.empty() && fs::exists(jinja_path)) t.chat_template = read_file(jinja_path);
  return t;
}

}  // namespace alem
