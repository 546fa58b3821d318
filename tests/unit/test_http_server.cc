// The gateway's HTTP layer against raw sockets, with a fake engine (no model): a port in use,
// pipelining, body limits for sized and chunked bodies, request smuggling, slow clients, JSON
// that must be refused, authentication, a client that hangs up and an engine that fails
// mid-stream. Each test would fail on the cpp-httplib server this replaced.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "byte_level_model.h"
#include "core/error.h"
#include "model/tokenizer.h"
#include "serve/http_server.h"

namespace alem::serve {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Generates `tokens` tokens ('a') per request, one every `interval`, on its own thread; or,
// with fail_after >= 0, ends every request with kError after that many tokens.
class FakeEngine : public EngineClient {
 public:
  explicit FakeEngine(int tokens = 3, std::chrono::milliseconds interval = 5ms, int fail_after = -1)
      : tokens_(tokens), interval_(interval), fail_after_(fail_after), thread_([this] { run(); }) {}
  ~FakeEngine() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    thread_.join();
  }
  SubmitResult submit(EngineRequest request) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t id = next_id_++;
    live_[id] = {std::move(request.on_event), 0, false,
                 std::min(tokens_, static_cast<int>(request.params.max_tokens))};
    return {SubmitStatus::kAccepted, id, 0};
  }
  void cancel(int64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = live_.find(id); it != live_.end()) it->second.cancelled = true;
    ++cancels_;
  }
  std::vector<ReplicaStats> stats() const override { return {ReplicaStats{}}; }
  bool healthy() const override { return true; }
  int max_model_len() const override { return 4096; }
  int cancels() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cancels_;
  }

 private:
  struct Live {
    EngineEventCallback on_event;
    int sent = 0;
    bool cancelled = false;
    int limit = 0;  // max_tokens, at most tokens_
  };
  void run() {
    while (true) {
      std::vector<std::pair<EngineEventCallback, RequestEvent>> out;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stop_) return;
        for (auto it = live_.begin(); it != live_.end();) {
          RequestEvent e;
          e.request_id = it->first;
          Live& l = it->second;
          if (l.cancelled || (fail_after_ >= 0 && l.sent >= fail_after_) || l.sent >= l.limit) {
            e.finished = true;
            e.finish_reason = l.cancelled        ? FinishReason::kAbort
                              : fail_after_ >= 0 ? FinishReason::kError
                                                 : FinishReason::kLength;
          } else {
            e.has_token = true;
            e.token_id = 'a';
            ++l.sent;
          }
          out.emplace_back(l.on_event, e);
          it = e.finished ? live_.erase(it) : std::next(it);
        }
      }
      for (auto& [callback, event] : out) callback(event);
      std::this_thread::sleep_for(interval_);
    }
  }
  const int tokens_;
  const std::chrono::milliseconds interval_;
  const int fail_after_;
  mutable std::mutex mutex_;
  std::map<int64_t, Live> live_;
  int64_t next_id_ = 1;
  int cancels_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

struct TinyModel : ByteLevelModel {
  TinyModel() : ByteLevelModel("tiny") {}
};

// One server on a free loopback port, with an engine attached.
struct Fixture {
  explicit Fixture(HttpServerOptions options = {}, std::unique_ptr<FakeEngine> fake = nullptr)
      : engine(fake ? std::move(fake) : std::make_unique<FakeEngine>()) {
    options.port = 0;
    server = std::make_unique<HttpServer>(model.served, metrics, options);
    server->bind();
    server->start();
    server->attach_engine(engine.get());
  }
  ~Fixture() { server->stop(); }
  TinyModel model;
  ServingMetrics metrics{1};
  std::unique_ptr<FakeEngine> engine;
  std::unique_ptr<HttpServer> server;
};

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until `done(received)` or EOF or `timeout`.
std::string read_until(int fd, const std::function<bool(const std::string&)>& done,
                       std::chrono::milliseconds timeout = 10s) {
  std::string got;
  const auto end = Clock::now() + timeout;
  while (!done(got) && Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    const int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
    if (::poll(&p, 1, std::max(left, 1)) <= 0) break;
    char buf[65536];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

bool has_headers(const std::string& s) {
  return s.find("\r\n\r\n") != std::string::npos;
}

// One request on a fresh connection; the whole answer (the server closes or it is complete).
std::string round_trip(int port, const std::string& request, std::chrono::milliseconds t = 10s) {
  const int fd = connect_to(port);
  EXPECT_GE(fd, 0);
  send_all(fd, request);
  const std::string got = read_until(
      fd,
      [](const std::string& s) {
        const size_t end = s.find("\r\n\r\n");
        if (end == std::string::npos) return false;
        const size_t cl = s.find("Content-Length: ");
        if (cl == std::string::npos || cl > end) return false;
        return s.size() >= end + 4 + std::stoul(s.substr(cl + 16));
      },
      t);
  ::close(fd);
  return got;
}

std::string post(const std::string& path, const std::string& body,
                 const std::string& extra_headers = "") {
  return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
         extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

const std::string kHealth = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

TEST(HttpServer, PortInUseIsAClearStartupError) {
  Fixture a;
  TinyModel model;
  ServingMetrics metrics;
  HttpServerOptions options;
  options.port = a.server->port();
  HttpServer b(model.served, metrics, options);
  try {
    b.bind();
    FAIL() << "a second server bound the same port";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(options.port)),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
  }
}

TEST(HttpServer, PipelinedRequestsAreAllAnsweredInOrder) {
  Fixture f;
  const int fd = connect_to(f.server->port());
  std::string requests;
  for (int i = 0; i < 5; ++i) {
    requests += i % 2 ? kHealth : std::string("GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  ASSERT_TRUE(send_all(fd, requests));
  const std::string got =
      read_until(fd, [](const std::string& s) { return count(s, "HTTP/1.1 200") >= 5; });
  ::close(fd);
  EXPECT_EQ(count(got, "HTTP/1.1 200"), 5u) << got;
  EXPECT_EQ(count(got, "\"version\""), 3u);
  // In order: version, health, version, health, version.
  const size_t first_health = got.find("text/plain");
  EXPECT_LT(got.find("\"version\""), first_health);
}

TEST(HttpServer, ChunkedBodyOverTheLimitIs413) {
  HttpServerOptions o;
  o.max_body_bytes = 64 * 1024;
  Fixture f(o);
  const int fd = connect_to(f.server->port());
  send_all(fd,
           "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           "Content-Type: application/json\r\n\r\n");
  const std::string chunk = "4000\r\n" + std::string(0x4000, 'x') + "\r\n";
  const auto start = Clock::now();
  for (int i = 0; i < 64; ++i) {  // 1 MiB, 16 times the limit
    if (!send_all(fd, chunk)) break;
  }
  const std::string got = read_until(fd, has_headers);
  ::close(fd);
  EXPECT_NE(got.find("HTTP/1.1 413"), std::string::npos) << got.substr(0, 200);
  EXPECT_LT(Clock::now() - start, 10s);
  EXPECT_EQ(round_trip(f.server->port(), kHealth).rfind("HTTP/1.1 200", 0), 0u);
}

TEST(HttpServer, ContentLengthWithChunkedIsRefused) {
  Fixture f;
  const std::string got =
      round_trip(f.server->port(),
                 "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
}

TEST(HttpServer, HugeContentLengthIs413AtOnce) {
  Fixture f;
  const auto start = Clock::now();
  const std::string got = round_trip(
      f.server->port(),
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n\r\n", 5s);
  EXPECT_EQ(got.rfind("HTTP/1.1 413", 0), 0u) << got;
  EXPECT_LT(Clock::now() - start, 3s);
}

TEST(HttpServer, SlowClientsDoNotStopHealth) {
  HttpServerOptions o;
  o.io_threads = 1;
  o.threads = 1;
  o.header_timeout = 3s;
  Fixture f(o);
  std::vector<int> slow;
  for (int i = 0; i < 20; ++i) {
    slow.push_back(connect_to(f.server->port()));
    send_all(slow.back(), "POST /v1/completions HTTP/1.1\r\n");
  }
  std::atomic<bool> done{false};
  std::thread dribble([&] {
    while (!done) {
      for (int fd : slow) send_all(fd, "X");
      std::this_thread::sleep_for(200ms);
    }
  });
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    const std::string got = round_trip(f.server->port(), kHealth, 2s);
    EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
    EXPECT_LT(Clock::now() - start, 1s);
    std::this_thread::sleep_for(300ms);
  }
  // The header deadline closes them, far sooner than a byte every 200 ms would finish.
  const std::string slow_answer = read_until(slow.front(), has_headers, 10s);
  char byte = 0;
  const ssize_t n = ::recv(slow.front(), &byte, 1, MSG_DONTWAIT);
  EXPECT_TRUE(n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
      << "a slow client is still connected past the header deadline";
  done = true;
  dribble.join();
  for (int fd : slow) ::close(fd);
}

TEST(HttpServer, OverflowingNumberIs400AndDeepNestingLeavesTheServerUp) {
  Fixture f;
  std::string got = round_trip(
      f.server->port(), post("/v1/completions", R"({"model":"tiny","prompt":"a","top_p":1e999})"));
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
  EXPECT_EQ(got.find("1e999"), std::string::npos);

  const std::string deep = std::string(110000, '[') + std::string(110000, ']');
  got = round_trip(f.server->port(), post("/v1/completions", deep));
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got.substr(0, 300);
  EXPECT_NE(got.find("line 1, column"), std::string::npos) << got.substr(0, 300);
  EXPECT_EQ(round_trip(f.server->port(), kHealth).rfind("HTTP/1.1 200", 0), 0u);
}

TEST(HttpServer, ApiKeyIsRequiredWhereConfigured) {
  HttpServerOptions o;
  o.api_key = "s3cret-key";
  Fixture f(o);
  const int port = f.server->port();
  const std::string models = "GET /v1/models HTTP/1.1\r\nHost: x\r\n";
  std::string got = round_trip(port, models + "\r\n");
  EXPECT_EQ(got.rfind("HTTP/1.1 401", 0), 0u) << got;
  EXPECT_NE(got.find("WWW-Authenticate: Bearer"), std::string::npos);
  EXPECT_NE(got.find("\"code\":\"invalid_api_key\""), std::string::npos);
  got = round_trip(port, models + "Authorization: Bearer wrong\r\n\r\n");
  EXPECT_EQ(got.rfind("HTTP/1.1 401", 0), 0u) << got;
  got = round_trip(port, models + "Authorization: Bearer s3cret-key\r\n\r\n");
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  got = round_trip(port, post("/v1/completions", R"({"model":"tiny","prompt":"ab"})"));
  EXPECT_EQ(got.rfind("HTTP/1.1 401", 0), 0u) << got;
  EXPECT_EQ(round_trip(port, kHealth).rfind("HTTP/1.1 200", 0), 0u);  // open by default

  HttpServerOptions p;
  p.api_key = "k";
  p.api_key_protects_health = true;
  Fixture g(p);
  EXPECT_EQ(round_trip(g.server->port(), kHealth).rfind("HTTP/1.1 401", 0), 0u);
  EXPECT_EQ(round_trip(g.server->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .rfind("HTTP/1.1 200", 0),
            0u);
}

TEST(HttpServer, CompletionAnswersAndClientHangupCancels) {
  Fixture f({}, std::make_unique<FakeEngine>(/*tokens=*/1000, 10ms));
  // Two tokens: a complete answer.
  std::string got =
      round_trip(f.server->port(),
                 post("/v1/completions", R"({"model":"tiny","prompt":"ab","max_tokens":2})"));
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_NE(got.find("\"text\":\"aa\""), std::string::npos) << got;

  const int before = f.engine->cancels();
  const int fd = connect_to(f.server->port());
  send_all(fd, post("/v1/completions", R"({"model":"tiny","prompt":"ab","max_tokens":1000})"));
  std::this_thread::sleep_for(300ms);
  ::close(fd);  // a non-streaming client that hangs up
  const auto end = Clock::now() + 5s;
  while (f.engine->cancels() == before && Clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_GT(f.engine->cancels(), before) << "the request ran on after its client left";
}

// A request that arrives while the previous one is generating: the peer watch reads it ahead,
// both are answered in order, and a hang-up after it still cancels (the connection's lifetime
// once hung on the watch, so pipelined bytes reset the connection and cancelled the first).
TEST(HttpServer, RequestPipelinedWhileOneGeneratesIsAnsweredAfterIt) {
  Fixture f({}, std::make_unique<FakeEngine>(/*tokens=*/1000, 10ms));
  int fd = connect_to(f.server->port());
  send_all(fd, post("/v1/completions", R"({"model":"tiny","prompt":"ab","max_tokens":30})"));
  std::this_thread::sleep_for(100ms);
  send_all(fd, kHealth);
  std::string got =
      read_until(fd, [](const std::string& s) { return count(s, "HTTP/1.1 200") >= 2; });
  ::close(fd);
  ASSERT_EQ(count(got, "HTTP/1.1 200"), 2u) << got;
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_NE(got.find(std::string(30, 'a')), std::string::npos) << got;
  EXPECT_LT(got.find(std::string(30, 'a')), got.find("text/plain"));

  const int before = f.engine->cancels();
  fd = connect_to(f.server->port());
  send_all(fd, post("/v1/completions", R"({"model":"tiny","prompt":"ab","max_tokens":1000})"));
  std::this_thread::sleep_for(100ms);
  send_all(fd, kHealth);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(f.engine->cancels(), before) << "pipelined bytes cancelled the running request";
  ::close(fd);
  const auto end = Clock::now() + 5s;
  while (f.engine->cancels() == before && Clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_GT(f.engine->cancels(), before) << "a hang-up after a pipelined request went unnoticed";
}

TEST(HttpServer, StreamWhoseEngineFailsEndsWithAnErrorEvent) {
  Fixture f({}, std::make_unique<FakeEngine>(100, 10ms, /*fail_after=*/3));
  const int fd = connect_to(f.server->port());
  send_all(fd, post("/v1/completions", R"({"model":"tiny","prompt":"ab","stream":true})"));
  const std::string stream =
      read_until(fd, [](const std::string& s) { return s.find("0\r\n\r\n") != std::string::npos; });
  ::close(fd);
  EXPECT_EQ(stream.rfind("HTTP/1.1 200", 0), 0u) << stream;
  EXPECT_NE(stream.find("data: {\"error\":"), std::string::npos) << stream;
  EXPECT_NE(stream.find("data: [DONE]"), std::string::npos) << stream;
  EXPECT_LT(stream.find("data: {\"error\":"), stream.find("data: [DONE]"));
}

}  // namespace
}  // namespace alem::serve
