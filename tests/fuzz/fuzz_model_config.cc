// Fuzzes the model config parsers (src/model/model_config): a Hugging Face config.json from a
// downloaded folder, and the config_json text stored in the model store, each validated and
// round-tripped through to_json(). Any input must give alem::Error or a config.
#include <exception>
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/model_config.h"

namespace {

void check(const alem::ModelConfig& config) {
  try {
    config.validate();
    (void)config.parameter_count();
  } catch (const alem::Error&) {
    return;
  }
  // A valid config must survive its own serialisation unchanged in every checked field.
  const alem::ModelConfig back = alem::ModelConfig::from_json(config.to_json());
  if (back.to_json() != config.to_json()) alem::fuzz::unexpected("model_config", "round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    check(alem::ModelConfig::from_hf_config_json(text));
  } catch (const alem::Error&) {
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("model_config(hf)", e.what());
  }
  try {
    check(alem::ModelConfig::from_json(text));
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("model_config", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("model_config(store)", e.what());
  }
  return 0;
}
