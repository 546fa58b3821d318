// Helpers shared by the libFuzzer targets in this folder: parsers that open a path get the fuzz
// input through an in-memory file (memfd, no disk writes per execution), structured targets
// split their input into fields, and targets whose valid inputs a fuzzer cannot invent (sealed
// envelopes, signed bundles) write their seed files when ALEM_FUZZ_MAKE_SEEDS names a folder.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

namespace alem::fuzz {

// One memfd per process, rewritten for each input; path() opens it like a regular file.
class MemFile {
 public:
  MemFile() {
    fd_ = memfd_create("alem-fuzz", 0);
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& set(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || (size > 0 && pwrite(fd_, data, size, 0) != ssize_t(size))) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// Splits `text` at every `sep` byte (an empty text gives one empty field).
inline std::vector<std::string_view> split(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    const size_t at = text.find(sep, start);
    if (at == std::string_view::npos) {
      out.push_back(text.substr(start));
      return out;
    }
    out.push_back(text.substr(start, at - start));
    start = at + 1;
  }
}

// The folder seeds should be written to, or "" (the normal case: fuzz, do not write seeds).
inline std::string seed_dir() {
  const char* dir = std::getenv("ALEM_FUZZ_MAKE_SEEDS");
  return dir ? std::string(dir) : std::string();
}

inline void write_seed(const std::string& dir, const std::string& name, std::string_view bytes) {
  std::ofstream out(dir + "/seed-" + name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write seed %s/%s\n", dir.c_str(), name.c_str());
    std::exit(1);
  }
}

// Deterministic 32-byte values for keys and ids (fuzzing must be reproducible).
inline std::string fixed_bytes(uint8_t seed, size_t n = 32) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(seed * 31 + i * 7 + 1);
  return out;
}

// With ALEM_FUZZ_VERBOSE set, prints the error an input ended in (to see which check a seed
// reaches); silent otherwise.
inline void note_error(const char* target, const std::exception& e) {
  static const bool verbose = std::getenv("ALEM_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "%s: %s\n", target, e.what());
}

// An exception the parser's contract does not allow: stop with a clear report so the fuzzer
// records the input.
[[noreturn]] inline void unexpected(const char* target, const char* what) {
  std::fprintf(stderr, "%s: unexpected exception escaped: %s\n", target, what);
  std::abort();
}

}  // namespace alem::fuzz

namespace alem::fuzz {

// A file of tests/data (the fuzz targets' fixed, trusted inputs), whole; aborts when missing.
inline std::string read_data_file(const std::string& relative) {
  std::ifstream in(std::string(ALEM_FUZZ_DATA_DIR) + "/" + relative, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "missing test data %s\n", relative.c_str());
    std::abort();
  }
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace alem::fuzz
