// One client connection of the gateway's HTTP server (see the header).
#include "serve/http_connection.h"

#include <sys/socket.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <typeinfo>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/log.h"
#include "serve/http_server.h"

namespace alem::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using tcp_executor = beast::tcp_stream::executor_type;

namespace {

// Keeps the count of API requests in progress (the drain waits for it to reach 0).
struct ActiveRequest {
  explicit ActiveRequest(std::atomic<int64_t>& counter) : counter_(counter) { ++counter_; }
  ~ActiveRequest() { --counter_; }
  std::atomic<int64_t>& counter_;
};

// After refusing a request whose body is still arriving, read and drop what the client sends
// for a moment before closing, so it reads the answer instead of a reset.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerBytes = size_t{16} << 20;

std::string serialize(const HttpAnswer& a, bool keep_alive) {
  std::string s = "HTTP/1.1 " + std::to_string(a.status) + " ";
  s += std::string(http::obsolete_reason(http::int_to_status(static_cast<unsigned>(a.status))));
  s += "\r\nContent-Type: " + a.content_type;
  s += "\r\nContent-Length: " + std::to_string(a.body.size()) + "\r\n";
  for (const auto& [name, value] : a.headers) s += name + ": " + value + "\r\n";
  if (!keep_alive) s += "Connection: close\r\n";
  s += "\r\n";
  s += a.body;
  return s;
}

void append_chunk(std::string& to, const std::string& data) {
  char size[32];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  to += size;
  to += data;
  to += "\r\n";
}

std::string_view path_of(std::string_view target) {
  return target.substr(0, target.find('?'));
}

}  // namespace

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(HttpServer& server, asio::thread_pool& workers, tcp::socket socket, bool api_port)
      : server_(server),
        workers_(workers),
        stream_(std::move(socket)),
        buffer_(server.options().max_header_bytes + 65536),
        api_port_(api_port) {}

  ~HttpConnection() {
    end_session(false);
    wipe_buffers();
  }

  void start() { wait_request(); }
  tcp_executor stream_executor() { return stream_.get_executor(); }

  void abandon() {
    {
      std::lock_guard<std::mutex> lock(session_mutex_);
      abandoned_ = true;
      pending_session_.reset();
    }
    close();
  }

 private:
  const HttpServerOptions& opt() const { return server_.options(); }
  std::shared_ptr<HttpConnection> self() { return shared_from_this(); }

  // ---- reading a request ----

  void wait_request() {
    if (closing_) return;
    if (buffer_.size() > 0) {  // a pipelined request is already here
      read_header();
      return;
    }
    wipe_buffers();
    stream_.expires_after(opt().idle_timeout);
    stream_.async_read_some(buffer_.prepare(4096), [self = self()](error_code ec, size_t n) {
      if (ec) return self->close();
      self->buffer_.commit(n);
      self->read_header();
    });
  }

  void read_header() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(opt().max_header_bytes));
    parser_->body_limit(opt().max_body_bytes);
    stream_.expires_after(opt().header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = self()](error_code ec, size_t) { self->on_header(ec); });
  }

  // Refuses a request that could not be read; true when it did.
  bool refuse_read_error(error_code ec) {
    if (!ec) return false;
    if (ec == http::error::body_limit) {
      refuse(413, "");
    } else if (ec == beast::error::timeout) {
      close();  // the stream closed the socket when the deadline passed: no answer possible
    } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      refuse(431, "The request headers are too large.");
    } else if (ec == http::error::end_of_stream || ec == asio::error::eof ||
               ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
               ec == http::error::partial_message) {
      close();
    } else {  // the parser's reason names the fault, never the bytes
      refuse(400, "The request is not valid HTTP/1.1 (" + ec.message() + ").");
    }
    return true;
  }

  void on_header(error_code ec) {
    if (refuse_read_error(ec)) return;
    auto& req = parser_->get();
    // Beast already refuses these; checked here too since request smuggling hides in them.
    if (parser_->chunked() && req.find(http::field::content_length) != req.end()) {
      return refuse(400, "Content-Length and Transfer-Encoding: chunked must not both be sent.");
    }
    if (auto length = parser_->content_length(); length && *length > opt().max_body_bytes) {
      return refuse(413, "");
    }
    keep_alive_ = req.keep_alive();
    if (auto early = server_.check_request(req.method_string(), req.target(),
                                           req[http::field::authorization], api_port_)) {
      const bool body_pending = !parser_->is_done();
      if (body_pending) keep_alive_ = false;
      return send(std::move(*early), body_pending);
    }
    if (parser_->is_done()) return dispatch();
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      return write("HTTP/1.1 100 Continue\r\n\r\n", false, [this] { read_body(); });
    }
    read_body();
  }

  void read_body() {
    stream_.expires_after(opt().body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = self()](error_code ec, size_t) { self->on_body(ec); });
  }

  void on_body(error_code ec) {
    if (refuse_read_error(ec)) return;
    dispatch();
  }

  void dispatch() {
    stream_.expires_never();
    auto& req = parser_->get();
    const std::string_view path = path_of(req.target());
    if (req.method() == http::verb::post &&
        (path == "/v1/completions" || path == "/v1/chat/completions")) {
      return start_completion(path == "/v1/completions" ? Endpoint::kCompletions
                                                        : Endpoint::kChatCompletions);
    }
    HttpAnswer answer = server_.answer(req.method_string(), req.target(), req.body());
    secure_wipe(req.body().data(), req.body().size());
    send(std::move(answer), false);
  }

  // ---- a completion ----

  void start_completion(Endpoint endpoint) {
    active_ = std::make_shared<ActiveRequest>(server_.active_counter());
    // The engine's notifier holds the connection only weakly: keep it alive until the answer is
    // written or the connection closes, whatever the peer watch is doing.
    hold_ = self();
    auto body = std::make_shared<std::string>(std::move(parser_->get().body()));
    std::weak_ptr<HttpConnection> weak = weak_from_this();
    auto executor = stream_.get_executor();
    std::function<void()> notify = [weak, executor] {
      asio::post(executor, [weak] {
        if (auto c = weak.lock()) c->on_engine_event();
      });
    };
    watch_peer();
    asio::post(workers_, [self = self(), body, endpoint, notify] {
      std::shared_ptr<CompletionSession> session;
      std::optional<ApiError> error;
      try {
        session = self->server_.open_session(*body, endpoint, notify);
      } catch (const ApiException& e) {
        error = e.error();
      } catch (const std::exception& e) {  // what() may quote the request: only its type
        log_error("HTTP request failed", {{"exception", typeid(e).name()}});
        error = ApiError::internal("Internal server error.");
      }
      secure_wipe(body->data(), body->size());
      {
        std::lock_guard<std::mutex> lock(self->session_mutex_);
        if (self->abandoned_) {
          if (session) session->close(false);
          return;
        }
        self->pending_session_ = std::move(session);
      }
      asio::post(self->stream_.get_executor(), [self, error] { self->on_session_open(error); });
    });
  }

  void on_session_open(const std::optional<ApiError>& error) {
    {
      std::lock_guard<std::mutex> lock(session_mutex_);
      session_ = std::move(pending_session_);
    }
    if (closing_) return end_session(false);  // the client went away while it was tokenized
    if (error) return send(server_.error_answer(*error), false);
    streaming_ = session_->streaming();
    if (streaming_) {
      pending_ =
          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
          "X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n";
      if (!keep_alive_) pending_ += "Connection: close\r\n";
      pending_ += "\r\n";
    }
    pump();
  }

  void on_engine_event() {
    if (waiting_engine_) pump();
  }

  // Moves whatever the engine produced to the client; waits for the next event when nothing.
  void pump() {
    waiting_engine_ = false;
    if (!session_ || writing_ || closing_) return;
    if (!streaming_) {
      std::string body;
      try {
        if (!session_->poll_response(body)) {
          waiting_engine_ = true;
          return;
        }
      } catch (const ApiException& e) {
        end_session(true);
        return send(server_.error_answer(e.error()), false);
      }
      end_session(true);
      HttpAnswer answer;
      answer.body = std::move(body);
      answer.sensitive = true;
      return send(std::move(answer), false);
    }
    std::string events;
    const bool more = session_->next_stream_events(events, std::chrono::milliseconds(0));
    std::string bytes = std::move(pending_);
    pending_.clear();
    if (!events.empty()) append_chunk(bytes, events);
    secure_wipe(events.data(), events.size());
    if (!more) bytes += "0\r\n\r\n";
    if (bytes.empty()) {
      waiting_engine_ = true;
      return;
    }
    write(std::move(bytes), true, [this, more] {
      if (more) return pump();
      finish_request();
    });
  }

  void end_session(bool completed) {
    if (!session_) return;
    session_->close(completed);
    session_.reset();
  }

  // While a completion runs: a client that closes its end cancels it. Bytes of a pipelined
  // request are read ahead into the buffer (parsed after this answer) and the watch goes on, so
  // a client that pipelines and then hangs up is noticed too; when the buffer is full the rest
  // waits in the socket and a hang-up is noticed when the answer is written.
  void watch_peer() {
    const uint64_t id = ++watch_id_;
    stream_.socket().async_wait(tcp::socket::wait_read, [self = self(), id](error_code ec) {
      if (ec || id != self->watch_id_ || self->closing_) return;
      char byte = 0;
      const ssize_t n =
          ::recv(self->stream_.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) return self->read_ahead(id);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        return self->watch_peer();
      }
      self->close();  // cancels the completion: its KV blocks are freed at the next step
    });
  }

  void read_ahead(uint64_t id) {
    const size_t room = buffer_.max_size() - buffer_.size();
    if (room == 0) return;
    reading_ahead_ = true;
    stream_.socket().async_read_some(
        buffer_.prepare(std::min<size_t>(room, 4096)),
        [self = self(), id](error_code ec, size_t n) {
          self->reading_ahead_ = false;
          if (!ec) self->buffer_.commit(n);      // request bytes: kept even if the answer is done
          if (self->resume_after_read_ahead_) {  // the answer was written meanwhile
            self->resume_after_read_ahead_ = false;
            return self->wait_request();
          }
          if (id != self->watch_id_ || self->closing_) return;
          if (ec == asio::error::operation_aborted) return;
          if (ec) return self->close();  // end of stream or reset: the client hung up
          self->watch_peer();
        });
  }

  // ---- writing ----

  void write(std::string bytes, bool sensitive, std::function<void()> then) {
    out_ = std::move(bytes);
    out_sensitive_ = sensitive;
    writing_ = true;
    stream_.expires_after(opt().write_timeout);
    asio::async_write(stream_, asio::buffer(out_),
                      [self = self(), then = std::move(then)](error_code ec, size_t) {
                        self->writing_ = false;
                        self->stream_.expires_never();
                        if (self->out_sensitive_) secure_wipe(self->out_.data(), self->out_.size());
                        self->out_.clear();
                        if (ec) return self->close();
                        then();
                      });
  }

  void send(HttpAnswer answer, bool close_after) {
    if (close_after) keep_alive_ = false;
    std::string bytes = serialize(answer, keep_alive_ && !server_.stopping());
    if (answer.sensitive) secure_wipe(answer.body.data(), answer.body.size());
    write(std::move(bytes), answer.sensitive, [this, close_after] {
      if (close_after) return linger_close();
      finish_request();
    });
  }

  void refuse(int status, const std::string& message) {
    send(server_.refusal(status, message), true);
  }

  void finish_request() {
    const auto keep = std::move(hold_);  // released when this returns
    end_session(true);
    active_.reset();
    ++watch_id_;
    error_code ec;
    stream_.socket().cancel(ec);  // the peer watch
    if (parser_) {
      auto& body = parser_->get().body();
      secure_wipe(body.data(), body.size());
      parser_.reset();
    }
    if (!keep_alive_ || server_.stopping()) return linger_close();
    if (reading_ahead_) {  // cancelled above: its handler commits what it read, then goes on
      resume_after_read_ahead_ = true;
      return;
    }
    wait_request();
  }

  // ---- closing ----

  void linger_close() {
    if (closing_) return;
    const auto keep = std::move(hold_);  // the drain's reads hold the connection from here on
    closing_ = true;
    ++watch_id_;
    resume_after_read_ahead_ = false;
    end_session(false);
    active_.reset();
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    scratch_.resize(16384);
    stream_.expires_after(kLingerTime);
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(scratch_), [self = self()](error_code ec, size_t n) {
      self->drained_ += n;
      if (ec || self->drained_ > kLingerBytes) return self->close();
      self->drain();
    });
  }

  void close() {
    if (closed_) return;
    const auto keep = std::move(hold_);  // released when this returns
    closed_ = closing_ = true;
    ++watch_id_;
    resume_after_read_ahead_ = false;
    end_session(false);
    active_.reset();
    error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    wipe_buffers();
  }

  // Request bytes (prompts) left in the read buffers.
  void wipe_buffers() {
    if (!scratch_.empty()) secure_wipe(scratch_.data(), scratch_.size());
    if (buffer_.size() == 0) {
      auto storage = buffer_.prepare(buffer_.capacity());
      secure_wipe(storage.data(), storage.size());
    }
  }

  HttpServer& server_;
  asio::thread_pool& workers_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  const bool api_port_;
  bool keep_alive_ = true;
  bool streaming_ = false;
  bool writing_ = false;
  bool waiting_engine_ = false;
  bool closing_ = false, closed_ = false;
  uint64_t watch_id_ = 0;
  bool reading_ahead_ = false;            // a read of pipelined bytes is outstanding
  bool resume_after_read_ahead_ = false;  // then read the next request
  // Set while a completion runs (start_completion to finish_request or close).
  std::shared_ptr<HttpConnection> hold_;
  std::string out_, pending_;
  bool out_sensitive_ = false;
  std::vector<char> scratch_;
  size_t drained_ = 0;
  std::shared_ptr<ActiveRequest> active_;
  std::shared_ptr<CompletionSession> session_;
  std::mutex session_mutex_;  // pending_session_ and abandoned_: set by a worker thread
  std::shared_ptr<CompletionSession> pending_session_;
  bool abandoned_ = false;
};

std::shared_ptr<HttpConnection> start_http_connection(HttpServer& server,
                                                      asio::thread_pool& workers,
                                                      tcp::socket socket, bool api_port) {
  auto connection = std::make_shared<HttpConnection>(server, workers, std::move(socket), api_port);
  asio::post(connection->stream_executor(), [connection] { connection->start(); });
  return connection;
}

void abandon_http_connection(HttpConnection& connection) {
  connection.abandon();
}

}  // namespace alem::serve
