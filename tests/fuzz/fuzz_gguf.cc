// Fuzzes the GGUF reader (src/model/gguf_reader): a model file from outside is opened, its
// metadata and tensor directory walked, small tensors dequantised, and the model config and
// tokenizer derived, as `alem convert` does. Any input must give alem::Error or success.
#include <exception>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static alem::fuzz::MemFile file;
  const std::string& path = file.set(data, size);
  try {
    alem::GgufFile gguf(path);
    for (const auto& [key, value] : gguf.metadata()) (void)value.array_size();
    for (const alem::GgufTensorInfo& t : gguf.tensors()) {
      (void)t.hf_shape();
      (void)gguf.tensor_data(t);
      // Dequantise only small tensors: the point is the bounds checks, not the arithmetic.
      if (t.element_count() <= (1 << 16)) {
        try {
          (void)gguf.dequantize(t.name);
        } catch (const alem::Error&) {
        }
      }
    }
    try {
      alem::ModelConfig config = gguf.model_config();
      config.validate();
    } catch (const alem::Error&) {
    }
    try {
      (void)gguf.tokenizer_data();
    } catch (const alem::Error&) {
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("gguf", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("gguf", e.what());
  }
  return 0;
}
