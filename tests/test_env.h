// Where tests find the real model and test data (set by ctest; see tests/CMakeLists.txt), and
// where they put their temporary files.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace alem::test {

inline std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}
inline std::string model_path() {
  return env_or("ALEM_TEST_MODEL", "models/smollm2-135m-instruct.h5");
}
inline std::string gguf_path() {
  return env_or("ALEM_TEST_GGUF", "models/SmolLM2-135M-Instruct.Q4_1.gguf");
}
// The converted store of the real model for a weight type: "bf16" (the default store), "f32",
// "int8".
inline std::string model_variant_path(const std::string& dtype) {
  std::string base = model_path();
  if (dtype == "bf16") return base;
  const std::string suffix = ".h5";
  if (base.size() > suffix.size()) base.resize(base.size() - suffix.size());
  return base + "-" + dtype + suffix;
}
// The kernel backend the engine tests run on: "cpu" unless ALEM_TEST_BACKEND names another
// (scripts/gpu-check.sh runs the golden tests with "cuda").
inline std::string backend_name() {
  return env_or("ALEM_TEST_BACKEND", "cpu");
}
inline std::string data_dir() {
  return env_or("ALEM_TEST_DATA", "tests/data");
}
// A file for one test binary's `name`, in the temp directory and unique to this process:
// "<tmp>/alem_test_<binary>_<pid>_<name>".
inline std::string temp_path(const std::string& binary, const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("alem_test_" + binary + "_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace alem::test
