// Implements the stderr logger (text or JSON lines), thread-safe, one write per line.
#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace alem {
namespace {

// The floor as read from ALEM_LOG_LEVEL on first use; `bad_env` holds an unusable value.
struct EnvLevel {
  LogLevel level = LogLevel::Info;
  std::string bad_env;
};

const EnvLevel& env_level() {
  static const EnvLevel e = [] {
    EnvLevel out;
    if (const char* l = std::getenv("ALEM_LOG_LEVEL"); l && *l) {
      if (auto parsed = parse_log_level(l)) {
        out.level = *parsed;
      } else {
        out.bad_env = l;
      }
    }
    return out;
  }();
  return e;
}

constexpr int kUnset = 100;
std::atomic<int> g_level_override{kUnset};

bool json_format() {
  // Read at each event: `alem serve` may choose JSON after start-up (ALEM_LOG_FORMAT unset).
  const char* f = std::getenv("ALEM_LOG_FORMAT");
  return f && std::string(f) == "json";
}

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];  // room for any int in every field, so the format cannot truncate
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

void write_event(LogLevel level, const std::string& message, const LogFields& fields) {
  const ProcessIdentity& id = process_identity();
  std::string line;
  if (json_format()) {
    nlohmann::json j;
    j["ts"] = timestamp();
    j["level"] = log_level_name(level);
    j["host"] = id.host;
    j["rank"] = id.world_rank;
    j["msg"] = message;
    for (const auto& [k, v] : fields) j[k] = v;
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  } else {
    line = timestamp() + " " + log_level_name(level) + " [" + id.host +
           (id.world_rank >= 0 ? " rank " + std::to_string(id.world_rank) : std::string()) + "] " +
           message;
    for (const auto& [k, v] : fields) line += " " + k + "=" + v;
    line += "\n";
  }
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  [[maybe_unused]] ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace

std::optional<LogLevel> parse_log_level(std::string_view name) {
  std::string v;
  for (char c : name) v += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (v == "trace") return LogLevel::Trace;
  if (v == "debug") return LogLevel::Debug;
  if (v == "info") return LogLevel::Info;
  if (v == "warn" || v == "warning") return LogLevel::Warn;
  if (v == "error") return LogLevel::Error;
  return std::nullopt;
}

const char* log_level_name(LogLevel l) {
  switch (l) {
    case LogLevel::Trace:
      return "trace";
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

LogLevel log_level() {
  const int over = g_level_override.load(std::memory_order_relaxed);
  return over == kUnset ? env_level().level : static_cast<LogLevel>(over);
}

void set_log_level(LogLevel level) {
  g_level_override.store(static_cast<int>(level), std::memory_order_relaxed);
}

std::string log_number(double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", value);
  return buf;
}

void log_event(LogLevel level, const std::string& message, const LogFields& fields) {
  static std::once_flag warned;
  if (!env_level().bad_env.empty() && g_level_override.load() == kUnset) {
    std::call_once(warned, [] {
      write_event(LogLevel::Warn, "ALEM_LOG_LEVEL not understood; using info",
                  {{"value", env_level().bad_env}, {"expected", "trace|debug|info|warn|error"}});
    });
  }
  if (level < log_level()) return;
  write_event(level, message, fields);
}

}  // namespace alem
