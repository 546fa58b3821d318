// The provider client against a small queue written here on real gRPC (127.0.0.1, port 0),
// with the real model behind a real ServingEngine. The queue checks what a network would: the
// Register signature and evidence, sealed answers that open with the client's key, usage that
// matches an independent count (the tokenizer on the prompt; the streamed and non-streamed
// answers agreeing), exactly one computation per request id across redeliveries, duplicates and
// a restart, clear error codes for bad envelopes while the provider keeps serving, credits,
// heartbeat timeouts, oversized messages and the drain. Each case is bounded in time.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/serving_engine.h"
#include "kernels/backend.h"
#include "model/model_store.h"
#include "model/tokenizer.h"
#include "mpi/parallel_context.h"
#include "network/evidence.h"
#include "network/lease_handler.h"
#include "network/protocol.h"
#include "network/provider.grpc.pb.h"
#include "network/provider_client.h"
#include "network/provider_keys.h"
#include "network/sealing.h"
#include "network/usage_journal.h"
#include "serve/completion_session.h"
#include "serve/metrics.h"
#include "test_env.h"

namespace alem::network {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- the in-test queue

class TestQueue final : public v1::ProviderQueue::Service {
 public:
  uint32_t heartbeat_interval_ms = 200;
  uint32_t heartbeat_timeout_ms = 3000;
  bool send_heartbeats = true;
  // Called on the stream's reader thread for each message (not heartbeats) as it is read.
  std::function<void(const v1::ProviderMessage&)> on_message;

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::NetworkMessage, v1::ProviderMessage>* stream) override {
    v1::ProviderMessage first;
    if (!stream->Read(&first) || !first.has_register_()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "expected Register");
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      registers_.push_back(first.register_());
      ++connects_;
    }
    v1::NetworkMessage registered;
    registered.mutable_registered()->set_session_id("s" + std::to_string(connects_));
    registered.mutable_registered()->set_heartbeat_interval_ms(heartbeat_interval_ms);
    registered.mutable_registered()->set_heartbeat_timeout_ms(heartbeat_timeout_ms);
    std::mutex write_mutex;
    stream->Write(registered);
    std::atomic<bool> done{false};
    std::thread writer([&] {
      auto last_heartbeat = Clock::now();
      while (!done.load() && !context->IsCancelled()) {
        std::optional<v1::NetworkMessage> next;
        {
          std::unique_lock<std::mutex> lock(mutex_);
          cv_.wait_for(lock, 20ms, [&] { return !outbox_.empty() || done.load(); });
          if (!outbox_.empty()) {
            next = std::move(outbox_.front());
            outbox_.pop_front();
          }
        }
        std::lock_guard<std::mutex> lock(write_mutex);
        if (next) stream->Write(*next);
        if (send_heartbeats && Clock::now() - last_heartbeat > 100ms) {
          v1::NetworkMessage hb;
          hb.mutable_heartbeat()->set_unix_ms(1);
          stream->Write(hb);
          last_heartbeat = Clock::now();
        }
      }
    });
    v1::ProviderMessage message;
    while (stream->Read(&message)) {
      if (on_message && !message.has_heartbeat()) on_message(message);
      std::lock_guard<std::mutex> lock(mutex_);
      if (message.has_heartbeat()) {
        ++heartbeats_;
        continue;
      }
      received_.push_back(message);
      cv_.notify_all();
    }
    done = true;
    writer.join();
    return grpc::Status::OK;
  }

  void send(v1::NetworkMessage message) {
    std::lock_guard<std::mutex> lock(mutex_);
    outbox_.push_back(std::move(message));
    cv_.notify_all();
  }
  void send_lease(const v1::Lease& lease) {
    v1::NetworkMessage m;
    *m.mutable_lease() = lease;
    send(std::move(m));
  }

  // Waits until `done(received)` holds, or `timeout`; returns whether it held.
  bool wait_for(const std::function<bool(const std::vector<v1::ProviderMessage>&)>& done,
                std::chrono::milliseconds timeout = 60s) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return done(received_); });
  }
  bool wait_connects(int n, std::chrono::milliseconds timeout = 20s) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (connects_ >= n) return true;
      }
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  std::vector<v1::ProviderMessage> received() {
    std::lock_guard<std::mutex> lock(mutex_);
    return received_;
  }
  std::vector<v1::Register> registers() {
    std::lock_guard<std::mutex> lock(mutex_);
    return registers_;
  }
  int heartbeats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return heartbeats_;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    received_.clear();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<v1::NetworkMessage> outbox_;
  std::vector<v1::ProviderMessage> received_;
  std::vector<v1::Register> registers_;
  int connects_ = 0;
  int heartbeats_ = 0;
};

// Everything a request's id saw: chunks, then one final, error or release.
struct Outcome {
  std::vector<v1::ResultChunk> chunks;
  std::optional<v1::ResultFinal> final_message;
  std::optional<v1::ResultError> error;
  std::optional<v1::Release> release;
  int endings = 0;
};

Outcome outcome_of(const std::vector<v1::ProviderMessage>& messages, const std::string& id,
                   int which_ending = 0) {
  Outcome out;
  Outcome current;
  int ending = 0;
  for (const auto& m : messages) {
    if (m.has_chunk() && m.chunk().request_id() == id) current.chunks.push_back(m.chunk());
    bool ended = false;
    if (m.has_final() && m.final().request_id() == id) {
      current.final_message = m.final();
      ended = true;
    } else if (m.has_error() && m.error().request_id() == id) {
      current.error = m.error();
      ended = true;
    } else if (m.has_release() && m.release().request_id() == id) {
      current.release = m.release();
      ended = true;
    }
    if (ended) {
      if (ending == which_ending) out = current;
      ++ending;
      current = Outcome{};
    }
  }
  out.endings = ending;
  return out;
}

int endings_for(const std::vector<v1::ProviderMessage>& messages, const std::string& id) {
  return outcome_of(messages, id).endings;
}

// ---------------------------------------------------------------- fixture

class Provider : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    store_ = new ModelStoreReader(test::model_path());
    ctx_ = new ParallelContext(make_solo_context());
    backend_ = make_backend("cpu").release();
    EngineOptions options;
    options.max_model_len = 256;
    options.block_size = 16;
    options.num_kv_blocks = 64;
    model_ = new ShardedTransformer(*store_, *ctx_, *backend_, options);
    ServingOptions serving;
    serving.max_num_seqs = 8;
    serving.eos_token_ids = store_->config().eos_token_ids;
    engine_ = new ServingEngine(*model_, *ctx_, serving);
    engine_thread_ = new std::thread([] { engine_->run_leader_loop(); });
    tokenizer_ = new Tokenizer(store_->tokenizer());
  }
  static void TearDownTestSuite() {
    engine_->stop(0);
    engine_thread_->join();
    delete engine_thread_;
    delete tokenizer_;
    delete engine_;
    delete model_;
    delete backend_;
    delete ctx_;
    delete store_;
  }

  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("alem-provider-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    served_.name = store_->config().name;
    served_.tokenizer = tokenizer_;
    served_.tokenizer_data = &store_->tokenizer();
    served_.created = 1;
    served_.im_end_id = tokenizer_->token_id("<|im_end|>");
    keys_ = std::make_unique<ProviderKeys>(
        ProviderKeys::load_or_create((dir_ / "provider.key").string()));
    start_server();
  }
  void TearDown() override {
    stop_provider();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + 2s);
    std::filesystem::remove_all(dir_);
  }

  void start_server() {
    queue_ = std::make_unique<TestQueue>();
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(queue_.get());
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_) << "cannot start the test queue";
  }

  void start_provider(uint32_t credits = 4) {
    journal_ = std::make_unique<UsageJournal>((dir_ / "usage.journal").string());
    handler_ =
        std::make_unique<LeaseHandler>(keys_->sealing(), *journal_, served_, *engine_, metrics_);
    ProviderClientOptions o;
    o.endpoints = {"127.0.0.1:" + std::to_string(port_)};
    o.insecure = true;
    o.credits = credits;
    o.provider_name = "unit-test";
    v1::ModelInfo info;
    info.set_name(served_.name);
    info.set_model_digest(std::string(32, 'd'));
    o.models = {info};
    o.evidence = make_evidence_hook("off");
    o.initial_backoff = 50ms;
    o.max_backoff = 400ms;
    client_ = std::make_unique<ProviderClient>(o, *keys_, *handler_);
    client_->start();
    ASSERT_TRUE(wait_registered());
  }
  void stop_provider() {
    if (client_) client_->stop();
    client_.reset();
    handler_.reset();
    journal_.reset();
  }
  bool wait_registered(std::chrono::milliseconds timeout = 20s) {
    const auto end = Clock::now() + timeout;
    while (Clock::now() < end) {
      if (client_->status()[0].registered) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }

  static std::string new_id() {
    static uint64_t counter = 0;
    std::string id(32, '\0');
    const uint64_t n = ++counter + (static_cast<uint64_t>(::getpid()) << 20);
    std::memcpy(id.data(), &n, sizeof n);
    id[31] = 'x';
    return id;
  }

  // A lease carrying `body` for `endpoint`, sealed to the provider.
  v1::Lease make_lease(const std::string& id, const std::string& body,
                       const std::string& endpoint = "/v1/completions", uint32_t attempt = 1) {
    v1::RequestPayload payload;
    payload.set_client_public_key(client_key_.public_key().data(), 32);
    payload.set_endpoint(endpoint);
    payload.set_body(body);
    v1::Lease lease;
    lease.set_request_id(id);
    lease.set_sealed_request(
        seal(keys_->sealing().public_key(), id, kPurposeRequest, payload.SerializeAsString()));
    lease.set_attempt(attempt);
    lease.set_model(served_.name);
    lease.set_deadline_unix_ms(0);
    return lease;
  }

  std::string completion_body(bool stream, int max_tokens = 8) const {
    nlohmann::json body = {{"model", served_.name},
                           {"prompt", "The capital of France is"},
                           {"max_tokens", max_tokens},
                           {"temperature", 0},
                           {"stream", stream}};
    if (stream) body["stream_options"] = {{"include_usage", true}};
    return body.dump();
  }

  // Opens every chunk with the client's key (sequence-bound purpose) and returns the JSON.
  std::vector<nlohmann::json> open_chunks(const Outcome& o, const std::string& id) {
    std::vector<nlohmann::json> out;
    for (const auto& c : o.chunks) {
      OpenResult opened =
          open_envelope(client_key_, id, chunk_purpose(c.sequence()), c.sealed_chunk());
      EXPECT_TRUE(opened.ok()) << opened.message;
      if (opened.ok()) out.push_back(nlohmann::json::parse(opened.payload.view()));
    }
    return out;
  }

  bool wait_ending(const std::string& id, int endings = 1, std::chrono::milliseconds t = 60s) {
    return queue_->wait_for([&](const auto& m) { return endings_for(m, id) >= endings; }, t);
  }

  static ModelStoreReader* store_;
  static ParallelContext* ctx_;
  static KernelBackend* backend_;
  static ShardedTransformer* model_;
  static ServingEngine* engine_;
  static std::thread* engine_thread_;
  static Tokenizer* tokenizer_;

  std::filesystem::path dir_;
  serve::ServedModel served_;
  serve::ServingMetrics metrics_;
  std::unique_ptr<ProviderKeys> keys_;
  X25519KeyPair client_key_ = X25519KeyPair::generate();
  std::unique_ptr<TestQueue> queue_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<UsageJournal> journal_;
  std::unique_ptr<LeaseHandler> handler_;
  std::unique_ptr<ProviderClient> client_;
};

ModelStoreReader* Provider::store_ = nullptr;
ParallelContext* Provider::ctx_ = nullptr;
KernelBackend* Provider::backend_ = nullptr;
ShardedTransformer* Provider::model_ = nullptr;
ServingEngine* Provider::engine_ = nullptr;
std::thread* Provider::engine_thread_ = nullptr;
Tokenizer* Provider::tokenizer_ = nullptr;

// ---------------------------------------------------------------- cases

TEST_F(Provider, RegisterIsSignedAndCarriesEvidenceForTheSealingKey) {
  start_provider(3);
  const auto regs = queue_->registers();
  ASSERT_EQ(regs.size(), 1u);
  const v1::Register& r = regs[0];
  EXPECT_EQ(r.protocol_version(), kProtocolVersion);
  EXPECT_TRUE(verify_register(r));
  EXPECT_EQ(r.identity_public_key(),
            std::string(keys_->identity_public_key().begin(), keys_->identity_public_key().end()));
  EXPECT_EQ(r.sealing_public_key(), std::string(keys_->sealing().public_key().begin(),
                                                keys_->sealing().public_key().end()));
  EXPECT_EQ(r.evidence_format(), "ed25519-software-v1");
  EXPECT_TRUE(verify_software_register_evidence(r));
  v1::Register other = r;  // evidence bound to another sealing key does not verify
  other.set_sealing_public_key(std::string(32, 'k'));
  EXPECT_FALSE(verify_software_register_evidence(other));
  EXPECT_EQ(r.credits(), 3u);
  ASSERT_EQ(r.models_size(), 1);
  EXPECT_EQ(r.models(0).name(), served_.name);
  // Heartbeats flow from the provider at the interval the queue asked for (200 ms).
  const auto end = Clock::now() + 5s;
  while (queue_->heartbeats() < 2 && Clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_GE(queue_->heartbeats(), 2);
}

TEST_F(Provider, AnswersSealedWithUsageThatMatchesAndJournalsFirst) {
  start_provider();
  const std::string plain_id = new_id(), stream_id = new_id();
  queue_->send_lease(make_lease(plain_id, completion_body(false)));
  queue_->send_lease(make_lease(stream_id, completion_body(true)));
  ASSERT_TRUE(wait_ending(plain_id));
  ASSERT_TRUE(wait_ending(stream_id));
  const auto messages = queue_->received();

  const Outcome plain = outcome_of(messages, plain_id);
  ASSERT_TRUE(plain.final_message) << (plain.error ? plain.error->message() : "no final");
  EXPECT_FALSE(plain.final_message->from_journal());
  ASSERT_EQ(plain.chunks.size(), 1u);
  EXPECT_EQ(plain.final_message->chunk_count(), 1u);
  const auto plain_json = open_chunks(plain, plain_id);
  ASSERT_EQ(plain_json.size(), 1u);
  const std::string plain_text = plain_json[0]["choices"][0]["text"];
  // Usage: the prompt's token count, computed independently with the tokenizer.
  std::vector<int32_t> prompt_ids = tokenizer_->encode("The capital of France is", false);
  if (store_->tokenizer().add_bos_token && tokenizer_->bos_id() >= 0) {
    prompt_ids.insert(prompt_ids.begin(), tokenizer_->bos_id());
  }
  EXPECT_EQ(plain.final_message->usage().prompt_tokens(), prompt_ids.size());
  EXPECT_EQ(plain_json[0]["usage"]["prompt_tokens"], prompt_ids.size());
  EXPECT_EQ(plain.final_message->usage().completion_tokens(),
            plain_json[0]["usage"]["completion_tokens"].get<uint32_t>());
  EXPECT_GT(plain.final_message->usage().completion_tokens(), 0u);

  // Streaming: chunks in sequence, each opening under its own sequence number; the text they
  // carry equals the non-streamed text (greedy), and the last one carries the usage.
  const Outcome streamed = outcome_of(messages, stream_id);
  ASSERT_TRUE(streamed.final_message);
  ASSERT_GE(streamed.chunks.size(), 2u);
  for (size_t i = 0; i < streamed.chunks.size(); ++i) {
    EXPECT_EQ(streamed.chunks[i].sequence(), i);
  }
  const auto stream_json = open_chunks(streamed, stream_id);
  std::string stream_text;
  for (const auto& j : stream_json) {
    if (!j["choices"].empty()) stream_text += j["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(stream_text, plain_text);
  EXPECT_EQ(stream_json.back()["usage"]["completion_tokens"],
            streamed.final_message->usage().completion_tokens());
  // A chunk does not open under another sequence number (no reordering).
  if (streamed.chunks.size() >= 2) {
    EXPECT_FALSE(
        open_envelope(client_key_, stream_id, chunk_purpose(1), streamed.chunks[0].sealed_chunk())
            .ok());
  }
  // Journaled, with the same sealed chunks.
  auto rec = journal_->finished(stream_id);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->sealed_chunks.size(), streamed.chunks.size());
  EXPECT_EQ(rec->usage.completion_tokens, streamed.final_message->usage().completion_tokens());
}

TEST_F(Provider, RedeliveryAndDuplicatesAreNeverComputedTwiceAlsoAfterARestart) {
  start_provider();
  const std::string id = new_id();
  const v1::Lease lease = make_lease(id, completion_body(true));
  queue_->send_lease(lease);
  queue_->send_lease(lease);  // a duplicate delivery while the first computes
  ASSERT_TRUE(wait_ending(id, 2));
  auto messages = queue_->received();
  const Outcome first = outcome_of(messages, id, 0);
  const Outcome second = outcome_of(messages, id, 1);
  ASSERT_TRUE(first.final_message);
  ASSERT_TRUE(second.final_message);
  EXPECT_NE(first.final_message->from_journal(), second.final_message->from_journal());
  EXPECT_EQ(handler_->counters().completed.load(), 1u);
  EXPECT_EQ(journal_->finished_count(), 1u);

  // Restart: a new process state over the same key file and journal.
  stop_provider();
  keys_ = std::make_unique<ProviderKeys>(ProviderKeys::load((dir_ / "provider.key").string()));
  queue_->clear();
  start_provider();
  v1::Lease again = lease;
  again.set_attempt(3);
  queue_->send_lease(again);
  ASSERT_TRUE(wait_ending(id));
  messages = queue_->received();
  const Outcome third = outcome_of(messages, id);
  ASSERT_TRUE(third.final_message);
  EXPECT_TRUE(third.final_message->from_journal());
  EXPECT_EQ(handler_->counters().completed.load(), 0u);
  EXPECT_EQ(journal_->finished_count(), 1u);
  EXPECT_EQ(third.final_message->usage().completion_tokens(),
            first.final_message->usage().completion_tokens());
  // The same sealed bytes as the first answer, so the client opens them as before.
  const Outcome computed = first.final_message->from_journal() ? second : first;
  ASSERT_EQ(third.chunks.size(), computed.chunks.size());
  for (size_t i = 0; i < third.chunks.size(); ++i) {
    EXPECT_EQ(third.chunks[i].sealed_chunk(), computed.chunks[i].sealed_chunk());
  }
}

TEST_F(Provider, BadEnvelopesGetClearCodesAndTheProviderKeepsServing) {
  start_provider(16);  // every lease below is open at once
  std::vector<std::pair<std::string, v1::ErrorCode>> expected;

  const std::string tampered = new_id();
  v1::Lease t = make_lease(tampered, completion_body(false));
  std::string bytes = t.sealed_request();
  bytes[bytes.size() - 3] ^= 0x40;
  t.set_sealed_request(bytes);
  queue_->send_lease(t);
  expected.emplace_back(tampered, v1::ERROR_TAMPERED);

  const std::string wrong = new_id();
  v1::Lease w = make_lease(wrong, completion_body(false));
  const X25519KeyPair stranger = X25519KeyPair::generate();
  w.set_sealed_request(seal(stranger.public_key(), wrong, kPurposeRequest, "{}"));
  queue_->send_lease(w);
  expected.emplace_back(wrong, v1::ERROR_WRONG_RECIPIENT);

  const std::string garbage = new_id();
  v1::Lease g = make_lease(garbage, completion_body(false));
  g.set_sealed_request("\x0a\xff\xff garbage");
  queue_->send_lease(g);
  expected.emplace_back(garbage, v1::ERROR_BAD_ENVELOPE);

  const std::string original = new_id(), replay = new_id();
  v1::Lease o = make_lease(original, "{not json", "/v1/completions");
  queue_->send_lease(o);
  expected.emplace_back(original, v1::ERROR_BAD_REQUEST);
  // Leases run in parallel: the copy goes out once the original has been answered, so it is
  // the replay (sent first, it could not open under its new id and would count as tampered).
  ASSERT_TRUE(wait_ending(original, 1, 10s));
  v1::Lease r = o;
  r.set_request_id(replay);
  queue_->send_lease(r);
  expected.emplace_back(replay, v1::ERROR_REPLAYED);

  const std::string model = new_id();
  nlohmann::json other_model = nlohmann::json::parse(completion_body(false));
  other_model["model"] = "another-model";
  queue_->send_lease(make_lease(model, other_model.dump()));
  expected.emplace_back(model, v1::ERROR_UNKNOWN_MODEL);

  const std::string short_id = "short";
  v1::Lease s = make_lease(new_id(), completion_body(false));
  s.set_request_id(short_id);
  queue_->send_lease(s);
  expected.emplace_back(short_id, v1::ERROR_BAD_ENVELOPE);

  const std::string good = new_id();
  queue_->send_lease(make_lease(good, completion_body(false, 4)));
  ASSERT_TRUE(wait_ending(good));
  for (const auto& [id, code] : expected) {
    ASSERT_TRUE(wait_ending(id, 1, 10s)) << v1::ErrorCode_Name(code);
  }
  const auto messages = queue_->received();
  for (const auto& [id, code] : expected) {
    const Outcome out = outcome_of(messages, id);
    ASSERT_TRUE(out.error) << v1::ErrorCode_Name(code);
    EXPECT_EQ(out.error->code(), code) << out.error->message();
    EXPECT_TRUE(out.chunks.empty());
  }
  EXPECT_TRUE(outcome_of(messages, good).final_message);
  EXPECT_EQ(journal_->finished_count(), 1u);
  EXPECT_EQ(handler_->counters().errors[v1::ERROR_TAMPERED].load(), 1u);
}

TEST_F(Provider, NeverHoldsMoreLeasesThanCreditsAndDrainHandsLeasesBack) {
  start_provider(1);
  const std::string a = new_id(), b = new_id();
  queue_->send_lease(make_lease(a, completion_body(false, 12)));
  queue_->send_lease(make_lease(b, completion_body(false, 4)));
  ASSERT_TRUE(wait_ending(a));
  ASSERT_TRUE(wait_ending(b));
  auto messages = queue_->received();
  EXPECT_TRUE(outcome_of(messages, a).final_message);
  const Outcome over = outcome_of(messages, b);
  ASSERT_TRUE(over.release);
  EXPECT_EQ(over.release->reason(), "over credits");

  for (int i = 0; i < 200 && client_->open_leases() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(client_->open_leases(), 0);
  client_->drain();
  const std::string c = new_id();
  queue_->send_lease(make_lease(c, completion_body(false, 4)));
  ASSERT_TRUE(wait_ending(c));
  const Outcome drained = outcome_of(queue_->received(), c);
  ASSERT_TRUE(drained.release);
  EXPECT_EQ(drained.release->reason(), "draining");
  EXPECT_FALSE(journal_->finished(c).has_value());
}

TEST_F(Provider, SilentQueueIsDroppedAfterTheHeartbeatTimeoutAndRedialled) {
  queue_->send_heartbeats = false;
  queue_->heartbeat_interval_ms = 100;
  queue_->heartbeat_timeout_ms = 400;
  start_provider();
  EXPECT_TRUE(queue_->wait_connects(2, 10s));
  EXPECT_GE(client_->status()[0].connects, 2u);
}

TEST_F(Provider, OversizedMessageIsRefusedAndTheStreamRedialled) {
  start_provider();
  v1::Lease big = make_lease(new_id(), completion_body(false));
  big.set_sealed_request(std::string(kMaxMessageBytes + 1024, 'b'));
  queue_->send_lease(big);
  EXPECT_TRUE(queue_->wait_connects(2, 10s));
  ASSERT_TRUE(wait_registered());
  // Still serving afterwards.
  const std::string good = new_id();
  queue_->send_lease(make_lease(good, completion_body(false, 2)));
  ASSERT_TRUE(wait_ending(good));
  EXPECT_TRUE(outcome_of(queue_->received(), good).final_message);
  EXPECT_NE(client_->render_metrics().find("alem_network_oversized_total 1"), std::string::npos);
}

// The envelope is checked on every delivery, before the journal or a computation in progress
// may answer it: a corrupted redelivery of a request being computed, or already finished, is
// ERROR_TAMPERED, never a journal answer. Every result names the attempt it answers.
TEST_F(Provider, EnvelopeIsCheckedBeforeTheJournalAndResultsNameTheirAttempt) {
  start_provider(4);
  const std::string id = new_id();
  const v1::Lease lease = make_lease(id, completion_body(true, 12), "/v1/completions", 1);
  v1::Lease corrupt = lease;
  std::string bytes = corrupt.sealed_request();
  bytes[bytes.size() - 5] ^= 0x10;
  corrupt.set_sealed_request(bytes);
  corrupt.set_attempt(2);
  queue_->send_lease(lease);
  queue_->send_lease(corrupt);  // while attempt 1 computes
  ASSERT_TRUE(wait_ending(id, 2));
  corrupt.set_attempt(3);
  queue_->send_lease(corrupt);  // after attempt 1 finished
  ASSERT_TRUE(wait_ending(id, 3));
  v1::Lease intact = lease;
  intact.set_attempt(4);
  queue_->send_lease(intact);
  ASSERT_TRUE(wait_ending(id, 4));
  const auto messages = queue_->received();
  std::map<uint32_t, std::string> ending_of;  // attempt -> how it ended
  for (const auto& m : messages) {
    if (m.has_chunk() && m.chunk().request_id() == id) {
      EXPECT_TRUE(m.chunk().attempt() == 1 || m.chunk().attempt() == 4) << m.chunk().attempt();
    } else if (m.has_final() && m.final().request_id() == id) {
      ending_of[m.final().attempt()] = m.final().from_journal() ? "journal" : "computed";
    } else if (m.has_error() && m.error().request_id() == id) {
      ending_of[m.error().attempt()] = v1::ErrorCode_Name(m.error().code());
    } else if (m.has_release() && m.release().request_id() == id) {
      ending_of[m.release().attempt()] = "release";
    }
  }
  EXPECT_EQ(ending_of[1], "computed");
  EXPECT_EQ(ending_of[2], "ERROR_TAMPERED");
  EXPECT_EQ(ending_of[3], "ERROR_TAMPERED");
  EXPECT_EQ(ending_of[4], "journal");
  EXPECT_EQ(handler_->counters().completed.load(), 1u);
  EXPECT_EQ(journal_->finished_count(), 1u);
}

// A sealed request whose body nests 110,000 arrays is refused with ERROR_BAD_REQUEST, billed
// nothing (no start, no finish in the journal), and the provider keeps serving.
TEST_F(Provider, DeeplyNestedBodyIsRefusedAndTheProviderKeepsServing) {
  start_provider(4);
  const std::string deep = new_id();
  std::string body = std::string(110000, '[') + std::string(110000, ']');
  queue_->send_lease(make_lease(deep, body));
  const std::string good = new_id();
  queue_->send_lease(make_lease(good, completion_body(false, 2)));
  ASSERT_TRUE(wait_ending(deep, 1, 30s));
  ASSERT_TRUE(wait_ending(good));
  const auto messages = queue_->received();
  const Outcome refused = outcome_of(messages, deep);
  ASSERT_TRUE(refused.error);
  EXPECT_EQ(refused.error->code(), v1::ERROR_BAD_REQUEST) << refused.error->message();
  EXPECT_NE(refused.error->message().find("nesting"), std::string::npos)
      << refused.error->message();
  EXPECT_TRUE(refused.chunks.empty());
  EXPECT_FALSE(journal_->finished(deep).has_value());
  EXPECT_EQ(journal_->started_attempt(deep), 0u);
  EXPECT_TRUE(outcome_of(messages, good).final_message);
}

// The credit of a lease is free again by the time the network reads the lease's last message:
// the network may send the next lease at once, and it must not come back "over credits".
TEST_F(Provider, ACreditIsFreeWhenTheNetworkReadsTheAnswer) {
  std::atomic<int> held_at_final{0};
  std::atomic<int> finals{0};
  // Finals flow only after the leases below are sent, when client_ is set.
  queue_->on_message = [&](const v1::ProviderMessage& m) {
    if (!m.has_final()) return;
    ++finals;
    if (client_->open_leases() > 0) ++held_at_final;
  };
  start_provider(1);
  for (int i = 0; i < 6; ++i) {
    const std::string id = new_id();
    queue_->send_lease(make_lease(id, completion_body(false, 1)));
    ASSERT_TRUE(wait_ending(id));
    const Outcome out = outcome_of(queue_->received(), id);
    EXPECT_FALSE(out.release) << out.release->reason();
  }
  EXPECT_EQ(finals.load(), 6);
  EXPECT_EQ(held_at_final.load(), 0) << "a final was read while its credit was still held";
  queue_->on_message = nullptr;
}

}  // namespace
}  // namespace alem::network
