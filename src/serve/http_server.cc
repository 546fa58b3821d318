// Routes, error answers and streaming for the gateway's HTTP server (see the header).
#include "serve/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"

namespace alem::serve {
namespace {

constexpr const char* kJson = "application/json";

// Keeps the count of API requests in progress; released when httplib drops the response's
// content provider (after the last byte, or when the client went away).
struct ActiveRequest {
  explicit ActiveRequest(std::atomic<int64_t>& counter) : counter_(counter) { ++counter_; }
  ~ActiveRequest() { --counter_; }
  std::atomic<int64_t>& counter_;
};

const char* rejection_reason(int status) {
  switch (status) {
    case 429:
      return "overloaded";
    case 503:
      return "unavailable";
    case 413:
      return "too_large";
    default:
      return "invalid";
  }
}

// cpp-httplib 0.11 listens with a backlog of 5: a burst of clients connecting at once (a COCOON
// worker opening many streams, a load test) overflows it and connections time out before the
// accept thread catches up. Linux lets listen() be called again on a listening socket to change
// the backlog, so find the socket httplib bound (a listening TCP socket on `port`) and raise it.
void raise_listen_backlog(int port, int backlog) {
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t length = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 || !listening) continue;
    sockaddr_storage address{};
    socklen_t address_length = sizeof(address);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &address_length) != 0) continue;
    int bound_port = -1;
    if (address.ss_family == AF_INET) {
      bound_port = ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
    } else if (address.ss_family == AF_INET6) {
      bound_port = ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
    }
    if (bound_port == port) ::listen(fd, backlog);
  }
}

void wipe_body(const httplib::Request& req) {
  // The body held the prompt; httplib keeps it until the connection's next request.
  std::string& body = const_cast<std::string&>(req.body);
  secure_wipe(body.data(), body.size());
}

}  // namespace

HttpServer::HttpServer(const ServedModel& model, ServingMetrics& metrics, HttpServerOptions options)
    : model_(model), metrics_(metrics), options_(std::move(options)) {
  auto make = [this](bool api) {
    auto server = std::make_unique<httplib::Server>();
    const int threads = std::max(4, api ? options_.threads : 4);
    server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server->set_payload_max_length(options_.max_body_bytes);
    server->set_keep_alive_max_count(1000);
    server->set_read_timeout(30, 0);
    server->set_write_timeout(30, 0);
    install_routes(*server, api);
    return server;
  };
  api_server_ = make(true);
  if (options_.metrics_port > 0) metrics_server_ = make(false);
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::install_routes(httplib::Server& server, bool api) {
  server.Get("/health",
             [this](const httplib::Request&, httplib::Response& res) { handle_health(res); });
  server.Get("/metrics",
             [this](const httplib::Request&, httplib::Response& res) { handle_metrics(res); });
  server.set_error_handler([this](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413) {
      metrics_.count_rejected("too_large");
      send_error(res, ApiError::payload_too_large(options_.max_body_bytes));
    } else if (res.status == 404) {
      ApiError e = ApiError::bad_request("Not found.");
      e.status = 404;
      e.type = "not_found_error";
      send_error(res, e);
    } else if (res.status == 405) {
      ApiError e = ApiError::bad_request("Method not allowed.");
      e.status = 405;
      send_error(res, e);
    } else if (res.status >= 400) {
      ApiError e = ApiError::bad_request("The request could not be read.");
      e.status = res.status;
      send_error(res, e);
    }
  });
  server.set_exception_handler(
      [this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
          if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        log_error("HTTP handler failed", {{"why", what}});
        send_error(res, ApiError::internal("Internal server error."));
      });
  if (!api) return;
  server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(req, res, Endpoint::kCompletions);
  });
  server.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(req, res, Endpoint::kChatCompletions);
  });
  server.Get("/v1/models",
             [this](const httplib::Request&, httplib::Response& res) { handle_models(res); });
  server.Get("/v1/status",
             [this](const httplib::Request&, httplib::Response& res) { handle_status(res); });
  server.Get("/version", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"version":"0.1.0"})", kJson);
  });
}

void HttpServer::bind() {
  auto bind_one = [this](httplib::Server& server, int port) {
    const int bound = port == 0 ? server.bind_to_any_port(options_.host)
                                : (server.bind_to_port(options_.host, port) ? port : -1);
    ALEM_CHECK(bound > 0, "cannot listen on " + options_.host + ":" + std::to_string(port) +
                              " (address in use or not available)");
    return bound;
  };
  port_ = bind_one(*api_server_, options_.port);
  raise_listen_backlog(port_, 1024);
  if (metrics_server_) metrics_port_ = bind_one(*metrics_server_, options_.metrics_port);
}

void HttpServer::start() {
  api_thread_ = std::thread([this] { api_server_->listen_after_bind(); });
  if (metrics_server_) {
    metrics_thread_ = std::thread([this] { metrics_server_->listen_after_bind(); });
  }
}

void HttpServer::stop() {
  if (api_server_) api_server_->stop();
  if (metrics_server_) metrics_server_->stop();
  if (api_thread_.joinable()) api_thread_.join();
  if (metrics_thread_.joinable()) metrics_thread_.join();
}

void HttpServer::attach_engine(EngineClient* engine) {
  engine_.store(engine);
}

void HttpServer::set_draining(bool draining) {
  draining_.store(draining);
}

void HttpServer::set_job_info(JobInfo info) {
  std::lock_guard<std::mutex> lock(job_mutex_);
  job_ = std::move(info);
}

void HttpServer::handle_status(httplib::Response& res) {
  EngineClient* engine = engine_.load();
  std::vector<ReplicaStats> replicas;
  std::vector<double> rates;
  std::string state = "loading";
  if (engine) {
    replicas = engine->stats();
    for (const ReplicaStats& s : replicas) {
      rates.push_back(metrics_.generation_tokens_per_second(s.replica));
    }
    state = !engine->healthy() ? "failed" : draining_.load() ? "draining" : "ready";
  } else if (draining_.load()) {
    state = "draining";
  }
  const double uptime =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  JobInfo job;
  {
    std::lock_guard<std::mutex> lock(job_mutex_);
    job = job_;
  }
  res.set_content(dump_json(status_document(job, state, replicas, rates, uptime)), kJson);
}

bool HttpServer::engine_ready() const {
  EngineClient* engine = engine_.load();
  return engine && engine->healthy();
}

void HttpServer::send_error(httplib::Response& res, const ApiError& error) {
  res.status = error.status;
  if (error.status == 429 || error.status == 503) {
    res.set_header("Retry-After", std::to_string(options_.retry_after_seconds));
  }
  res.set_content(error.body(), kJson);
}

void HttpServer::handle_completion(const httplib::Request& req, httplib::Response& res,
                                   Endpoint endpoint) {
  const auto arrival = CompletionSession::Clock::now();
  auto active = std::make_shared<ActiveRequest>(active_requests_);
  EngineClient* engine = engine_.load();
  std::shared_ptr<CompletionSession> session;
  try {
    if (!engine || !engine->healthy()) {
      throw ApiException(ApiError::unavailable("The model is loading or the engine is down."));
    }
    if (draining_.load()) {
      throw ApiException(ApiError::unavailable("The server is draining; retry on another."));
    }
    ApiRequest request = parse_request(req.body, endpoint, model_.name, options_.limits);
    wipe_body(req);
    session =
        std::make_shared<CompletionSession>(model_, *engine, metrics_, std::move(request), arrival);
    session->start();
  } catch (const ApiException& e) {
    wipe_body(req);
    if (session) session->close(true);
    metrics_.count_rejected(rejection_reason(e.error().status));
    send_error(res, e.error());
    return;
  }

  if (!session->streaming()) {
    std::string body;
    try {
      body = session->wait_for_response();
    } catch (const ApiException& e) {
      send_error(res, e.error());
      return;
    }
    auto shared_body = std::make_shared<std::string>(std::move(body));
    res.set_content_provider(
        shared_body->size(), kJson,
        [shared_body](size_t offset, size_t length, httplib::DataSink& sink) {
          return sink.write(shared_body->data() + offset, length);
        },
        [shared_body, active](bool) { secure_wipe(shared_body->data(), shared_body->size()); });
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  const auto poll = options_.stream_poll;
  res.set_chunked_content_provider(
      "text/event-stream",
      [session, poll](size_t, httplib::DataSink& sink) {
        std::string out;
        const bool more = session->next_stream_events(out, poll);
        if (!out.empty()) {
          const bool written = sink.write(out.data(), out.size());
          secure_wipe(out.data(), out.size());
          if (!written) return false;  // the client went away: the releaser cancels
        } else if (!sink.is_writable()) {
          return false;
        }
        if (!more) sink.done();
        return true;
      },
      [session, active](bool success) { session->close(success && session->finished()); });
}

void HttpServer::handle_models(httplib::Response& res) {
  EngineClient* engine = engine_.load();
  if (!engine || !engine->healthy() || draining_.load()) {
    send_error(res, ApiError::unavailable(draining_.load() ? "The server is draining."
                                                           : "The model is not ready."));
    return;
  }
  res.set_content(dump_json(models_response(model_.name, model_.created, engine->max_model_len())),
                  kJson);
}

void HttpServer::handle_health(httplib::Response& res) {
  if (engine_ready() && !draining_.load()) {
    res.status = 200;
    res.set_content("", "text/plain");
    return;
  }
  res.status = 503;
  res.set_header("Retry-After", std::to_string(options_.retry_after_seconds));
  res.set_content(draining_.load() ? "draining\n" : "not ready\n", "text/plain");
}

void HttpServer::handle_metrics(httplib::Response& res) {
  std::vector<ReplicaGauges> gauges;
  if (EngineClient* engine = engine_.load()) {
    for (const ReplicaStats& s : engine->stats()) {
      gauges.push_back({s.replica, s.running, s.waiting, s.kv_blocks_used, s.kv_blocks_cached,
                        s.kv_blocks_total, s.steps});
    }
  } else {
    gauges.push_back({});
  }
  res.set_content(metrics_.render(gauges), "text/plain; version=0.0.4");
}

}  // namespace alem::serve
