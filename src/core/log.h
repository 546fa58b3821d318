// Operational logging to stderr: one line per event, stamped with time, level, host and rank.
// ALEM_LOG_FORMAT=json switches to JSON lines for log collectors; ALEM_LOG_LEVEL sets the floor
// (debug, info, warn, error). Log events and numbers only: never prompt or completion text.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace alem {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3 };

// Extra key/value fields of one event (values are written as JSON strings or numbers).
using LogFields = std::vector<std::pair<std::string, std::string>>;

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

// Formats a number for LogFields.
std::string log_number(double value);

}  // namespace alem
