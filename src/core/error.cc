// Implements alem::Error: prefixes each message with host, rank, file and line.
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

static std::string format_location(const std::string& message, const char* file, int line) {
  const ProcessIdentity& id = process_identity();
  const char* base = std::strrchr(file, '/');
  std::string where = id.host;
  if (id.world_rank >= 0) where += " rank " + std::to_string(id.world_rank);
  return "[" + where + " " + (base ? base + 1 : file) + ":" + std::to_string(line) + "] " + message;
}

Error::Error(const std::string& message, const char* file, int line)
    : std::runtime_error(format_location(message, file, line)), message_(message) {}

void throw_error(const std::string& message, const char* file, int line) {
  throw Error(message, file, line);
}

}  // namespace alem
