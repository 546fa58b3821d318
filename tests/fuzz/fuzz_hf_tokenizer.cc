// Fuzzes the Hugging Face tokenizer.json importer (src/model/hf_tokenizer_json) and, when it
// accepts the input, the tokenizer built from the result (src/model/tokenizer): vocabulary,
// merges and added tokens come from a downloaded file, and a broken one must be an error.
#include <exception>
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/hf_tokenizer_json.h"
#include "model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const alem::TokenizerData td = alem::tokenizer_data_from_hf_json(text, "fuzz.json");
    alem::Tokenizer tok(td);
    const std::string sample = "Hello world <|im_start|>user 123 \xc3\xa9\xff";
    const auto ids = tok.encode(sample, true);
    if (tok.decode(ids) != sample) alem::fuzz::unexpected("hf_tokenizer", "decode(encode(x)) != x");
    (void)tok.encode(sample, false);
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("hf_tokenizer", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("hf_tokenizer", e.what());
  }
  return 0;
}
