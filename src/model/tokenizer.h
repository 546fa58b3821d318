// Byte-level BPE tokenizer (GPT-2 family: SmolLM2, Llama 3, Qwen2) built from TokenizerData.
// It reproduces Hugging Face `tokenizers` token for token: added/special tokens are cut out of
// the text first, each stretch between them is split by the model's pre-tokenizer regex
// (PCRE2, UTF + UCP, JIT), every piece is spelled in GPT-2's byte alphabet, and merges are
// applied by rank exactly as HF's BPE model does. docs/tokenizer.md says what is covered and how
// tests/data/tokenizer_reference.json (made by HF itself) checks it.
//
// A Tokenizer is immutable after construction and safe to use from many threads at once (its
// word cache is internally locked).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/tokenizer_data.h"

namespace alem {

class Tokenizer {
 public:
  // Builds the lookup tables. `data.pre_tokenizer` picks the split rules: "smollm" (GPT-2 regex
  // after isolating every \p{N} code point, as SmolLM2's tokenizer.json and llama.cpp do),
  // "gpt2" (the GPT-2 regex alone), "llama3"/"llama-bpe" and "qwen2". Throws alem::Error for an
  // unknown model or pre-tokenizer name, mismatched token/kind counts, or a merge whose parts
  // or result are missing from the vocabulary.
  explicit Tokenizer(const TokenizerData& data);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Token ids for `text` (no BOS is added; the chat template supplies its own markers).
  // parse_special=true: Control tokens (<|im_start|>, <|endoftext|>, ...) written in the text
  // become their ids (leftmost, longest match first). parse_special=false: they are ordinary
  // text, so untrusted input cannot inject them. UserDefined tokens (HF's non-special added
  // tokens) are matched in both modes, as in HF and llama.cpp. Any byte string is accepted:
  // invalid UTF-8 still encodes, byte by byte.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

  // The bytes the ids stand for, concatenated. skip_special drops Control tokens. The result is
  // exactly what was encoded (decode(encode(x)) == x for any x), so it may end inside a UTF-8
  // character when the ids do; pass it through sanitize_utf8 (unicode_bytes.h) or use
  // StreamingDecoder when text must be valid. Throws alem::Error for an id out of range.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;

  // Raw bytes of one token (special tokens give their literal text). Throws when out of range.
  const std::string& token_text(int32_t id) const;
  // The vocabulary entry as stored (byte-level spelling, e.g. "Ġthe"). Throws when out of range.
  const std::string& token_piece(int32_t id) const;
  // Id of the token spelled exactly `text` in the vocabulary (e.g. "<|im_end|>"), or -1.
  int32_t token_id(std::string_view text) const;
  TokenKind token_kind(int32_t id) const;
  // True for Control tokens (the ones skip_special drops and parse_special=false never emits).
  bool is_control(int32_t id) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  const std::string& pre_tokenizer() const;

  // The pieces the pre-tokenizer regex cuts `text` into (special tokens are not looked for).
  // Their concatenation is `text`. For tests and diagnostics.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of token ids into text that is always valid UTF-8, for server streaming: a
// character split across tokens is held back until its last byte arrives. Bytes that can never
// become valid are replaced by U+FFFD, as HF's decode does. The tokenizer must outlive it.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  // Text completed by this token (possibly empty).
  std::string push(int32_t id);
  // Whatever is still held back (a truncated character becomes U+FFFD); the decoder is then
  // empty and can be reused.
  std::string flush();
  // Bytes held back waiting for the rest of a character (0 to 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace alem
