// Progress of long commands (bench sweep, bench calibrate, convert, loading a model): on a
// terminal a bar on stderr that redraws in place; otherwise plain lines, so logs of batch jobs
// stay readable.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "core/log.h"

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

// Work of many small steps (tensors converted, layers loaded), too many for a line each: on a
// terminal the bar, redrawn when its percentage changes; otherwise an info log event at the
// start and at each quarter (so a JSON log stays JSON lines). Silent below log level info.
class StepProgress {
 public:
  // `what` names the work ("converting", "loading"); `unit` the steps ("tensors", "layers").
  StepProgress(std::string what, std::string unit)
      : what_(std::move(what)), unit_(std::move(unit)) {}

  void operator()(int64_t done, int64_t total) {
    if (total <= 0 || !log_enabled(LogLevel::Info)) return;
    if (isatty(fileno(stderr))) {
      const int64_t percent = done * 100 / total;
      if (percent == last_ && done < total) return;
      last_ = percent;
      show_progress(what_.c_str(), static_cast<int>(done), static_cast<int>(total),
                    what_ + " " + unit_);
      return;
    }
    const int64_t quarter = done * 4 / total;
    if (quarter <= last_) return;
    last_ = quarter;
    log_info(what_,
             {{"done", std::to_string(done)}, {"of", std::to_string(total)}, {"unit", unit_}});
  }

 private:
  std::string what_, unit_;
  int64_t last_ = -1;
};

// EngineOptions::load_progress for a command starting the engine: shown by one rank (the
// world's first; every rank loads its own shard at about the same pace), nothing elsewhere.
inline std::function<void(int64_t, int64_t)> model_load_progress(bool shown) {
  if (!shown) return {};
  auto progress = std::make_shared<StepProgress>("loading", "layers");
  return [progress](int64_t done, int64_t total) { (*progress)(done, total); };
}

}  // namespace alem::cli
