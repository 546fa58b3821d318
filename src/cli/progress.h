// Progress of long commands (bench sweep, bench calibrate): on a terminal a bar on stderr that
// redraws in place; otherwise one plain line per step, so logs of batch jobs stay readable.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <string>

namespace alem::cli {

// `label` starts the plain lines ("sweep 3/12 ..."); `done` of `total` steps are finished.
inline void show_progress(const char* label, int done, int total, const std::string& what) {
  if (isatty(fileno(stderr))) {
    const int width = 30, filled = total > 0 ? done * width / total : width;
    std::fprintf(stderr, "\r[%s%s] %d/%d %s\033[K", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), done, total, what.c_str());
    if (done == total) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "%s %d/%d %s\n", label, done, total, what.c_str());
  }
  std::fflush(stderr);
}

}  // namespace alem::cli
