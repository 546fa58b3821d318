// The provider's gRPC streams to the network (see provider_client.h): dial, register, read
// leases, heartbeats, backoff, credits and the drain.
#include "network/provider_client.h"

#include <grpcpp/grpcpp.h>

#include <fstream>
#include <random>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "network/protocol.h"
#include "network/provider.grpc.pb.h"

namespace alem::network {
namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t unix_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, "cannot read the network CA file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

// One open stream. Lease threads hold it (shared) while they answer, so it outlives its
// connection's read loop; writes after the stream ended return false.
struct ProviderClient::Stream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::ProviderMessage, v1::NetworkMessage>> rw;
  std::mutex write_mutex;
  bool alive = true;  // guarded by write_mutex
  std::atomic<bool> registered{false};
  std::atomic<int64_t> last_heard_ms{now_ms()};
  std::atomic<int64_t> last_sent_ms{0};
  // When the read loop ended (0: still reading). gRPC's Finish() waits for the server's status,
  // which never comes when the stream broke on our side (a message that did not parse): the
  // ticker cancels the call if Finish() has not returned within a second.
  std::atomic<int64_t> read_ended_ms{0};
  std::atomic<bool> cancelled{false};
  std::atomic<bool> heartbeats_stop{false};
  std::atomic<int64_t> heartbeat_interval_ms{1000};
  std::atomic<int64_t> heartbeat_timeout_ms{5000};

  bool write(const v1::ProviderMessage& message) {
    std::lock_guard<std::mutex> lock(write_mutex);
    if (!alive || !rw) return false;
    if (!rw->Write(message)) {
      alive = false;
      return false;
    }
    last_sent_ms.store(now_ms());
    return true;
  }
  grpc::Status finish() {
    std::lock_guard<std::mutex> lock(write_mutex);
    alive = false;
    return rw ? rw->Finish() : grpc::Status(grpc::StatusCode::UNAVAILABLE, "no stream");
  }
};

struct ProviderClient::Connection {
  std::string endpoint;
  uint32_t credits = 0;
  std::thread thread;
  mutable std::mutex mutex;
  std::shared_ptr<Stream> stream;  // guarded by mutex
  std::string session_id;          // guarded by mutex
  std::atomic<bool> connected{false};
  std::atomic<bool> registered{false};
  std::atomic<uint64_t> connects{0};
};

namespace {

class StreamReply final : public LeaseReply {
 public:
  explicit StreamReply(std::shared_ptr<void> keep,
                       std::function<bool(const v1::ProviderMessage&)> w)
      : keep_(std::move(keep)), write_(std::move(w)) {}
  bool send(const v1::ProviderMessage& message) override { return write_(message); }

 private:
  std::shared_ptr<void> keep_;
  std::function<bool(const v1::ProviderMessage&)> write_;
};

}  // namespace

ProviderClient::ProviderClient(ProviderClientOptions options, const ProviderKeys& keys,
                               LeaseHandler& handler)
    : options_(std::move(options)), keys_(keys), handler_(handler) {
  ALEM_CHECK(!options_.endpoints.empty(), "the provider client needs at least one endpoint");
  ALEM_CHECK(options_.credits >= 1, "the provider's credits must be at least 1");
  ALEM_CHECK(static_cast<bool>(options_.evidence), "the provider client needs an evidence hook");
  for (const std::string& e : options_.endpoints) {
    const auto colon = e.rfind(':');
    ALEM_CHECK(colon != std::string::npos && colon > 0 && colon + 1 < e.size(),
               "network endpoint \"" + e + "\" is not HOST:PORT");
  }
  if (!options_.insecure && !options_.ca_file.empty()) read_text_file(options_.ca_file);
  const size_t n = options_.endpoints.size();
  for (size_t i = 0; i < n; ++i) {
    auto c = std::make_unique<Connection>();
    c->endpoint = options_.endpoints[i];
    c->credits = static_cast<uint32_t>(options_.credits / n + (i < options_.credits % n ? 1 : 0));
    connections_.push_back(std::move(c));
  }
}

ProviderClient::~ProviderClient() {
  stop();
}

void ProviderClient::start() {
  if (started_.exchange(true)) return;
  if (options_.insecure) {
    log_warn("network: plaintext gRPC (--network-insecure); for tests only, never in production");
  }
  for (auto& c : connections_) {
    Connection* conn = c.get();
    conn->thread = std::thread([this, conn] { run_connection(*conn); });
  }
  ticker_ = std::thread([this] { run_ticker(); });
}

void ProviderClient::drain() {
  if (draining_.exchange(true)) return;
  handler_.set_draining(true);
  log_info("network: draining (new leases are handed back)",
           {{"open_leases", std::to_string(open_leases_.load())}});
}

void ProviderClient::stop() {
  if (!started_.load() || stopping_.exchange(true)) return;
  wake_.notify_all();
  for (auto& c : connections_) {
    std::lock_guard<std::mutex> lock(c->mutex);
    if (c->stream) c->stream->context.TryCancel();
  }
  for (auto& c : connections_) {
    if (c->thread.joinable()) c->thread.join();
  }
  if (ticker_.joinable()) ticker_.join();
  std::unique_lock<std::mutex> lock(mutex_);
  leases_done_.wait(lock, [this] { return lease_threads_ == 0; });
  log_info("network: stopped");
}

v1::ProviderMessage ProviderClient::make_register(const Connection& connection) {
  v1::ProviderMessage message;
  v1::Register* reg = message.mutable_register_();
  reg->set_protocol_version(kProtocolVersion);
  const X25519PublicKey& sealing = keys_.sealing().public_key();
  reg->set_sealing_public_key(sealing.data(), sealing.size());
  const RegisterEvidence evidence = options_.evidence(sealing);
  reg->set_evidence_format(evidence.format);
  reg->set_evidence(evidence.bytes);
  for (const v1::ModelInfo& m : options_.models) *reg->add_models() = m;
  reg->set_credits(draining_.load() ? 0 : connection.credits);
  reg->set_replicas(options_.replicas);
  reg->set_provider_name(options_.provider_name);
  sign_register(keys_, *reg);
  return message;
}

bool ProviderClient::sleep_backoff(std::chrono::milliseconds delay) {
  std::unique_lock<std::mutex> lock(mutex_);
  wake_.wait_for(lock, delay, [this] { return stopping_.load(); });
  return !stopping_.load();
}

void ProviderClient::run_connection(Connection& connection) {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options_.insecure) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    if (!options_.ca_file.empty()) ssl.pem_root_certs = read_text_file(options_.ca_file);
    credentials = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  std::mt19937_64 rng(std::random_device{}());
  std::chrono::milliseconds backoff = options_.initial_backoff;

  while (!stopping_.load()) {
    auto channel = grpc::CreateCustomChannel(connection.endpoint, credentials, args);
    auto stub = v1::ProviderQueue::NewStub(channel);
    auto stream = std::make_shared<Stream>();
    stream->heartbeat_interval_ms = options_.heartbeat_interval.count();
    stream->heartbeat_timeout_ms = options_.heartbeat_timeout.count();
    stream->rw = stub->Connect(&stream->context);
    {
      std::lock_guard<std::mutex> lock(connection.mutex);
      connection.stream = stream;
    }
    if (stopping_.load()) stream->context.TryCancel();

    bool registered = false;
    std::thread heartbeats;
    if (stream->write(make_register(connection))) {
      // Heartbeats on their own thread: a Write may block on a stalled stream, and the ticker
      // that watches timeouts must not.
      heartbeats = std::thread([this, stream, &connection] {
        while (!stream->heartbeats_stop.load()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
          if (now_ms() - stream->last_sent_ms.load() < stream->heartbeat_interval_ms.load()) {
            continue;
          }
          v1::ProviderMessage hb;
          hb.mutable_heartbeat()->set_unix_ms(unix_ms());
          hb.mutable_heartbeat()->set_open_leases(static_cast<uint32_t>(open_leases_.load()));
          hb.mutable_heartbeat()->set_credits(draining_.load() ? 0 : connection.credits);
          if (!stream->write(hb)) break;
        }
      });
      connection.connected = true;
      connection.connects.fetch_add(1);
      log_info("network connected", {{"endpoint", connection.endpoint},
                                     {"credits", std::to_string(connection.credits)}});
      v1::NetworkMessage message;
      while (stream->rw->Read(&message)) {
        stream->last_heard_ms = now_ms();
        switch (message.kind_case()) {
          case v1::NetworkMessage::kRegistered: {
            const v1::Registered& r = message.registered();
            if (r.heartbeat_interval_ms() > 0) {
              stream->heartbeat_interval_ms = r.heartbeat_interval_ms();
            }
            if (r.heartbeat_timeout_ms() > 0)
              stream->heartbeat_timeout_ms = r.heartbeat_timeout_ms();
            {
              std::lock_guard<std::mutex> lock(connection.mutex);
              connection.session_id = r.session_id();
            }
            stream->registered = true;
            connection.registered = true;
            registered = true;
            backoff = options_.initial_backoff;
            log_info("network registered",
                     {{"endpoint", connection.endpoint},
                      {"session", r.session_id()},
                      {"heartbeat_ms", std::to_string(stream->heartbeat_interval_ms.load())}});
            break;
          }
          case v1::NetworkMessage::kLease:
            on_lease(connection, stream, message.lease());
            break;
          case v1::NetworkMessage::kHeartbeat:
            break;
          case v1::NetworkMessage::kRefused:
            log_error("network refused the registration",
                      {{"endpoint", connection.endpoint}, {"reason", message.refused()}});
            stream->context.TryCancel();
            break;
          default:
            log_warn("network: message of an unknown kind ignored",
                     {{"endpoint", connection.endpoint}});
            break;
        }
      }
    }
    stream->read_ended_ms = now_ms();
    connection.registered = false;
    const grpc::Status status = stream->finish();
    connection.connected = false;
    stream->heartbeats_stop = true;
    if (heartbeats.joinable()) heartbeats.join();
    {
      std::lock_guard<std::mutex> lock(connection.mutex);
      connection.stream.reset();
    }
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      oversized_messages_.fetch_add(1);
      log_error(
          "network: a message over the size limit was refused; reconnecting",
          {{"endpoint", connection.endpoint}, {"limit_bytes", std::to_string(kMaxMessageBytes)}});
    }
    if (stopping_.load()) break;
    log_warn("network disconnected", {{"endpoint", connection.endpoint},
                                      {"grpc_code", std::to_string(status.error_code())},
                                      {"grpc_message", status.error_message()},
                                      {"was_registered", registered ? "true" : "false"}});
    // Full jitter over the upper half: [backoff/2, backoff].
    const int64_t top = backoff.count();
    std::uniform_int_distribution<int64_t> pick(top / 2, std::max<int64_t>(top, 1));
    if (!sleep_backoff(std::chrono::milliseconds(pick(rng)))) break;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

void ProviderClient::on_lease(Connection& connection, const std::shared_ptr<Stream>& stream,
                              const v1::Lease& lease) {
  auto write = [stream](const v1::ProviderMessage& m) { return stream->write(m); };
  // Take a credit, or hand the lease back at once. While draining the handler only hands
  // leases back (or answers them from the journal), so no credit is needed.
  int64_t open = open_leases_.load();
  bool took = false;
  if (draining_.load()) {
    open_leases_.fetch_add(1);
    took = true;
  }
  while (!took && open < static_cast<int64_t>(options_.credits)) {
    if (open_leases_.compare_exchange_weak(open, open + 1)) {
      took = true;
      break;
    }
  }
  if (!took) {
    over_credit_releases_.fetch_add(1);
    log_warn("network: a lease beyond the provider's credits was handed back",
             {{"endpoint", connection.endpoint}, {"request_id", hex(lease.request_id())}});
    v1::ProviderMessage out;
    out.mutable_release()->set_request_id(lease.request_id());
    out.mutable_release()->set_reason("over credits");
    write(out);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++lease_threads_;
  }
  std::thread([this, stream, lease, write] {
    // The credit goes back just before the lease's last message (final, error or release) is
    // written: the network frees the lease when it reads that message and may send the next
    // one at once, which must find the credit free here (not be handed back "over credits").
    bool credit_returned = false;
    auto return_credit = [this, &credit_returned] {
      if (!credit_returned) {
        credit_returned = true;
        open_leases_.fetch_sub(1);
      }
    };
    StreamReply reply(stream, [&](const v1::ProviderMessage& m) {
      const auto kind = m.kind_case();
      if (kind == v1::ProviderMessage::kFinal || kind == v1::ProviderMessage::kError ||
          kind == v1::ProviderMessage::kRelease) {
        return_credit();
      }
      return write(m);
    });
    handler_.handle(lease, reply);
    return_credit();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --lease_threads_;
    }
    leases_done_.notify_all();
  }).detach();
}

void ProviderClient::run_ticker() {
  // Watches every stream; never writes, so a stalled stream cannot stall it.
  while (!stopping_.load()) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(50), [this] { return stopping_.load(); });
    }
    if (stopping_.load()) break;
    const int64_t now = now_ms();
    for (auto& c : connections_) {
      std::shared_ptr<Stream> stream;
      {
        std::lock_guard<std::mutex> lock(c->mutex);
        stream = c->stream;
      }
      if (!stream || stream->cancelled.load()) continue;
      const int64_t ended = stream->read_ended_ms.load();
      if (ended > 0) {
        if (now - ended > 1000) {
          log_warn(
              "network: the stream broke without a status (a message that did not parse?); "
              "cancelling it",
              {{"endpoint", c->endpoint}});
          stream->cancelled = true;
          stream->context.TryCancel();
        }
        continue;
      }
      if (!c->connected.load()) continue;
      if (now - stream->last_heard_ms.load() > stream->heartbeat_timeout_ms.load()) {
        log_warn("network heartbeat timeout: dropping the stream",
                 {{"endpoint", c->endpoint},
                  {"timeout_ms", std::to_string(stream->heartbeat_timeout_ms.load())}});
        stream->cancelled = true;
        stream->context.TryCancel();
      }
    }
  }
}

std::vector<EndpointStatus> ProviderClient::status() const {
  std::vector<EndpointStatus> out;
  for (const auto& c : connections_) {
    EndpointStatus s;
    s.endpoint = c->endpoint;
    s.connected = c->connected.load();
    s.registered = c->registered.load();
    s.connects = c->connects.load();
    s.credits = c->credits;
    std::lock_guard<std::mutex> lock(c->mutex);
    s.session_id = c->session_id;
    out.push_back(s);
  }
  return out;
}

std::string ProviderClient::render_metrics() const {
  std::string out = handler_.render_metrics();
  out += "# HELP alem_network_registered Whether the stream to an endpoint is registered.\n";
  out += "# TYPE alem_network_registered gauge\n";
  for (const EndpointStatus& s : status()) {
    out += "alem_network_registered{endpoint=\"" + s.endpoint + "\"} " +
           (s.registered ? "1" : "0") + "\n";
  }
  out += "# HELP alem_network_connects_total Streams opened to an endpoint.\n";
  out += "# TYPE alem_network_connects_total counter\n";
  for (const EndpointStatus& s : status()) {
    out += "alem_network_connects_total{endpoint=\"" + s.endpoint + "\"} " +
           std::to_string(s.connects) + "\n";
  }
  out += "# HELP alem_network_open_leases Leases held now, all endpoints together.\n";
  out += "# TYPE alem_network_open_leases gauge\nalem_network_open_leases " +
         std::to_string(open_leases_.load()) + "\n";
  out += "# HELP alem_network_over_credit_total Leases beyond the credits, handed back.\n";
  out += "# TYPE alem_network_over_credit_total counter\nalem_network_over_credit_total " +
         std::to_string(over_credit_releases_.load()) + "\n";
  out += "# HELP alem_network_oversized_total Streams dropped for a message over the limit.\n";
  out += "# TYPE alem_network_oversized_total counter\nalem_network_oversized_total " +
         std::to_string(oversized_messages_.load()) + "\n";
  return out;
}

}  // namespace alem::network
