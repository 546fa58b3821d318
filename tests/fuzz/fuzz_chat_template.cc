// Fuzzes chat prompt rendering (src/model/chat_template and its Jinja interpreter, src/model/
// jinja): the template text comes from a model file, the messages from clients. Input: template
// text, a NUL, then messages separated by 0x1e, each "role 0x1f content"; a first byte of 'g' in
// the template asks for the generation prompt. Checks that encode_chat's ids spell the rendered
// text.
#include <exception>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/chat_template.h"
#include "model/hf_tokenizer_json.h"
#include "model/tokenizer.h"

namespace {

struct Fixture {
  alem::TokenizerData data;
  alem::Tokenizer tokenizer;
  explicit Fixture(alem::TokenizerData d) : data(std::move(d)), tokenizer(data) {}
};

const Fixture& fixture() {
  static const Fixture f(alem::tokenizer_data_from_hf_json(
      alem::fuzz::read_data_file("tiny-llama/tokenizer.json"), "tiny-llama/tokenizer.json"));
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  if (nul == std::string_view::npos) return 0;
  const Fixture& f = fixture();
  alem::TokenizerData td = f.data;
  td.chat_template = std::string(input.substr(0, nul));
  const bool generation_prompt = !td.chat_template.empty() && td.chat_template[0] == 'g';
  std::vector<alem::ChatMessage> messages;
  if (nul + 1 < input.size()) {
    for (std::string_view m : alem::fuzz::split(input.substr(nul + 1), '\x1e')) {
      const size_t sep = m.find('\x1f');
      if (sep == std::string_view::npos) {
        messages.push_back({"user", std::string(m)});
      } else {
        messages.push_back({std::string(m.substr(0, sep)), std::string(m.substr(sep + 1))});
      }
    }
  }
  try {
    alem::check_chat_template(td);
    const std::string text = alem::apply_chat_template(messages, generation_prompt, td);
    const std::vector<int32_t> ids =
        alem::encode_chat(messages, generation_prompt, td, f.tokenizer);
    // The ids spell exactly the rendered text, whatever part of it came from the messages.
    if (f.tokenizer.decode(ids) != text) alem::fuzz::unexpected("chat_template", "ids != text");
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("chat_template", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("chat_template", e.what());
  }
  return 0;
}
