// The gateway's HTTP server: listening sockets, I/O and worker threads, routes, authentication
// and error answers (see the header; one connection's life is in serve/http_connection.cc).
#include "serve/http_server.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <thread>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/json_input.h"
#include "core/log.h"
#include "serve/http_connection.h"
#include "serve/tokenize_api.h"

namespace alem::serve {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

constexpr const char* kJson = "application/json";
constexpr int kListenBacklog = 1024;  // a burst of clients connecting at once

const char* rejection_reason(int status) {
  switch (status) {
    case 429:
      return "overloaded";
    case 503:
      return "unavailable";
    case 413:
      return "too_large";
    case 401:
      return "unauthorized";
    default:
      return "invalid";
  }
}

std::string_view path_of(std::string_view target) {
  return target.substr(0, target.find('?'));
}

bool is_api_route(std::string_view path) {
  return path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/models" ||
         path == "/v1/status" || path == "/version" || path == "/tokenize" || path == "/detokenize";
}

}  // namespace

struct HttpServer::Impl {
  asio::io_context io;
  std::unique_ptr<asio::thread_pool> workers;
  std::unique_ptr<tcp::acceptor> api_acceptor, metrics_acceptor;
  std::vector<std::thread> io_threads;
  std::mutex connections_mutex;
  std::vector<std::weak_ptr<HttpConnection>> connections;
  bool started = false, stopped = false;

  // Live connections, after dropping the ended ones.
  size_t prune() {
    std::lock_guard<std::mutex> lock(connections_mutex);
    std::erase_if(connections, [](const auto& c) { return c.expired(); });
    return connections.size();
  }
};

HttpServer::HttpServer(const ServedModel& model, ServingMetrics& metrics, HttpServerOptions options)
    : model_(model),
      metrics_(metrics),
      options_(std::move(options)),
      api_key_(options_.api_key),
      impl_(std::make_unique<Impl>()) {
  secure_wipe(options_.api_key.data(), options_.api_key.size());  // only its hash is kept
  options_.api_key.clear();
  impl_->workers = std::make_unique<asio::thread_pool>(std::max(1, options_.threads));
}

HttpServer::~HttpServer() {
  stop();
}

namespace {

tcp::acceptor listen_on(asio::io_context& io, const std::string& host, int port) {
  const std::string where = host + ":" + std::to_string(port);
  boost::system::error_code ec;
  tcp::endpoint endpoint;
  const auto address = asio::ip::make_address(host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, static_cast<unsigned short>(port));
  } else {
    tcp::resolver resolver(io);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    ALEM_CHECK(!ec && !results.empty(),
               "cannot listen on " + where + ": cannot resolve the host (" + ec.message() + ")");
    endpoint = results.begin()->endpoint();
  }
  tcp::acceptor acceptor(io);
  auto check = [&](const char* step) {
    ALEM_CHECK(!ec, "cannot listen on " + where + ": " + step + " failed (" + ec.message() + ")" +
                        (ec == asio::error::address_in_use
                             ? "; another process (another alem serve?) holds this port"
                             : ""));
  };
  acceptor.open(endpoint.protocol(), ec);
  check("socket");
  // SO_REUSEADDR only (restart while old connections linger in TIME_WAIT). Never SO_REUSEPORT:
  // with it a second server could bind the same port and the kernel would split clients.
  acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  check("setsockopt");
  acceptor.bind(endpoint, ec);
  check("bind");
  acceptor.listen(kListenBacklog, ec);
  check("listen");
  return acceptor;
}

void accept_loop(HttpServer& server, HttpServer::Impl& impl, tcp::acceptor& acceptor,
                 bool api_port) {
  acceptor.async_accept(
      asio::make_strand(impl.io),
      [&server, &impl, &acceptor, api_port](boost::system::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
        if (!ec) {
          if (impl.prune() >= static_cast<size_t>(server.options().max_connections)) {
            boost::system::error_code ignored;
            socket.close(ignored);  // at the limit: refuse rather than run out of descriptors
          } else {
            socket.set_option(tcp::no_delay(true), ec);
            auto connection =
                start_http_connection(server, *impl.workers, std::move(socket), api_port);
            std::lock_guard<std::mutex> lock(impl.connections_mutex);
            impl.connections.push_back(connection);
          }
        }
        accept_loop(server, impl, acceptor, api_port);
      });
}

}  // namespace

void HttpServer::bind() {
  impl_->api_acceptor =
      std::make_unique<tcp::acceptor>(listen_on(impl_->io, options_.host, options_.port));
  port_ = impl_->api_acceptor->local_endpoint().port();
  if (options_.metrics_port > 0) {
    impl_->metrics_acceptor =
        std::make_unique<tcp::acceptor>(listen_on(impl_->io, options_.host, options_.metrics_port));
    metrics_port_ = impl_->metrics_acceptor->local_endpoint().port();
  }
}

void HttpServer::start() {
  ALEM_CHECK(impl_->api_acceptor, "HttpServer::start() before bind()");
  impl_->started = true;
  accept_loop(*this, *impl_, *impl_->api_acceptor, true);
  if (impl_->metrics_acceptor) accept_loop(*this, *impl_, *impl_->metrics_acceptor, false);
  for (int i = 0; i < std::max(1, options_.io_threads); ++i) {
    impl_->io_threads.emplace_back([this] { impl_->io.run(); });
  }
}

void HttpServer::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  stopping_ = true;
  asio::post(impl_->io, [this] {
    boost::system::error_code ec;
    if (impl_->api_acceptor) impl_->api_acceptor->close(ec);
    if (impl_->metrics_acceptor) impl_->metrics_acceptor->close(ec);
  });
  // Answers in flight (a stream whose engine failed or was stopped writing its end) finish.
  const auto grace_end = std::chrono::steady_clock::now() + options_.stop_grace;
  while (impl_->started && active_requests_.load() > 0 &&
         std::chrono::steady_clock::now() < grace_end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  impl_->io.stop();
  for (std::thread& t : impl_->io_threads) t.join();
  impl_->io_threads.clear();
  impl_->workers->stop();
  impl_->workers->join();
  // No I/O thread runs now: end every connection and cancel its completion while the engine
  // still exists (handlers left in the io_context are destroyed later, holding nothing).
  std::vector<std::shared_ptr<HttpConnection>> live;
  {
    std::lock_guard<std::mutex> lock(impl_->connections_mutex);
    for (auto& weak : impl_->connections) {
      if (auto c = weak.lock()) live.push_back(std::move(c));
    }
    impl_->connections.clear();
  }
  for (auto& c : live) abandon_http_connection(*c);
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

// ---- routes ----

std::optional<HttpAnswer> HttpServer::check_request(std::string_view method,
                                                    std::string_view target,
                                                    std::string_view authorization, bool api_port) {
  const std::string_view path = path_of(target);
  const bool open = (path == "/health" && !options_.api_key_protects_health) ||
                    (path == "/metrics" && !options_.api_key_protects_metrics);
  if (!open && !api_key_.accepts(authorization)) {
    metrics_.count_rejected(rejection_reason(401));
    ApiError e;
    e.status = 401;
    e.type = "invalid_request_error";
    e.code = "invalid_api_key";
    e.message = authorization.empty()
                    ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
                    : "Incorrect API key provided.";
    HttpAnswer answer = error_answer(e);
    answer.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"alem\"");
    return answer;
  }
  const bool known = path == "/health" || path == "/metrics" || (api_port && is_api_route(path));
  if (!known) {
    ApiError e = ApiError::bad_request("Not found.");
    e.status = 404;
    e.type = "not_found_error";
    return error_answer(e);
  }
  const bool post_route = path == "/v1/completions" || path == "/v1/chat/completions" ||
                          path == "/tokenize" || path == "/detokenize";
  if (method != (post_route ? "POST" : "GET")) {
    ApiError e = ApiError::bad_request("Method not allowed.");
    e.status = 405;
    HttpAnswer answer = error_answer(e);
    answer.headers.emplace_back("Allow", post_route ? "POST" : "GET");
    return answer;
  }
  return std::nullopt;
}

HttpAnswer HttpServer::answer(std::string_view, std::string_view target, std::string& body) {
  const std::string_view path = path_of(target);
  if (path == "/tokenize" || path == "/detokenize") return handle_tokenize(path, body);
  if (path == "/health") return handle_health();
  if (path == "/metrics") return handle_metrics();
  if (path == "/v1/models") return handle_models();
  if (path == "/v1/status") return handle_status();
  HttpAnswer version;  // "/version"
  version.body = R"({"version":"0.1.0"})";
  return version;
}

HttpAnswer HttpServer::error_answer(const ApiError& error) {
  HttpAnswer answer;
  answer.status = error.status;
  answer.body = error.body();
  if (error.status == 429 || error.status == 503) {
    answer.headers.emplace_back("Retry-After", std::to_string(options_.retry_after_seconds));
  }
  return answer;
}

HttpAnswer HttpServer::refusal(int status, const std::string& message) {
  metrics_.count_rejected(rejection_reason(status));
  if (status == 413) return error_answer(ApiError::payload_too_large(options_.max_body_bytes));
  ApiError e = ApiError::bad_request(message);
  e.status = status;
  return error_answer(e);
}

std::shared_ptr<CompletionSession> HttpServer::open_session(std::string& body, Endpoint endpoint,
                                                            const std::function<void()>& notify) {
  const auto arrival = CompletionSession::Clock::now();
  std::shared_ptr<CompletionSession> session;
  try {
    EngineClient* engine = engine_.load();
    if (!engine || !engine->healthy()) {
      throw ApiException(ApiError::unavailable("The model is loading or the engine is down."));
    }
    if (draining_.load()) {
      throw ApiException(ApiError::unavailable("The server is draining; retry on another."));
    }
    ApiRequest request = parse_request(body, endpoint, model_.name, options_.limits);
    secure_wipe(body.data(), body.size());
    session =
        std::make_shared<CompletionSession>(model_, *engine, metrics_, std::move(request), arrival);
    session->set_event_notifier(notify);
    session->start();
    return session;
  } catch (const ApiException& e) {
    secure_wipe(body.data(), body.size());
    if (session) session->close(true);
    metrics_.count_rejected(rejection_reason(e.error().status));
    throw;
  }
}

bool HttpServer::engine_ready() const {
  EngineClient* engine = engine_.load();
  return engine && engine->healthy();
}

HttpAnswer HttpServer::handle_status() {
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
  HttpAnswer answer;
  answer.body = dump_json(status_document(job, state, replicas, rates, uptime));
  return answer;
}

HttpAnswer HttpServer::handle_models() {
  EngineClient* engine = engine_.load();
  if (!engine || !engine->healthy() || draining_.load()) {
    return error_answer(ApiError::unavailable(draining_.load() ? "The server is draining."
                                                               : "The model is not ready."));
  }
  HttpAnswer answer;
  answer.body = dump_json(models_response(model_.name, model_.created, engine->max_model_len()));
  return answer;
}

HttpAnswer HttpServer::handle_tokenize(std::string_view path, std::string& body) {
  EngineClient* engine = engine_.load();
  HttpAnswer answer;
  answer.sensitive = true;  // tokens or text of a prompt
  try {
    if (!engine || !engine->healthy()) {
      throw ApiException(ApiError::unavailable("The model is loading or the engine is down."));
    }
    nlohmann::json out = path == "/tokenize"
                             ? tokenize_response(body, model_, engine->max_model_len())
                             : detokenize_response(body, model_);
    secure_wipe(body.data(), body.size());
    answer.body = dump_json(out);
    wipe_json_strings(out);
  } catch (const ApiException& e) {
    secure_wipe(body.data(), body.size());
    metrics_.count_rejected(rejection_reason(e.error().status));
    return error_answer(e.error());
  }
  return answer;
}

HttpAnswer HttpServer::handle_health() {
  HttpAnswer answer;
  answer.content_type = "text/plain";
  if (engine_ready() && !draining_.load()) return answer;
  answer.status = 503;
  answer.headers.emplace_back("Retry-After", std::to_string(options_.retry_after_seconds));
  answer.body = draining_.load() ? "draining\n" : "not ready\n";
  return answer;
}

HttpAnswer HttpServer::handle_metrics() {
  std::vector<ReplicaGauges> gauges;
  if (EngineClient* engine = engine_.load()) {
    for (const ReplicaStats& s : engine->stats()) gauges.push_back(replica_gauges(s));
  } else {
    gauges.push_back({});
  }
  HttpAnswer answer;
  answer.content_type = "text/plain; version=0.0.4";
  answer.body = metrics_.render(gauges);
  return answer;
}

}  // namespace alem::serve
