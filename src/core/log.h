// Operational logging to stderr: one line per event, stamped with time, level, host and rank.
// ALEM_LOG_FORMAT=json switches to JSON lines for log collectors. The floor (trace, debug, info,
// warn, error; default info) comes from ALEM_LOG_LEVEL, and `alem --log-level` overrides it
// through set_log_level(). Log events and numbers only: never prompt or completion text.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace alem {

enum class LogLevel { Trace = -1, Debug = 0, Info = 1, Warn = 2, Error = 3 };

// Extra key/value fields of one event (values are written as JSON strings or numbers).
using LogFields = std::vector<std::pair<std::string, std::string>>;

// "trace", "debug", "info", "warn" (or "warning"), "error", any case; nullopt otherwise.
std::optional<LogLevel> parse_log_level(std::string_view name);
const char* log_level_name(LogLevel level);
// The current floor: set_log_level's value, else ALEM_LOG_LEVEL, else info. An unknown
// ALEM_LOG_LEVEL leaves info and is reported once (warn) by the first event.
LogLevel log_level();
// Thread-safe; takes effect for the next event.
void set_log_level(LogLevel level);
// True when an event at `level` would be written (to skip building costly fields).
inline bool log_enabled(LogLevel level) {
  return level >= log_level();
}

void log_event(LogLevel level, const std::string& message, const LogFields& fields = {});
inline void log_info(const std::string& m, const LogFields& f = {}) {
  log_event(LogLevel::Info, m, f);
}
inline void log_warn(const std::string& m, const LogFields& f = {}) {
  log_event(LogLevel::Warn, m, f);
}
inline void log_error(const std::string& m, const LogFields& f = {}) {
  log_event(LogLevel::Error, m, f);
}
inline void log_debug(const std::string& m, const LogFields& f = {}) {
  log_event(LogLevel::Debug, m, f);
}
inline void log_trace(const std::string& m, const LogFields& f = {}) {
  log_event(LogLevel::Trace, m, f);
}

// Formats a number for LogFields.
std::string log_number(double value);

}  // namespace alem
