// The simulator's queue server over real gRPC on 127.0.0.1, driven by a small provider written
// here (not alem serve: that one is tested end to end in tests/e2e/network/). The small
// provider follows the protocol by the book: it registers with a signed Register, opens each
// lease with the real sealing code, refuses bad envelopes with the right error code, keeps an
// in-memory journal so a redelivered request is answered from it, and reconnects when its
// stream drops. With faults on, the run must still end with nothing lost and nothing billed
// twice; a provider without a journal must show up in billed_twice; bad registrations and
// malformed or oversized messages are refused and the server keeps serving.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sodium.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "network/evidence.h"
#include "network/netsim_server.h"
#include "network/protocol.h"
#include "network/provider.grpc.pb.h"
#include "network/provider_keys.h"
#include "network/sealing.h"

namespace alem::netsim {
namespace {

namespace v1 = alem::network::v1;
using nlohmann::json;

class TinyProvider {
 public:
  explicit TinyProvider(int port) : port_(port), keys_(network::ProviderKeys::generate()) {}
  // A second stream of the same provider (same identity and sealing key).
  TinyProvider(int port, const network::ProviderKeys& keys) : port_(port), keys_(keys) {}
  ~TinyProvider() { stop(); }

  bool use_journal = true;
  uint32_t protocol_version = network::kProtocolVersion;
  bool break_signature = false;
  bool bad_evidence = false;
  int hang_up_after = 0;  // the first stream hangs up, unanswered, after this many leases
  // The first lease's attempt 1 is answered only once attempt 2 (after its deadline) arrives on
  // the same stream: `straddle` sends half its chunks before and the rest and its final after;
  // `stale_error` answers attempt 1 with an error after attempt 2 arrived.
  bool straddle = false;
  bool stale_error = false;
  // Every lease is held, never answered, until hang_up() (then no reconnect).
  bool hold = false;
  // Attempt-1 leases are held silently; later attempts are answered. Only the lease's deadline
  // (the server's timer) can bring such a request back.
  bool ignore_first_attempt = false;
  uint32_t credits = 3;

  void start() {
    thread_ = std::thread([this] {
      while (!stop_.load()) {
        session();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
  }
  void stop() {
    stop_ = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (context_) context_->TryCancel();
    }
    if (thread_.joinable()) thread_.join();
  }
  // Ends the stream now, holding its leases, and does not dial again.
  void hang_up() {
    stop_ = true;
    std::lock_guard<std::mutex> lock(mu_);
    if (context_) context_->TryCancel();
  }
  std::string refused() {
    std::lock_guard<std::mutex> lock(mu_);
    return refused_;
  }
  int sessions() const { return sessions_.load(); }
  const network::ProviderKeys& keys() const { return keys_; }
  int leases() const { return leases_.load(); }
  bool registered() const { return registered_.load(); }
  // When the first lease arrived (steady clock), or nullopt.
  std::optional<std::chrono::steady_clock::time_point> first_lease_at() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_lease_at_;
  }

  // One stream: register, then answer leases until the stream ends.
  void session() {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(network::kMaxMessageBytes);
    auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_),
                                             grpc::InsecureChannelCredentials(), args);
    auto stub = v1::ProviderQueue::NewStub(channel);
    grpc::ClientContext context;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      context_ = &context;
    }
    auto stream = stub->Connect(&context);
    v1::ProviderMessage hello;
    v1::Register* reg = hello.mutable_register_();
    reg->set_protocol_version(protocol_version);
    const auto& sealing = keys_.sealing().public_key();
    reg->set_sealing_public_key(sealing.data(), sealing.size());
    network::RegisterEvidence evidence = network::make_evidence_hook("off")(sealing);
    reg->set_evidence_format(evidence.format);
    reg->set_evidence(bad_evidence ? "software" : evidence.bytes);
    v1::ModelInfo* model = reg->add_models();
    model->set_name("tiny");
    reg->set_credits(credits);
    reg->set_replicas(1);
    reg->set_provider_name("tiny-test-provider");
    network::sign_register(keys_, *reg);
    if (break_signature) (*reg->mutable_identity_signature())[0] ^= 1;
    ++sessions_;
    if (stream->Write(hello)) {
      v1::NetworkMessage in;
      while (stream->Read(&in)) {
        if (in.kind_case() == v1::NetworkMessage::kRefused) {
          std::lock_guard<std::mutex> lock(mu_);
          refused_ = in.refused();
          stop_ = true;
          break;
        }
        if (in.kind_case() == v1::NetworkMessage::kRegistered) registered_ = true;
        if (in.kind_case() != v1::NetworkMessage::kLease) continue;
        {
          std::lock_guard<std::mutex> lock(mu_);
          if (!first_lease_at_) first_lease_at_ = std::chrono::steady_clock::now();
        }
        ++leases_;
        if (hold) continue;
        if (ignore_first_attempt && in.lease().attempt() == 1) continue;
        if (hang_up_after > 0 && --hang_up_after == 0) {
          context.TryCancel();  // the provider goes away holding leases
          break;
        }
        if (hang_up_after > 0) continue;  // held, never answered
        if ((straddle || stale_error) && late(*stream, in.lease())) continue;
        answer(*stream, in.lease());
      }
    }
    stream->Finish();
    registered_ = false;
    std::lock_guard<std::mutex> lock(mu_);
    context_ = nullptr;
  }

 private:
  struct Recorded {
    std::vector<std::string> chunks;
    v1::ResultFinal final_msg;
  };
  using Stream = grpc::ClientReaderWriter<v1::ProviderMessage, v1::NetworkMessage>;

  void send_error(Stream& s, const std::string& id, v1::ErrorCode code, uint32_t attempt) {
    v1::ProviderMessage m;
    m.mutable_error()->set_request_id(id);
    m.mutable_error()->set_code(code);
    m.mutable_error()->set_attempt(attempt);
    s.Write(m);
  }

  // The straddle and stale_error modes; true when the lease was taken care of here.
  bool late(Stream& s, const v1::Lease& lease) {
    if (held_.request_id().empty() && !late_done_) {
      held_ = lease;  // attempt 1: held until attempt 2 comes
      if (straddle) {
        answer(s, lease, /*chunks_before=*/2);
      }
      return true;
    }
    if (late_done_ || lease.request_id() != held_.request_id()) return false;
    late_done_ = true;
    if (stale_error) {
      send_error(s, held_.request_id(), v1::ERROR_BAD_REQUEST, held_.attempt());
    } else {
      replay_answer(s, journal_[held_.request_id()], false, held_.attempt(), 2);
    }
    return false;  // attempt 2 is answered as usual
  }

  void answer(Stream& s, const v1::Lease& lease, int chunks_before = -1) {
    const std::string& id = lease.request_id();
    const uint32_t attempt = lease.attempt();
    auto send_error = [&](Stream& st, const std::string& rid, v1::ErrorCode code) {
      this->send_error(st, rid, code, attempt);
    };
    // By the book: the envelope is checked first, on every delivery, then the journal.
    const std::string& sealed = lease.sealed_request();
    if (sealed.size() > network::kMaxSealedRequestBytes) {
      return send_error(s, id, v1::ERROR_TOO_LARGE);
    }
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, reinterpret_cast<const unsigned char*>(sealed.data()),
                       sealed.size(), nullptr, 0);
    std::string h(reinterpret_cast<char*>(hash), sizeof hash);
    auto seen = envelopes_.find(h);
    if (seen != envelopes_.end() && seen->second != id) {
      return send_error(s, id, v1::ERROR_REPLAYED);
    }
    auto opened = network::open_envelope(keys_.sealing(), id, network::kPurposeRequest, sealed);
    switch (opened.error) {
      case network::OpenError::kNone:
        break;
      case network::OpenError::kBadEnvelope:
        return send_error(s, id, v1::ERROR_BAD_ENVELOPE);
      case network::OpenError::kWrongRecipient:
        return send_error(s, id, v1::ERROR_WRONG_RECIPIENT);
      case network::OpenError::kTampered:
        return send_error(s, id, v1::ERROR_TAMPERED);
    }
    envelopes_[h] = id;
    if (use_journal && journal_.count(id)) {
      replay_answer(s, journal_[id], true, attempt);
      return;
    }
    v1::RequestPayload payload;
    if (!payload.ParseFromArray(opened.payload.view().data(),
                                static_cast<int>(opened.payload.size()))) {
      return send_error(s, id, v1::ERROR_BAD_REQUEST);
    }
    json body = json::parse(payload.body(), nullptr, false);
    if (body.is_discarded()) return send_error(s, id, v1::ERROR_BAD_REQUEST);
    network::X25519PublicKey client{};
    std::copy(payload.client_public_key().begin(), payload.client_public_key().end(),
              client.begin());
    bool chat = payload.endpoint() == "/v1/chat/completions";
    uint32_t max_tokens = body.value("max_tokens", 4u);
    const char* object = chat ? "chat.completion.chunk" : "text_completion";
    Recorded rec;
    for (uint32_t t = 0; t <= max_tokens; ++t) {
      json chunk = {{"id", "cmpl-tiny"}, {"object", object}};
      if (t < max_tokens) {
        json choice = {{"index", 0},
                       {"finish_reason", t + 1 == max_tokens ? json("length") : json(nullptr)}};
        std::string word = " w" + std::to_string(t);
        if (chat) {
          choice["delta"] = {{"content", word}};
        } else {
          choice["text"] = word;
        }
        chunk["choices"] = json::array({choice});
      } else {
        chunk["choices"] = json::array();
        chunk["usage"] = {{"prompt_tokens", 7}, {"completion_tokens", max_tokens}};
      }
      rec.chunks.push_back(network::seal(client, id, network::chunk_purpose(t), chunk.dump()));
    }
    rec.final_msg.set_request_id(id);
    rec.final_msg.set_chunk_count(static_cast<uint32_t>(rec.chunks.size()));
    rec.final_msg.mutable_usage()->set_prompt_tokens(7);
    rec.final_msg.mutable_usage()->set_completion_tokens(max_tokens);
    rec.final_msg.set_finish_reason("length");
    journal_[id] = rec;
    if (chunks_before >= 0) {
      replay_answer(s, rec, false, attempt, 0, static_cast<uint32_t>(chunks_before));
      return;
    }
    replay_answer(s, rec, false, attempt);
  }

  // Sends chunks [from, to) and, when they reach the end, the final.
  void replay_answer(Stream& s, const Recorded& rec, bool from_journal, uint32_t attempt,
                     uint32_t from = 0, uint32_t to = UINT32_MAX) {
    const uint32_t end = std::min<uint32_t>(to, static_cast<uint32_t>(rec.chunks.size()));
    for (uint32_t i = from; i < end; ++i) {
      v1::ProviderMessage m;
      m.mutable_chunk()->set_request_id(rec.final_msg.request_id());
      m.mutable_chunk()->set_sequence(i);
      m.mutable_chunk()->set_sealed_chunk(rec.chunks[i]);
      m.mutable_chunk()->set_attempt(attempt);
      if (!s.Write(m)) return;
    }
    if (end < rec.chunks.size()) return;
    v1::ProviderMessage m;
    *m.mutable_final() = rec.final_msg;
    m.mutable_final()->set_from_journal(from_journal);
    m.mutable_final()->set_attempt(attempt);
    s.Write(m);
  }

  int port_;
  network::ProviderKeys keys_;
  std::map<std::string, Recorded> journal_;
  std::map<std::string, std::string> envelopes_;
  v1::Lease held_;
  bool late_done_ = false;
  std::atomic<bool> stop_{false};
  std::atomic<int> sessions_{0};
  std::atomic<int> leases_{0};
  std::atomic<bool> registered_{false};
  std::optional<std::chrono::steady_clock::time_point> first_lease_at_;
  std::mutex mu_;
  grpc::ClientContext* context_ = nullptr;
  std::string refused_;
  std::thread thread_;
};

ServerConfig plain_config(const std::string& faults, bool accept_software = true) {
  ServerConfig c;
  c.insecure = true;
  c.accept_software_evidence = accept_software;
  c.faults = parse_fault_spec(faults);
  c.seed = 7;
  c.queue.lease_ms = 5000;
  c.heartbeat_interval_ms = 200;
  return c;
}

json run_against(QueueServer& server, TinyProvider& provider, uint64_t requests) {
  provider.start();
  auto info = server.wait_for_provider(20);
  EXPECT_TRUE(info.has_value());
  if (!info) return json();
  EXPECT_EQ(info->models.front(), "tiny");
  LoadConfig lc;
  lc.requests = requests;
  lc.model = info->models.front();
  lc.max_tokens = 3;
  LoadGenerator load(lc, info->sealing_public_key);
  server.run_load(load, 4, 60, 0.2);
  json report = server.report();
  report["clean"] = server.clean();
  provider.stop();
  server.stop();
  return report;
}

TEST(NetsimGrpc, FaultyRunLosesNothingAndBillsOnce) {
  QueueServer server(
      plain_config("corrupt=2,wrongkey=1,replay=1,malformed=1,oversize=1,dup=2,drop=2,delay_ms=5,"
                   "oversize_bytes=1500000"));
  TinyProvider provider(server.port());
  json r = run_against(server, provider, 24);
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["submitted"], 24);
  EXPECT_EQ(r["completed"], 24);
  EXPECT_EQ(r["verified"], 24);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["failed"], 0);
  EXPECT_EQ(r["billed_twice"], 0);
  EXPECT_EQ(r["faults_accepted"], 0);
  EXPECT_EQ(r["credit_violations"], 0);
  for (const char* f : {"corrupt", "wrongkey", "malformed", "oversize"}) {
    const json& e = r["faults"][f];
    EXPECT_GE(e["injected"].get<int>(), 1) << f;
    EXPECT_EQ(e["refused_as_expected"].get<int>() + e["stream_closed"].get<int>(),
              e["injected"].get<int>())
        << f;
  }
  EXPECT_EQ(r["faults"]["drop"]["injected"], 2);
  EXPECT_GE(provider.sessions(), 3) << "the provider came back after each drop";
  EXPECT_GE(r["redelivered"].get<int>(), 1);
  EXPECT_TRUE(r["clean"].get<bool>());
}

TEST(NetsimGrpc, LeasesOfAStreamThatEndsGoBackAtOnce) {
  ServerConfig config = plain_config("");
  config.queue.lease_ms = 600000;  // far beyond the run: only the stream's end can free them
  QueueServer server(config);
  TinyProvider provider(server.port());
  provider.hang_up_after = 3;
  provider.start();
  auto info = server.wait_for_provider(20);
  ASSERT_TRUE(info.has_value());
  LoadConfig lc;
  lc.requests = 6;
  lc.model = "tiny";
  LoadGenerator load(lc, info->sealing_public_key);
  server.run_load(load, 6, 20, 0);
  json r = server.report();
  provider.stop();
  server.stop();
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["completed"], 6);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["expired"], 0);
  EXPECT_GE(r["returned_by_dropped_streams"].get<int>(), 2);
  EXPECT_GE(r["redelivered"].get<int>(), 2);
}

// Liveness: leases a dropped stream held must reach a stream of the same provider that is
// waiting (registered, but with no free credit while the dropped one held them all) at once,
// without any further event on the waiting stream and long before any deadline. A missed
// wake-up (work back on the queue, nobody told) fails the bound.
TEST(NetsimGrpc, LeasesOfADroppedStreamReachAWaitingStreamAtOnce) {
  ServerConfig config = plain_config("");
  config.queue.lease_ms = 600000;  // far beyond the run: only the drop can free them
  config.heartbeat_timeout_ms = 600000;
  QueueServer server(config);
  TinyProvider holder(server.port());
  holder.hold = true;
  holder.start();
  auto info = server.wait_for_provider(20);
  ASSERT_TRUE(info.has_value());
  LoadConfig lc;
  lc.requests = 6;
  lc.model = "tiny";
  lc.max_tokens = 3;
  LoadGenerator load(lc, info->sealing_public_key);
  std::thread run([&] { server.run_load(load, 6, 60, 0); });
  const auto bounded = [](auto done, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done();
  };
  // The holder takes all 3 credits; a second stream of the same identity registers and waits.
  EXPECT_TRUE(bounded([&] { return holder.leases() >= 3; }, std::chrono::seconds(20)));
  TinyProvider waiter(server.port(), holder.keys());
  waiter.start();
  EXPECT_TRUE(bounded([&] { return waiter.registered(); }, std::chrono::seconds(20)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(waiter.leases(), 0) << "no credit is free while the holder holds them all";
  const auto dropped_at = std::chrono::steady_clock::now();
  holder.hang_up();
  EXPECT_TRUE(bounded([&] { return waiter.first_lease_at().has_value(); }, std::chrono::seconds(3)))
      << "the returned leases did not reach the waiting stream within 3 s";
  run.join();
  const auto first = waiter.first_lease_at();
  ASSERT_TRUE(first.has_value());
  EXPECT_LT(*first - dropped_at, std::chrono::seconds(3));
  json r = server.report();
  r["clean"] = server.clean();
  waiter.stop();
  holder.stop();
  server.stop();
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["completed"], 6);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["expired"], 0);
  EXPECT_EQ(r["returned_by_dropped_streams"], 3);
  EXPECT_EQ(r["credit_violations"], 0);
  EXPECT_TRUE(r["clean"].get<bool>());
}

// Liveness: a lease whose deadline passes while its stream stays silent (no result, no drop,
// no other stream, no new request) is redelivered by the server's own timer.
TEST(NetsimGrpc, AnExpiredLeaseIsRedeliveredWithoutAnyOtherEvent) {
  ServerConfig config = plain_config("");
  config.queue.lease_ms = 400;
  config.heartbeat_timeout_ms = 600000;
  QueueServer server(config);
  TinyProvider provider(server.port());
  provider.ignore_first_attempt = true;
  const auto t0 = std::chrono::steady_clock::now();
  json r = run_against(server, provider, 3);
  const auto took = std::chrono::steady_clock::now() - t0;
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["completed"], 3);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["expired"], 3);
  EXPECT_EQ(r["redelivered"], 3);
  EXPECT_TRUE(r["clean"].get<bool>());
  // 3 requests at once, each answered on its second delivery: about one lease time, plus the
  // start; far less than the run's 60 s limit.
  EXPECT_LT(took, std::chrono::seconds(15));
}

// A lease that expires while its answer streams is delivered again to the same stream; the
// rest of attempt 1's answer then arrives after attempt 2 was sent. Its chunks must be checked
// as attempt 1's (not mixed with attempt 2's), and attempt 2's journal answer is no second bill.
TEST(NetsimGrpc, AnAnswerThatStraddlesItsLeaseExpiryIsCheckedAsItsOwnAttempt) {
  ServerConfig config = plain_config("");
  config.queue.lease_ms = 300;
  QueueServer server(config);
  TinyProvider provider(server.port());
  provider.straddle = true;
  json r = run_against(server, provider, 3);
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["completed"], 3);
  EXPECT_EQ(r["verified"], 3);
  EXPECT_EQ(r["failed"], 0);
  EXPECT_GE(r["expired"].get<int>(), 1);
  EXPECT_EQ(r["billed_twice"], 0);
  EXPECT_TRUE(r["clean"].get<bool>());
}

// An error for attempt 1 that arrives after attempt 2 was delivered is stale: it must not close
// attempt 2's lease (nor fail the request).
TEST(NetsimGrpc, AStaleErrorDoesNotCloseTheNextAttempt) {
  ServerConfig config = plain_config("");
  config.queue.lease_ms = 300;
  QueueServer server(config);
  TinyProvider provider(server.port());
  provider.stale_error = true;
  json r = run_against(server, provider, 3);
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["completed"], 3);
  EXPECT_EQ(r["failed"], 0);
  EXPECT_GE(r["stale_messages"].get<int>(), 1);
  EXPECT_TRUE(r["clean"].get<bool>());
}

TEST(NetsimGrpc, AProviderThatComputesTwiceIsCaught) {
  QueueServer server(plain_config("dup=3"));
  TinyProvider provider(server.port());
  provider.use_journal = false;
  json r = run_against(server, provider, 10);
  SCOPED_TRACE(r.dump(2));
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["faults"]["dup"]["injected"], 3);
  EXPECT_EQ(r["billed_twice"], 3);
  EXPECT_FALSE(r["clean"].get<bool>());
}

void wait_refused(TinyProvider& provider) {
  for (int i = 0; i < 200 && provider.refused().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

TEST(NetsimGrpc, RegistrationsAreCheckedWithAReason) {
  {
    QueueServer server(plain_config("", /*accept_software=*/false));
    TinyProvider provider(server.port());
    provider.start();
    wait_refused(provider);
    EXPECT_FALSE(server.wait_for_provider(0.2).has_value());
    provider.stop();
    EXPECT_NE(provider.refused().find("--accept-software-evidence"), std::string::npos)
        << provider.refused();
  }
  {
    QueueServer server(plain_config(""));
    TinyProvider provider(server.port());
    provider.break_signature = true;
    provider.start();
    wait_refused(provider);
    EXPECT_FALSE(server.wait_for_provider(0.2).has_value());
    provider.stop();
    EXPECT_NE(provider.refused().find("signature"), std::string::npos) << provider.refused();
  }
  {
    QueueServer server(plain_config(""));
    TinyProvider provider(server.port());
    provider.bad_evidence = true;
    provider.start();
    wait_refused(provider);
    EXPECT_FALSE(server.wait_for_provider(0.2).has_value());
    provider.stop();
    EXPECT_NE(provider.refused().find("evidence does not verify"), std::string::npos)
        << provider.refused();
  }
  {
    QueueServer server(plain_config(""));
    TinyProvider provider(server.port());
    provider.protocol_version = 2;
    provider.start();
    wait_refused(provider);
    EXPECT_FALSE(server.wait_for_provider(0.2).has_value());
    provider.stop();
    EXPECT_NE(provider.refused().find("protocol version 2"), std::string::npos)
        << provider.refused();
  }
}

TEST(NetsimGrpc, MalformedAndOversizedProviderMessagesAreRefusedAndServingGoesOn) {
  QueueServer server(plain_config(""));
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(server.port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::ProviderQueue::NewStub(channel);
  {  // a message with nothing in it
    grpc::ClientContext context;
    auto stream = stub->Connect(&context);
    stream->Write(v1::ProviderMessage());
    v1::NetworkMessage in;
    while (stream->Read(&in)) {
    }
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << status.error_message();
  }
  {  // a message over the size limit
    grpc::ClientContext context;
    auto stream = stub->Connect(&context);
    v1::ProviderMessage big;
    big.mutable_chunk()->set_sealed_chunk(std::string(network::kMaxMessageBytes + 10, 'x'));
    stream->Write(big);
    v1::NetworkMessage in;
    while (stream->Read(&in)) {
    }
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  }
  {  // something else than Register first
    grpc::ClientContext context;
    auto stream = stub->Connect(&context);
    v1::ProviderMessage hb;
    hb.mutable_heartbeat()->set_unix_ms(1);
    stream->Write(hb);
    v1::NetworkMessage in;
    std::string refused;
    while (stream->Read(&in)) {
      if (in.kind_case() == v1::NetworkMessage::kRefused) refused = in.refused();
    }
    stream->Finish();
    EXPECT_NE(refused.find("must be Register"), std::string::npos);
  }
  // Still serving: a proper provider registers and answers.
  TinyProvider provider(server.port());
  json r = run_against(server, provider, 3);
  EXPECT_EQ(r["completed"], 3);
  EXPECT_EQ(r["malformed_from_provider"], 1);
  EXPECT_TRUE(r["clean"].get<bool>()) << r.dump(2);
}

}  // namespace
}  // namespace alem::netsim
