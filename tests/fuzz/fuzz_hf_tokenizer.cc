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
    // The round trip holds where the vocabulary has a token for every byte of the sample: a
    // byte-level symbol missing from it is dropped when there is no unk token (as Hugging Face
    // tokenizers do), so a mutated vocabulary may lose bytes without being broken.
    bool every_byte = true;
    for (const char c : sample)
      every_byte = every_byte && !tok.encode(std::string(1, c), false).empty();
    if (every_byte && tok.decode(ids) != sample)
      alem::fuzz::unexpected("hf_tokenizer", "decode(encode(x)) != x");
    (void)tok.encode(sample, false);
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("hf_tokenizer", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("hf_tokenizer", e.what());
  }
  return 0;
}
