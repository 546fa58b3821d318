// The raw material of a byte-level BPE tokenizer as stored in GGUF, tokenizer.json and the
// HDF5 model store: the vocabulary, merges, token kinds, special ids, pre-tokenizer name and
// chat template. Tokenizer (tokenizer.h) builds its lookup tables from this.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace alem {

enum class TokenKind : int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,      // special tokens such as <|im_start|>: matched verbatim, never merged
  UserDefined = 4,  // added tokens, also matched verbatim
  Unused = 5,
  Byte = 6,
};

struct TokenizerData {
  std::string model = "gpt2";            // byte-level BPE ("gpt2" in GGUF terms)
  std::string pre_tokenizer = "smollm";  // regex family: "smollm"/"gpt2", "llama3", "qwen2"
  std::vector<std::string> tokens;       // id -> token text (byte-level alphabet, e.g. "Ġthe")
  std::vector<int32_t> token_kinds;      // id -> TokenKind (same length as tokens)
  std::vector<std::string> merges;       // "left right", highest priority first
  int bos_token_id = -1;
  int eos_token_id = -1;
  int unknown_token_id = -1;
  int padding_token_id = -1;
  bool add_bos_token = false;
  std::string chat_template;  // Jinja text as shipped (we implement ChatML, not Jinja)
};

}  // namespace alem
