// Fuzzes the OpenAI request parser (src/serve/openai_protocol parse_request): every HTTP body
// and every opened network request goes through it. The first byte picks the endpoint, the rest
// is the body. Any input must give an ApiException (an HTTP error) or a request.
#include <exception>
#include <string_view>

#include "fuzz_util.h"
#include "serve/openai_protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using namespace alem::serve;
  const Endpoint endpoint = (data[0] & 1) ? Endpoint::kChatCompletions : Endpoint::kCompletions;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    ApiRequest request = parse_request(body, endpoint, "HuggingFaceTB/SmolLM2-135M-Instruct");
    (void)request.total_choices();
    for (const PromptInput& p : request.prompts) {
      try {
        check_token_ids(p.token_ids, 49152);
        (void)resolve_max_tokens(request, static_cast<int64_t>(p.token_ids.size()) + 1, 8192);
      } catch (const ApiException&) {
      }
    }
    request.wipe();
  } catch (const ApiException& e) {
    (void)e.error().body();
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("openai_request", e.what());
  }
  return 0;
}
