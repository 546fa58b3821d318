// Checks alem's tokenizer against Hugging Face `tokenizers`: tests/data/tokenizer_reference.json
// holds the ids HF produced for every corpus string under four pre-tokenizers, HF's decodings,
// HF's white-space/letter/number class for every code point, and Python's U+FFFD replacements
// (scripts/reference/make_tokenizer_reference.py). The tokenizer is built from the real GGUF.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <gtest/gtest.h>
#include <pcre2.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/error.h"
#include "model/gguf_reader.h"
#include "model/tokenizer.h"
#include "model/unicode_bytes.h"
#include "tests/test_env.h"

namespace alem {
namespace {

using nlohmann::json;

const TokenizerData& smollm_data() {
  static const TokenizerData data = GgufFile(test::gguf_path()).tokenizer_data();
  return data;
}

const Tokenizer& tokenizer_for(const std::string& pre_tokenizer) {
  static std::map<std::string, std::unique_ptr<Tokenizer>> built;
  auto& slot = built[pre_tokenizer];
  if (!slot) {
    TokenizerData data = smollm_data();
    data.pre_tokenizer = pre_tokenizer;
    slot = std::make_unique<Tokenizer>(data);
  }
  return *slot;
}

const json& reference() {
  static const json ref = [] {
    std::ifstream in(test::data_dir() + "/tokenizer_reference.json");
    EXPECT_TRUE(in.good()) << "missing tests/data/tokenizer_reference.json";
    return json::parse(in);
  }();
  return ref;
}

std::vector<int32_t> ids_of(const json& value) {
  return value.get<std::vector<int32_t>>();
}

TEST(Tokenizer, GgufDataMatchesHuggingFace) {
  const json& ref = reference();
  const Tokenizer& tok = tokenizer_for("smollm");
  EXPECT_EQ(smollm_data().pre_tokenizer, "smollm");
  EXPECT_EQ(tok.vocab_size(), ref["vocab_size"].get<int32_t>());
  EXPECT_EQ(tok.bos_id(), ref["bos_token_id"].get<int32_t>());
  EXPECT_EQ(tok.eos_id(), ref["eos_token_id"].get<int32_t>());
  for (const auto& [text, id] : ref["special_tokens"].items()) {
    EXPECT_EQ(tok.token_id(text), id.get<int32_t>()) << text;
    EXPECT_TRUE(tok.is_control(id.get<int32_t>())) << text;
    EXPECT_EQ(tok.token_text(id.get<int32_t>()), text);
  }
  EXPECT_EQ(tok.token_id("no such token, surely"), -1);
  EXPECT_EQ(tok.token_piece(tok.encode(" the")[0]), "\xC4\xA0the");  // "Ġthe"
}

class EncodeMatchesHuggingFace : public ::testing::TestWithParam<std::string> {};

TEST_P(EncodeMatchesHuggingFace, EveryCorpusString) {
  const Tokenizer& tok = tokenizer_for(GetParam());
  const json& cases = reference()["cases"];
  ASSERT_GE(cases.size(), 60u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i]["text"];
    EXPECT_EQ(tok.encode(text), ids_of(cases[i]["ids"][GetParam()]))
        << "corpus string #" << i << ": " << json(text).dump();
  }
}

INSTANTIATE_TEST_SUITE_P(PreTokenizers, EncodeMatchesHuggingFace,
                         ::testing::Values("smollm", "gpt2", "llama3", "qwen2"));

TEST(Tokenizer, PreTokenizersReallyDiffer) {
  // Guards the parameterised test above: the corpus must tell the regexes apart.
  size_t smollm_vs_gpt2 = 0, smollm_vs_llama3 = 0;
  for (const json& c : reference()["cases"]) {
    smollm_vs_gpt2 += c["ids"]["smollm"] != c["ids"]["gpt2"];
    smollm_vs_llama3 += c["ids"]["smollm"] != c["ids"]["llama3"];
  }
  EXPECT_GT(smollm_vs_gpt2, 0u);
  EXPECT_GT(smollm_vs_llama3, 0u);
}

TEST(Tokenizer, SpecialTokensParsedOrNot) {
  const Tokenizer& tok = tokenizer_for("smollm");
  size_t strings_with_specials = 0;
  for (const json& c : reference()["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> plain = tok.encode(text, /*parse_special=*/false);
    EXPECT_EQ(plain, ids_of(c["ids_special_as_text"])) << json(text).dump();
    for (int32_t id : plain) EXPECT_FALSE(tok.is_control(id)) << json(text).dump();
    const std::vector<int32_t> parsed = tok.encode(text);
    strings_with_specials +=
        std::any_of(parsed.begin(), parsed.end(), [&](int32_t id) { return tok.is_control(id); });
  }
  EXPECT_GE(strings_with_specials, 5u);
  EXPECT_EQ(tok.encode("<|im_start|>"), std::vector<int32_t>{1});
  EXPECT_EQ(tok.encode("<|im_end|><|endoftext|>"), (std::vector<int32_t>{2, 0}));
  EXPECT_GT(tok.encode("<|im_start|>", false).size(), 1u);
}

TEST(Tokenizer, DecodeMatchesHuggingFace) {
  const Tokenizer& tok = tokenizer_for("smollm");
  for (const json& c : reference()["cases"]) {
    const std::vector<int32_t> ids = ids_of(c["ids"]["smollm"]);
    // HF returns from_utf8_lossy text; alem returns the bytes (sanitize_utf8 is the lossy step).
    EXPECT_EQ(sanitize_utf8(tok.decode(ids)), c["decoded"].get<std::string>());
    EXPECT_EQ(sanitize_utf8(tok.decode(ids, /*skip_special=*/true)),
              c["decoded_skip_special"].get<std::string>());
  }
  EXPECT_THROW(tok.decode({tok.vocab_size()}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

// The text with every byte the vocabulary has no token for removed: HF (and llama.cpp) drop
// those silently. For SmolLM2 they are 21 bytes: a few C0 controls, C0/C1, F1/F2 and F5..FF.
std::string without_unencodable_bytes(const Tokenizer& tok, const std::string& text) {
  std::string kept;
  for (char b : text) {
    if (tok.token_id(bytes_to_byte_level(std::string(1, b))) >= 0) kept.push_back(b);
  }
  return kept;
}

TEST(Tokenizer, VocabularyLacksSomeBytes) {
  const Tokenizer& tok = tokenizer_for("smollm");
  size_t missing = 0;
  for (int b = 0; b < 256; ++b) {
    missing += tok.token_id(bytes_to_byte_level(std::string(1, static_cast<char>(b)))) < 0;
  }
  EXPECT_EQ(missing, 21u);
  EXPECT_EQ(tok.decode(tok.encode("a\x04"
                                  "b\xFF")),
            "ab");
}

TEST(Tokenizer, RoundTripsAnyBytes) {
  std::vector<std::string> inputs;
  for (const json& c : reference()["cases"]) inputs.push_back(c["text"]);
  inputs.push_back(std::string("\xFF\xFE abc", 6));
  inputs.push_back(
      "abc\x80"
      "def");
  inputs.push_back("truncated \xE4\xBD");
  inputs.push_back("overlong \xC0\xAF and surrogate \xED\xA0\x80 and \xF4\x90\x80\x80");
  inputs.push_back(std::string("nul\0byte 1\x85", 12));
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    std::string random(rng() % 64, '\0');
    for (char& ch : random) ch = static_cast<char>(rng() % 256);
    inputs.push_back(random);
  }
  size_t lossless = 0;
  for (const char* mode : {"smollm", "gpt2", "llama3", "qwen2"}) {
    const Tokenizer& tok = tokenizer_for(mode);
    for (const std::string& text : inputs) {
      const std::string expected = without_unencodable_bytes(tok, text);
      lossless += expected == text;
      for (bool parse_special : {true, false}) {
        const std::vector<int32_t> ids = tok.encode(text, parse_special);
        for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
        EXPECT_EQ(tok.decode(ids), expected)
            << mode << " " << json::binary({text.begin(), text.end()}).dump();
      }
    }
  }
  EXPECT_GT(lossless, 4 * reference()["cases"].size());  // every corpus string but one, and more
}

TEST(Tokenizer, InvalidUtf8IsSplitAtTheBadBytes) {
  const Tokenizer& tok = tokenizer_for("smollm");
  const std::vector<std::string> pieces = tok.pre_tokenize("ab\xFF\xFE cd");
  EXPECT_EQ(pieces, (std::vector<std::string>{"ab", "\xFF\xFE", " cd"}));
  // The valid parts tokenize as they would alone.
  std::vector<int32_t> expected = tok.encode("ab");
  for (const char* part : {"\xFF\xFE", " cd"}) {
    const auto more = tok.encode(part);
    expected.insert(expected.end(), more.begin(), more.end());
  }
  EXPECT_EQ(tok.encode("ab\xFF\xFE cd"), expected);
}

// Classifies a code point the way the reference script probed HF's ByteLevel regex.
char classify(const Tokenizer& gpt2, const std::string& c) {
  if (gpt2.pre_tokenize("!" + c + "!").size() == 1) return 'O';
  if (gpt2.pre_tokenize("a" + c).size() == 1) return 'L';
  if (gpt2.pre_tokenize("1" + c).size() == 1) return 'N';
  return 'S';
}

TEST(Tokenizer, RegexClassesMatchHuggingFaceForEveryCodePoint) {
  std::vector<char> expected(0x110000, 'O');
  for (const json& range : reference()["codepoint_classes"]) {
    const char kind = range[2].get<std::string>()[0];
    for (uint32_t cp = range[0]; cp <= range[1].get<uint32_t>(); ++cp) expected[cp] = kind;
  }
  // PCRE2 knows an older Unicode than HF's Oniguruma; code points it has not assigned yet may
  // differ, all others must agree.
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* unassigned =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>("^\\p{Cn}$"), PCRE2_ZERO_TERMINATED, PCRE2_UTF,
                    &error_code, &error_offset, nullptr);
  ASSERT_NE(unassigned, nullptr);
  pcre2_match_data* match = pcre2_match_data_create(1, nullptr);
  const Tokenizer& gpt2 = tokenizer_for("gpt2");
  size_t compared = 0, newer_unicode = 0, mismatches = 0;
  for (char32_t cp = 0; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string c;
    append_utf8(c, cp);
    const char got = classify(gpt2, c);
    if (got == expected[cp]) {
      ++compared;
      continue;
    }
    const bool pcre2_unassigned = pcre2_match(unassigned, reinterpret_cast<PCRE2_SPTR>(c.data()),
                                              c.size(), 0, 0, match, nullptr) >= 0;
    if (pcre2_unassigned) {
      ++newer_unicode;
    } else if (++mismatches <= 20) {
      ADD_FAILURE() << "U+" << std::hex << uint32_t(cp) << ": alem '" << got << "', HF '"
                    << expected[cp] << "'";
    }
  }
  pcre2_match_data_free(match);
  pcre2_code_free(unassigned);
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(compared, 1000000u);
  std::printf(
      "code points agreeing with HF: %zu; differing only where PCRE2's Unicode is older: "
      "%zu\n",
      compared, newer_unicode);
}

TEST(Tokenizer, NumbersAreIsolatedOnlyForSmolLM) {
  EXPECT_EQ(tokenizer_for("smollm").pre_tokenize("a  12"),
            (std::vector<std::string>{"a", "  ", "1", "2"}));
  EXPECT_EQ(tokenizer_for("gpt2").pre_tokenize("a  12"),
            (std::vector<std::string>{"a", " ", " 12"}));
  EXPECT_EQ(tokenizer_for("llama3").pre_tokenize("x 12345"),
            (std::vector<std::string>{"x", " ", "123", "45"}));
  EXPECT_EQ(tokenizer_for("qwen2").pre_tokenize("x 123"),
            (std::vector<std::string>{"x", " ", "1", "2", "3"}));
}

TEST(Unicode, LossyDecodingMatchesPython) {
  for (const json& c : reference()["lossy_utf8"]) {
    const std::string hex = c["bytes_hex"];
    std::string bytes;
    for (size_t i = 0; i < hex.size(); i += 2) {
      bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    EXPECT_EQ(sanitize_utf8(bytes), c["text"].get<std::string>()) << hex;
    const bool python_found_no_error =
        c["text"].get<std::string>().find("\xEF\xBF\xBD") == std::string::npos;
    EXPECT_EQ(is_valid_utf8(bytes), python_found_no_error) << hex;
  }
  EXPECT_TRUE(is_valid_utf8("\xD2\x9B\xF0\x9F\x98\x80"));  // қ😀
}

TEST(Unicode, ByteAlphabetIsGpt2s) {
  EXPECT_EQ(bytes_to_byte_level(" "), "\xC4\xA0");   // Ġ = U+0120
  EXPECT_EQ(bytes_to_byte_level("\n"), "\xC4\x8A");  // Ċ = U+010A
  EXPECT_EQ(bytes_to_byte_level("A~"), "A~");
  EXPECT_EQ(bytes_to_byte_level("\xAD"), "\xC5\x83");  // soft hyphen byte -> U+0143, the last
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  std::string back;
  ASSERT_TRUE(byte_level_to_bytes(bytes_to_byte_level(all), back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(byte_level_to_bytes("\xE4\xBD\xA0", back));  // 你: outside the alphabet
}

TEST(StreamingDecoder, ReassemblesCharactersSplitAcrossTokens) {
  const Tokenizer& tok = tokenizer_for("smollm");
  size_t held_back = 0;
  for (const json& c : reference()["cases"]) {
    const std::string text = c["text"];
    StreamingDecoder stream(tok);
    std::string out;
    for (int32_t id : ids_of(c["ids"]["smollm"])) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(is_valid_utf8(piece));
      held_back += stream.pending_bytes() > 0;
      out += piece;
    }
    EXPECT_EQ(stream.pending_bytes(), 0u);
    out += stream.flush();
    EXPECT_EQ(out, sanitize_utf8(without_unencodable_bytes(tok, text)));
  }
  EXPECT_GT(held_back, 10u) << "the corpus should split some characters across tokens";

  // One emoji, one byte-token at a time: nothing until the fourth byte.
  StreamingDecoder stream(tok);
  const std::string rocket = "\xF0\x9F\x9A\x80";
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(stream.push(tok.token_id(bytes_to_byte_level(rocket.substr(i, 1)))), "");
  }
  EXPECT_EQ(stream.pending_bytes(), 3u);
  EXPECT_EQ(stream.push(tok.token_id(bytes_to_byte_level(rocket.substr(3, 1)))), rocket);
}

TEST(StreamingDecoder, ReplacesBytesThatCanNeverBeValid) {
  const Tokenizer& tok = tokenizer_for("smollm");
  auto byte_token = [&](char b) { return tok.token_id(bytes_to_byte_level(std::string(1, b))); };
  StreamingDecoder stream(tok);
  ASSERT_LT(byte_token('\xFF'), 0);  // no token for 0xFF in SmolLM2; 0x80 alone is invalid too
  EXPECT_EQ(stream.push(byte_token('\x80')), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.push(byte_token('\xE4')), "");
  EXPECT_EQ(stream.push(byte_token('A')),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(stream.push(byte_token('\xE4')), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
  StreamingDecoder skipping(tok, /*skip_special=*/true);
  EXPECT_EQ(skipping.push(tok.token_id("<|im_end|>")), "");
  EXPECT_EQ(stream.push(tok.token_id("<|im_end|>")), "<|im_end|>");
}

TEST(Tokenizer, RejectsWhatItCannotHonour) {
  TokenizerData data = smollm_data();
  data.pre_tokenizer = "bloom";
  EXPECT_THROW(Tokenizer{data}, Error);
  data = smollm_data();
  data.model = "llama";
  EXPECT_THROW(Tokenizer{data}, Error);
  data = smollm_data();
  data.merges.push_back("no-such-left no-such-right");
  EXPECT_THROW(Tokenizer{data}, Error);
  data = smollm_data();
  data.token_kinds.pop_back();
  EXPECT_THROW(Tokenizer{data}, Error);
}

TEST(Tokenizer, SameIdsFromManyThreads) {
  const Tokenizer& tok = tokenizer_for("smollm");
  const json& cases = reference()["cases"];
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 5; ++round) {
        for (const json& c : cases) {
          if (tok.encode(c["text"].get<std::string>()) != ids_of(c["ids"]["smollm"])) ++mismatches;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Tokenizer, EncodesAtLeastAMegabytePerSecond) {
  std::string text;
  const json& cases = reference()["cases"];
  for (size_t i = 0; text.size() < (4u << 20); ++i) {
    text += cases[i % cases.size()]["text"].get<std::string>();
    text += std::to_string(i * 7919) + " ";  // numbers and variety, so the cache is not all
  }
  const Tokenizer& tok = tokenizer_for("smollm");
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double mb_per_s = text.size() / 1e6 / seconds;
  std::printf("encode: %.1f MB in %.3f s = %.1f MB/s, %zu tokens\n", text.size() / 1e6, seconds,
              mb_per_s, ids.size());
  EXPECT_TRUE(tok.decode(ids) == without_unencodable_bytes(tok, text));  // no 4 MB diff on failure
  EXPECT_GT(mb_per_s, 1.0);
}

}  // namespace
}  // namespace alem
