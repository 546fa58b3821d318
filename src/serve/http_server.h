// The gateway's HTTP server: the vLLM-shaped OpenAI API that clients and a COCOON worker talk
// to, plus health and Prometheus metrics.
//
//   POST /v1/completions, /v1/chat/completions   -> CompletionSession (JSON or SSE stream)
//   GET  /v1/models                               the served model (503 until ready / draining)
//   GET  /health                                  200 when every rank is loaded and the engine
//                                                 loop is alive, else 503
//   GET  /metrics                                 Prometheus text (also on metrics_port if set)
//   GET  /version
//   GET  /v1/status                               the job: layout, ranks and hosts, state, queue,
//                                                 tokens/s, restart count (serve/job_status.h)
//
// Built on Boost.Beast (why not cpp-httplib: docs/serving.md): a few I/O threads run every
// connection asynchronously, so a slow or idle client holds no thread and /health keeps
// answering under a slow-client attack. Each request has a header deadline and a body deadline;
// bodies over max_body_bytes get 413 whether sized or chunked (before any byte of the body is
// read when Content-Length says so); Content-Length together with chunked is refused (400);
// pipelined requests are answered in order. The port is bound without SO_REUSEPORT, so a port
// in use is a start-up error. With an API key, every route but /health and /metrics (unless
// told to protect those too) needs `Authorization: Bearer <key>` (401 otherwise).
//
// I/O threads never run the model or block on it: parsing and tokenizing run on a small worker
// pool, requests are posted to the EngineClient's queue and the engine's events wake the
// connection up. Overload answers 429 with Retry-After (waiting queue full), an engine that is
// loading, failed or draining 503 with Retry-After, a body over the limit 413; every error has
// OpenAI's `{"error": {...}}` shape and the server goes on serving everyone else. A client that
// disconnects (streaming or not) has its sequences cancelled and their KV blocks freed; a
// stream whose engine failed ends with an error event and [DONE].
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/serving_engine.h"
#include "serve/api_key.h"
#include "serve/completion_session.h"
#include "serve/job_status.h"
#include "serve/metrics.h"
#include "serve/openai_protocol.h"

namespace alem::serve {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;       // 0: any free port (see port())
  int metrics_port = 0;  // > 0: also serve GET /metrics (and /health) there
  size_t max_body_bytes = size_t{1} << 20;
  size_t max_header_bytes = 16 * 1024;  // 431 above
  int threads = 8;                      // worker threads that parse and tokenize requests
  int io_threads = 2;                   // threads that run every connection
  int max_connections = 4096;
  int retry_after_seconds = 1;
  std::chrono::milliseconds header_timeout{10'000};  // whole request line + headers
  std::chrono::milliseconds body_timeout{30'000};    // whole body, from the end of the headers
  std::chrono::milliseconds idle_timeout{75'000};    // keep-alive wait for the next request
  std::chrono::milliseconds write_timeout{30'000};   // one write of a response or chunk
  std::chrono::milliseconds stop_grace{3'000};       // stop(): time left to answers in flight
  std::string api_key;                               // empty: no authentication
  bool api_key_protects_health = false;
  bool api_key_protects_metrics = false;
  ProtocolLimits limits;
};

// One answer written whole (everything but a completion's stream).
struct HttpAnswer {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  bool sensitive = false;  // the body holds generated text: wiped once written
};

class HttpServer {
 public:
  HttpServer(const ServedModel& model, ServingMetrics& metrics, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket(s) (SO_REUSEADDR, never SO_REUSEPORT); throws alem::Error naming
  // host:port and the reason when that fails (e.g. another server holds the port).
  void bind();
  // The bound API port (after bind()).
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // Serves on background threads until stop().
  void start();
  // Stops accepting, gives answers in flight up to stop_grace to finish (a stream whose engine
  // failed still gets its error event), then closes every connection and cancels what is left.
  // The engine must still exist during stop(). Safe to call more than once.
  void stop();

  // Until an engine is attached every API call answers 503 (loading). Thread-safe.
  void attach_engine(EngineClient* engine);
  // Draining: new completions and /v1/models answer 503, /health 503; streams in flight go on.
  void set_draining(bool draining);
  // The facts GET /v1/status reports about the job (before this: only the state). Thread-safe.
  void set_job_info(JobInfo info);
  bool draining() const { return draining_.load(); }
  // API requests being answered right now (for the drain to wait on).
  int64_t active_requests() const { return active_requests_.load(); }

  // ---- used by the connections (serve/http_connection.cc); thread-safe ----
  struct Impl;
  const HttpServerOptions& options() const { return options_; }
  // At the end of a request's headers: an answer to send at once (401, 404, 405), or nullopt to
  // read the body and call answer() / open_session().
  std::optional<HttpAnswer> check_request(std::string_view method, std::string_view target,
                                          std::string_view authorization, bool api_port);
  // A route other than the two completion endpoints (/tokenize and /detokenize read `body`,
  // which is wiped).
  HttpAnswer answer(std::string_view method, std::string_view target, std::string& body);
  // Parses, validates, tokenizes and submits a completion (worker thread). Wipes `body`. Throws
  // ApiException (counted as a rejection).
  std::shared_ptr<CompletionSession> open_session(std::string& body, Endpoint endpoint,
                                                  const std::function<void()>& notify);
  HttpAnswer error_answer(const ApiError& error);
  // A request refused before routing (413, 400, 431): counted and answered.
  HttpAnswer refusal(int status, const std::string& message);
  std::atomic<int64_t>& active_counter() { return active_requests_; }
  bool stopping() const { return stopping_.load(); }
  ServingMetrics& metrics() { return metrics_; }

 private:
  HttpAnswer handle_models();
  HttpAnswer handle_health();
  HttpAnswer handle_metrics();
  HttpAnswer handle_status();
  HttpAnswer handle_tokenize(std::string_view path, std::string& body);
  bool engine_ready() const;

  const ServedModel& model_;
  ServingMetrics& metrics_;
  HttpServerOptions options_;
  ApiKey api_key_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0, metrics_port_ = 0;
  std::atomic<EngineClient*> engine_{nullptr};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> active_requests_{0};
  mutable std::mutex job_mutex_;
  JobInfo job_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace alem::serve
