// Fuzzes the safetensors reader (src/model/safetensors_reader): the 8-byte header length, the
// JSON header (dtypes, shapes, byte ranges) and reading the tensors back, as `alem convert`
// does for a Hugging Face folder. Any input must give alem::Error or success.
#include <exception>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/safetensors_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static alem::fuzz::MemFile file;
  const std::string& path = file.set(data, size);
  try {
    alem::SafetensorsFile st(path);
    (void)st.metadata();
    for (const alem::SafetensorsTensor& t : st.tensors()) {
      (void)st.find(t.name);
      if (t.element_count() > (1 << 16)) continue;
      try {
        (void)st.read_raw(t.name);
        (void)st.read_f32(t.name);
      } catch (const alem::Error&) {
      }
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("safetensors", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("safetensors", e.what());
  }
  return 0;
}
