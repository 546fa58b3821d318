// Implements alem::Error: records host, rank, file and line, and prefixes what() with them.
#include "core/error.h"

#include <unistd.h>

#include <cstring>

namespace alem {

ProcessIdentity& process_identity() {
  static ProcessIdentity identity = [] {
    ProcessIdentity id;
    char name[256] = {0};
    if (gethostname(name, sizeof(name) - 1) == 0) id.host = name;
    return id;
  }();
  return identity;
}

namespace {

std::string base_name(const char* file) {
  const char* base = std::strrchr(file, '/');
  return base ? base + 1 : file;
}

std::string format_location(const std::string& host, int rank, const std::string& file, int line) {
  std::string where = host;
  if (rank >= 0) where += " rank " + std::to_string(rank);
  return where + " " + file + ":" + std::to_string(line);
}

// "[location] message" (built by appending: GCC 12 warns falsely on "[" + std::string).
std::string with_location(const std::string& location, const std::string& message) {
  std::string out;
  out.reserve(location.size() + message.size() + 3);
  out += '[';
  out += location;
  out += "] ";
  out += message;
  return out;
}

}  // namespace

Error::Error(const std::string& message, const char* file, int line)
    : std::runtime_error(
          with_location(format_location(process_identity().host, process_identity().world_rank,
                                        base_name(file), line),
                        message)),
      message_(message),
      host_(process_identity().host),
      rank_(process_identity().world_rank),
      file_(base_name(file)),
      line_(line) {}

std::string Error::location() const {
  return format_location(host_, rank_, file_, line_);
}

void throw_error(const std::string& message, const char* file, int line) {
  throw Error(message, file, line);
}

}  // namespace alem
