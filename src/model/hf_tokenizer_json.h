// Converts a Hugging Face tokenizer.json (the `tokenizers` library's format) into the
// TokenizerData alem stores: byte-level BPE vocabulary, merges (either "a b" strings or [a, b]
// pairs), added tokens (special ones become TokenKind::Control), and a guess of the
// pre-tokenizer regex family from the pre_tokenizer section. Only byte-level BPE is accepted.
#pragma once

#include <string>

#include "model/tokenizer_data.h"

namespace alem {

// Parses tokenizer.json text. `source` names the file in error messages.
TokenizerData tokenizer_data_from_hf_json(const std::string& json_text,
                                          const std::string& source = "tokenizer.json");

// Reads <dir>/tokenizer.json, then, when present, <dir>/tokenizer_config.json for the chat
// template, add_bos_token and the bos/eos/pad tokens (by content).
TokenizerData load_hf_tokenizer(const std::string& dir);

}  // namespace alem
