// The gateway's HTTP server (cpp-httplib): the vLLM-shaped OpenAI API that clients and a COCOON
// worker talk to, plus health and Prometheus metrics.
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
// Handler threads never run the model: they tokenize, post requests to the EngineClient's
// queue and wait for their events. Overload answers 429 with Retry-After (waiting queue full),
// an engine that is loading, failed or draining 503 with Retry-After, a body over the limit 413;
// every error has OpenAI's `{"error": {...}}` shape and the server goes on serving everyone else.
// A streaming client that disconnects has its sequences cancelled and their KV blocks freed.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "engine/serving_engine.h"
#include "serve/completion_session.h"
#include "serve/job_status.h"
#include "serve/metrics.h"
#include "serve/openai_protocol.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace alem::serve {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;       // 0: any free port (see port())
  int metrics_port = 0;  // > 0: also serve GET /metrics (and /health) there
  size_t max_body_bytes = size_t{1} << 20;
  int threads = 256;  // connection threads (each open stream holds one)
  int retry_after_seconds = 1;
  std::chrono::milliseconds stream_poll{100};  // how often a stream checks its client
  ProtocolLimits limits;
};

class HttpServer {
 public:
  HttpServer(const ServedModel& model, ServingMetrics& metrics, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket(s); throws alem::Error naming host:port when that fails.
  void bind();
  // The bound API port (after bind()).
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  // Serves on background threads until stop().
  void start();
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

 private:
  void install_routes(httplib::Server& server, bool api);
  void handle_completion(const httplib::Request& req, httplib::Response& res, Endpoint endpoint);
  void handle_models(httplib::Response& res);
  void handle_health(httplib::Response& res);
  void handle_metrics(httplib::Response& res);
  void handle_status(httplib::Response& res);
  void send_error(httplib::Response& res, const ApiError& error);
  bool engine_ready() const;

  const ServedModel& model_;
  ServingMetrics& metrics_;
  HttpServerOptions options_;
  std::unique_ptr<httplib::Server> api_server_;
  std::unique_ptr<httplib::Server> metrics_server_;
  std::thread api_thread_, metrics_thread_;
  int port_ = 0, metrics_port_ = 0;
  std::atomic<EngineClient*> engine_{nullptr};
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> active_requests_{0};
  mutable std::mutex job_mutex_;
  JobInfo job_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace alem::serve
