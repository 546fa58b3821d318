// Implements the stderr logger (text or JSON lines), thread-safe, one write per line.
#include "core/log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace alem {
namespace {

struct LogSettings {
  bool json = false;
  LogLevel floor = LogLevel::Info;
};

const LogSettings& settings() {
  static LogSettings s = [] {
    LogSettings out;
    if (const char* f = std::getenv("ALEM_LOG_FORMAT")) out.json = std::string(f) == "json";
    if (const char* l = std::getenv("ALEM_LOG_LEVEL")) {
      const std::string v = l;
      if (v == "debug") out.floor = LogLevel::Debug;
      if (v == "warn") out.floor = LogLevel::Warn;
      if (v == "error") out.floor = LogLevel::Error;
    }
    return out;
  }();
  return s;
}

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
  }
  return "?";
}

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

std::string log_number(double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", value);
  return buf;
}

void log_event(LogLevel level, const std::string& message, const LogFields& fields) {
  const LogSettings& s = settings();
  if (level < s.floor) return;
  const ProcessIdentity& id = process_identity();
  std::string line;
  if (s.json) {
    nlohmann::json j;
    j["ts"] = timestamp();
    j["level"] = level_name(level);
    j["host"] = id.host;
    j["rank"] = id.world_rank;
    j["msg"] = message;
    for (const auto& [k, v] : fields) j[k] = v;
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else {
    line = timestamp() + " " + level_name(level) + " [" + id.host +
           (id.world_rank >= 0 ? " rank " + std::to_string(id.world_rank) : std::string()) + "] " +
           message;
    for (const auto& [k, v] : fields) line += " " + k + "=" + v;
    line += "\n";
  }
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace alem
