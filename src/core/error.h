// Errors that say where they happened. Every failure in alem surfaces as an alem::Error carrying
// the host, MPI rank (when known), source file and line, so a message from a 64-node job names
// the node and rank that failed. Library code throws; only the command-line front end exits.
// Users see message() alone; what() (and location()) add host, rank, file and line for logs and
// for multi-rank failure reports, where it matters which node failed.
#pragma once

#include <stdexcept>
#include <string>

namespace alem {

// Process-wide identity used to stamp errors and logs. Set once at start-up (after MPI init).
struct ProcessIdentity {
  std::string host;
  int world_rank = -1;  // -1 until a parallel context is created
};
ProcessIdentity& process_identity();

class Error : public std::runtime_error {
 public:
  // what() is "[host rank R file.cc:line] message".
  Error(const std::string& message, const char* file, int line);
  // The bare message, without the location prefix: what a user is shown.
  const std::string& message() const { return message_; }
  // Where it was thrown, as recorded at construction.
  const std::string& host() const { return host_; }
  int rank() const { return rank_; }                 // -1 when not in a parallel context
  const std::string& file() const { return file_; }  // base name, e.g. "model_store.cc"
  int line() const { return line_; }
  // "host rank R file.cc:line" (no brackets): for debug logs.
  std::string location() const;

 private:
  std::string message_;
  std::string host_;
  int rank_ = -1;
  std::string file_;
  int line_ = 0;
};

[[noreturn]] void throw_error(const std::string& message, const char* file, int line);

}  // namespace alem

// ALEM_CHECK(cond, message-expression): throws alem::Error when cond is false.
#define ALEM_CHECK(cond, msg)                                               \
  do {                                                                      \
    if (!(cond)) ::alem::throw_error(std::string(msg), __FILE__, __LINE__); \
  } while (0)
#define ALEM_FAIL(msg) ::alem::throw_error(std::string(msg), __FILE__, __LINE__)
