// A served model for serving-layer tests that need a real tokenizer but no weights: the 256 byte
// tokens of GPT-2's byte-level scheme and no merges, so token id = byte and every text
// round-trips. Shared by the HTTP server and logprobs tests.
#pragma once

#include <memory>
#include <string>

#include "model/tokenizer.h"
#include "model/unicode_bytes.h"
#include "serve/completion_session.h"

namespace alem {

struct ByteLevelModel {
  explicit ByteLevelModel(std::string name) {
    data.pre_tokenizer = "gpt2";
    for (int b = 0; b < 256; ++b) {
      std::string token;
      append_utf8(token, byte_to_unicode(static_cast<unsigned char>(b)));
      data.tokens.push_back(token);
      data.token_kinds.push_back(static_cast<int32_t>(TokenKind::Normal));
    }
    tokenizer = std::make_unique<Tokenizer>(data);
    served.name = std::move(name);
    served.tokenizer = tokenizer.get();
    served.tokenizer_data = &data;
  }
  TokenizerData data;
  std::unique_ptr<Tokenizer> tokenizer;
  serve::ServedModel served;
};

}  // namespace alem
