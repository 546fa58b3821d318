// The simulator's gRPC queue server (see netsim_server.h): one raw bidirectional reactor per
// provider stream, one ticker thread for deadlines, heartbeats, delayed sends and submitting
// the load, and one lock over the books. Lock order: the server lock, then a stream's lock;
// gRPC reactions that end a stream never take the server lock (they leave the stream to the
// ticker), so a reaction run from inside a gRPC call cannot deadlock.
#include "network/netsim_server.h"

#include "network/netsim_server_impl.h"

#include <grpcpp/grpcpp.h>
#include <sodium.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "confidential/attestation.h"
#include "confidential/bundle_verifier.h"
#include "confidential/cluster_bundle.h"
#include "core/error.h"
#include "core/log.h"
#include "network/evidence.h"
#include "network/protocol.h"
#include "network/provider.grpc.pb.h"

namespace alem::netsim {

namespace v1 = alem::network::v1;
using nlohmann::json;

namespace {

uint64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
uint64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, std::string("cannot read the ") + what + " file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  ALEM_CHECK(!ss.str().empty(), std::string("the ") + what + " file " + path + " is empty");
  return ss.str();
}

std::string random_hex(size_t bytes) {
  std::string raw(bytes, '\0');
  randombytes_buf(raw.data(), raw.size());
  return network::hex(raw);
}

// The error codes that count as a correct refusal of each injected fault.
std::set<int> expected_codes(Fault fault) {
  switch (fault) {
    case Fault::kCorrupt:
      return {v1::ERROR_TAMPERED};
    case Fault::kWrongKey:
      return {v1::ERROR_WRONG_RECIPIENT};
    case Fault::kReplay:
      return {v1::ERROR_REPLAYED, v1::ERROR_TAMPERED};
    case Fault::kMalformed:
      return {v1::ERROR_BAD_ENVELOPE};
    case Fault::kOversize:
      return {v1::ERROR_TOO_LARGE, v1::ERROR_BAD_ENVELOPE};
    default:
      return {};
  }
}

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* QueueServer::Impl::Service::Connect(
    grpc::CallbackServerContext* context) {
  auto* stream = new Stream(impl_, context);
  {
    // Known before its first read can complete: a Register read on another thread must find
    // the stream, and a stream that ends at once must not be reaped before it is known.
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->streams[stream] = "";
  }
  stream->start();
  return stream;
}

QueueServer::Impl::Impl(ServerConfig c)
    : config(std::move(c)), faults(config.faults, config.seed), queue(config.queue) {
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  bool tls = !config.tls_cert_file.empty() || !config.tls_key_file.empty();
  ALEM_CHECK(tls != config.insecure,
             "choose either TLS (--tls-cert and --tls-key) or --insecure for the simulator");
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (tls) {
    ALEM_CHECK(!config.tls_cert_file.empty() && !config.tls_key_file.empty(),
               "TLS needs both a certificate and a key file");
    grpc::SslServerCredentialsOptions options;
    options.pem_key_cert_pairs.push_back({read_file(config.tls_key_file, "TLS key"),
                                          read_file(config.tls_cert_file, "TLS certificate")});
    credentials = grpc::SslServerCredentials(options);
  } else {
    credentials = grpc::InsecureServerCredentials();
  }
  service = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config.listen, credentials, &port);
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(network::kMaxMessageBytes);
  builder.SetMaxSendMessageSize(-1);  // oversize faults must reach the provider
  server = builder.BuildAndStart();
  ALEM_CHECK(server && port > 0, "the simulator cannot listen on " + config.listen);
  ticker = std::thread([this] { ticker_loop(); });
}

QueueServer::Impl::~Impl() {
  stop();
}

void QueueServer::Impl::stop() {
  if (stopping.exchange(true)) return;
  if (ticker.joinable()) ticker.join();
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& [stream, session] : streams) {
      stream->close(grpc::Status(grpc::StatusCode::UNAVAILABLE, "simulator stopping"));
    }
  }
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  server->Wait();
  reap_streams();
}

void QueueServer::Impl::reap_streams() {
  std::vector<Stream*> ended_now, done_now;
  {
    std::lock_guard<std::mutex> lock(ended_mu);
    ended_now.swap(ended);
    done_now.swap(done);
  }
  std::lock_guard<std::mutex> lock(mu);
  for (Stream* s : ended_now) {
    auto it = streams.find(s);
    if (it != streams.end() && !it->second.empty()) end_session_locked(it->second, "stream ended");
  }
  for (Stream* s : done_now) {
    auto it = streams.find(s);
    if (it != streams.end()) {
      if (!it->second.empty()) end_session_locked(it->second, "stream ended");
      streams.erase(it);
    }
    delete s;
  }
}

QueueServer::Impl::Stream* QueueServer::Impl::stream_of(const std::string& session) {
  auto it = sessions.find(session);
  return it == sessions.end() ? nullptr : it->second;
}

void QueueServer::Impl::end_session_locked(std::string session, const char* why) {
  auto it = sessions.find(session);
  if (it == sessions.end()) return;
  Stream* s = it->second;
  streams[s] = "";
  sessions.erase(it);
  providers.erase(session);
  last_heard_ms.erase(session);
  // Faults outstanding on this stream end with it.
  for (auto& [id, inj] : injected) {
    if (inj.session == session && inj.fault) fault_counts[*inj.fault].stream_closed++;
  }
  for (auto it2 = injected.begin(); it2 != injected.end();) {
    it2 = it2->second.session == session ? injected.erase(it2) : std::next(it2);
  }
  if (garbage_sessions.erase(session)) fault_counts[Fault::kGarbage].stream_closed++;
  auto returned = queue.detach(session);
  log_info(
      "netsim stream closed",
      {{"session", session}, {"why", why}, {"leases_returned", std::to_string(returned.size())}});
}

void QueueServer::Impl::ticker_loop() {
  while (!stopping.load()) {
    reap_streams();
    {
      std::lock_guard<std::mutex> lock(mu);
      tick_locked(steady_ms());
    }
    cv.notify_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void QueueServer::Impl::tick_locked(uint64_t now) {
  // Heartbeat timeouts.
  std::vector<std::string> silent;
  for (const auto& [session, heard] : last_heard_ms) {
    if (now - heard > config.heartbeat_timeout_ms) silent.push_back(session);
  }
  for (const auto& session : silent) {
    Stream* s = stream_of(session);
    end_session_locked(session, "heartbeat timeout");
    if (s) s->close(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "heartbeat timeout"));
    ++streams_dropped;
  }
  if (now - last_heartbeat_sent_ms >= config.heartbeat_interval_ms) {
    last_heartbeat_sent_ms = now;
    for (const auto& [session, info] : providers) {
      v1::NetworkMessage m;
      m.mutable_heartbeat()->set_unix_ms(unix_ms());
      m.mutable_heartbeat()->set_open_leases(queue.open_leases(info.identity_public_key));
      m.mutable_heartbeat()->set_credits(info.credits);
      send_locked(session, m.SerializeAsString(), 0);
    }
  }
  for (const auto& id : queue.expire(now)) {
    log_info("netsim lease expired", {{"request", network::hex(id).substr(0, 16)}});
    settle_fault_locked(id, &FaultCounts::expired);
  }
  submit_more_locked();
  for (const auto& [session, info] : providers) {
    for (const auto& grant : queue.grant(session, now)) send_lease_locked(session, grant, now);
  }
  for (auto it = delayed.begin(); it != delayed.end();) {
    if (it->due_ms <= now) {
      if (Stream* s = stream_of(it->session)) s->send(std::move(it->bytes));
      it = delayed.erase(it);
    } else {
      ++it;
    }
  }
}

void QueueServer::Impl::send_locked(const std::string& session, std::string bytes,
                                    uint32_t delay_ms) {
  if (delay_ms > 0) {
    delayed.push_back({steady_ms() + delay_ms, session, std::move(bytes)});
    return;
  }
  if (Stream* s = stream_of(session)) s->send(std::move(bytes));
}

const std::string* QueueServer::Impl::replay_candidate(const std::string& request_id) const {
  // The most recent envelope delivered intact for another request.
  for (auto it = replay_pool.rbegin(); it != replay_pool.rend(); ++it) {
    if (it->first != request_id) return &it->second;
  }
  return nullptr;
}

void QueueServer::Impl::send_lease_locked(const std::string& session, const LeaseGrant& grant,
                                          uint64_t now) {
  v1::NetworkMessage m;
  v1::Lease* lease = m.mutable_lease();
  lease->set_request_id(grant.request_id);
  lease->set_deadline_unix_ms(unix_ms() + (grant.deadline_ms - now));
  lease->set_attempt(grant.attempt);
  lease->set_model(grant.model);
  Injected inj;
  inj.session = session;
  inj.attempt = grant.attempt;
  std::string sealed = grant.payload;
  long index = load ? load->index_of(grant.request_id) : -1;
  // At most one envelope fault per delivery.
  if (faults.strike(Fault::kCorrupt)) {
    v1::SealedEnvelope envelope;
    if (envelope.ParseFromString(sealed) && !envelope.ciphertext().empty()) {
      std::string* ct = envelope.mutable_ciphertext();
      (*ct)[faults.draw() % ct->size()] ^= static_cast<char>(1 + faults.draw() % 255);
      sealed = envelope.SerializeAsString();
      inj.fault = Fault::kCorrupt;
    }
  } else if (index >= 0 && faults.strike(Fault::kWrongKey)) {
    auto other = network::X25519KeyPair::generate();
    sealed = load->seal_to(static_cast<size_t>(index), other.public_key());
    inj.fault = Fault::kWrongKey;
  } else if (replay_candidate(grant.request_id) && faults.strike(Fault::kReplay)) {
    sealed = *replay_candidate(grant.request_id);
    inj.fault = Fault::kReplay;
  } else if (faults.strike(Fault::kMalformed)) {
    // A varint longer than ten bytes: no protobuf parser accepts it.
    sealed.assign(16, '\xff');
    for (int i = 0; i < 48; ++i) sealed.push_back(static_cast<char>(faults.draw()));
    inj.fault = Fault::kMalformed;
  } else if (faults.strike(Fault::kOversize)) {
    sealed.assign(faults.oversize_bytes(), '\0');
    randombytes_buf(sealed.data(), sealed.size());
    inj.fault = Fault::kOversize;
  }
  if (!inj.fault) {
    replay_pool.emplace_back(grant.request_id, grant.payload);
    if (replay_pool.size() > 32) replay_pool.pop_front();
  }
  lease->set_sealed_request(std::move(sealed));
  if (faults.strike(Fault::kGarbage)) {
    // Bytes that are no NetworkMessage: the provider must drop this stream and come back.
    send_locked(session, std::string(16, '\xff'), 0);
    fault_counts[Fault::kGarbage];
    garbage_sessions.insert(session);
  }
  uint32_t delay = faults.next_delay_ms();
  std::string bytes = m.SerializeAsString();
  bool dup = faults.strike(Fault::kDup);
  if (dup) send_locked(session, bytes, delay + 1);
  send_locked(session, std::move(bytes), delay);
  inj.dup = dup;
  if (inj.fault || inj.dup) {
    injected[grant.request_id] = inj;
  } else {
    injected.erase(grant.request_id);
  }
}

void QueueServer::Impl::submit_more_locked() {
  if (!load || load_end_ms == 0) return;
  while (next_request < load->size() && queue.unfinished() < concurrency &&
         steady_ms() < load_end_ms) {
    queue.submit(load->request_id(next_request), load->model(), load->seal(next_request));
    ++next_request;
  }
}

bool QueueServer::Impl::load_finished_locked() const {
  return load && next_request == load->size() && queue.unfinished() == 0;
}

void QueueServer::Impl::on_message(Stream* stream, const std::string& bytes) {
  std::lock_guard<std::mutex> lock(mu);
  auto it = streams.find(stream);
  if (it == streams.end() || stream->closing()) return;
  const std::string session = it->second;
  v1::ProviderMessage msg;
  if (!msg.ParseFromString(bytes) || msg.kind_case() == v1::ProviderMessage::KIND_NOT_SET) {
    ++malformed_from_provider;
    log_warn("netsim refused a malformed provider message",
             {{"bytes", std::to_string(bytes.size())}});
    if (!session.empty()) end_session_locked(session, "malformed message");
    stream->close(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed ProviderMessage"));
    return;
  }
  if (session.empty()) {
    if (!msg.has_register_()) {
      v1::NetworkMessage refused;
      refused.set_refused("the first message on a stream must be Register");
      ++refusals[refused.refused()];
      stream->send(refused.SerializeAsString());
      stream->close(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, refused.refused()),
                    /*abort=*/false);
      return;
    }
    on_register(stream, msg.register_());
    return;
  }
  last_heard_ms[session] = steady_ms();
  switch (msg.kind_case()) {
    case v1::ProviderMessage::kRegister:
      end_session_locked(session, "registered twice");
      stream->close(
          grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "Register sent twice on one stream"));
      break;
    case v1::ProviderMessage::kChunk: {
      if (faults.strike(Fault::kDrop)) {
        ++streams_dropped;
        end_session_locked(session, "simulated drop");
        stream->close(grpc::Status(grpc::StatusCode::UNAVAILABLE, "simulated connection drop"));
        return;
      }
      const auto& c = msg.chunk();
      queue.on_chunk(session, c.request_id(), c.sequence(), c.sealed_chunk(), c.attempt());
      break;
    }
    case v1::ProviderMessage::kFinal:
      on_final(stream, msg.final());
      break;
    case v1::ProviderMessage::kError:
      on_error(stream, msg.error());
      break;
    case v1::ProviderMessage::kRelease: {
      const v1::Release& r = msg.release();
      const bool faulty = injected_for(r.request_id(), session, r.attempt()) != nullptr;
      if (queue.on_release(session, r.request_id(), r.attempt()) && faulty) {
        settle_fault_locked(r.request_id(), &FaultCounts::released);
      }
      break;
    }
    case v1::ProviderMessage::kHeartbeat:
      ++heartbeats_in;
      break;
    default:
      break;
  }
}

// A cluster attestation bundle (docs/attestation.md) as the network checks it: every rank's
// evidence, the MRTD allowlist, the announced model's digest, and rank 0's bound sealing key
// equal to the one requests will be sealed to. "" when acceptable.
std::string QueueServer::Impl::check_cluster_bundle(const v1::Register& reg) const {
  if (reg.models().empty()) return "no models announced";
  confidential::BundlePolicy policy;
  policy.accept_software_evidence = config.accept_software_evidence;
  try {
    for (const std::string& hex : config.allowed_mrtd_hex) {
      const std::vector<uint8_t> bytes = confidential::from_hex(hex);
      ALEM_CHECK(bytes.size() == 48, "an allowed MRTD must be 48 bytes (96 hex digits)");
      confidential::Measurement m{};
      std::copy(bytes.begin(), bytes.end(), m.begin());
      policy.allowed_mrtd.push_back(m);
    }
  } catch (const std::exception& e) {
    return std::string("the network's MRTD allowlist is invalid: ") + e.what();
  }
  confidential::PublicKey sealing{};
  std::copy(reg.sealing_public_key().begin(), reg.sealing_public_key().end(), sealing.begin());
  const std::string& digest = reg.models(0).model_digest();
  const std::string problems = confidential::check_register_bundle(
      reg.evidence(), sealing, std::vector<uint8_t>(digest.begin(), digest.end()), policy);
  return problems.empty() ? "" : "the cluster attestation bundle is refused: " + problems;
}

void QueueServer::Impl::on_register(Stream* stream, const v1::Register& reg) {
  std::string reason;
  if (reg.protocol_version() != network::kProtocolVersion) {
    reason = "protocol version " + std::to_string(reg.protocol_version()) +
             " is not supported (this network speaks " + std::to_string(network::kProtocolVersion) +
             ")";
  } else if (reg.identity_public_key().size() != 32 || reg.sealing_public_key().size() != 32) {
    reason = "identity and sealing public keys must be 32 bytes each";
  } else if (!network::verify_register(reg)) {
    reason = "the identity signature does not verify";
  } else if (reg.evidence_format() == confidential::kEvidenceFormatSoftwareEd25519) {
    if (!config.accept_software_evidence) {
      reason = "software evidence (" + reg.evidence_format() +
               ") proves nothing about the machine; this network accepts it only when started "
               "with --accept-software-evidence";
    } else if (!network::verify_software_register_evidence(reg)) {
      reason = "the software evidence does not verify or does not bind the sealing key";
    }
  } else if (reg.evidence_format() == kClusterBundleFormat) {
    reason = check_cluster_bundle(reg);
  } else {
    reason = "evidence format '" + reg.evidence_format() + "' cannot be verified by the simulator";
  }
  if (reason.empty() && reg.models().empty()) reason = "no models announced";
  if (reason.empty() && (reg.credits() == 0 || reg.credits() > 4096)) {
    reason = "credits must be 1..4096, got " + std::to_string(reg.credits());
  }
  if (!reason.empty()) {
    ++refusals[reason];
    log_warn("netsim refused a registration", {{"reason", reason}});
    v1::NetworkMessage refused;
    refused.set_refused(reason);
    stream->send(refused.SerializeAsString());
    stream->close(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, reason), /*abort=*/false);
    return;
  }
  ProviderInfo info;
  info.session = random_hex(16);
  info.identity_public_key = reg.identity_public_key();
  std::copy(reg.sealing_public_key().begin(), reg.sealing_public_key().end(),
            info.sealing_public_key.begin());
  info.provider_name = reg.provider_name();
  for (const auto& m : reg.models()) info.models.push_back(m.name());
  info.credits = reg.credits();
  info.replicas = reg.replicas();
  info.evidence_format = reg.evidence_format();
  streams[stream] = info.session;
  sessions[info.session] = stream;
  providers[info.session] = info;
  last_heard_ms[info.session] = steady_ms();
  queue.attach(info.session, info.identity_public_key, info.credits);
  if (load && last_provider && last_provider->sealing_public_key != info.sealing_public_key) {
    load->set_provider_key(info.sealing_public_key);
  }
  last_provider = info;
  ++registrations;
  v1::NetworkMessage m;
  m.mutable_registered()->set_session_id(info.session);
  m.mutable_registered()->set_heartbeat_interval_ms(config.heartbeat_interval_ms);
  m.mutable_registered()->set_heartbeat_timeout_ms(config.heartbeat_timeout_ms);
  stream->send(m.SerializeAsString());
  log_info("netsim provider registered",
           {{"session", info.session},
            {"provider", info.provider_name},
            {"credits", std::to_string(info.credits)},
            {"evidence_format", info.evidence_format},
            {"identity", network::hex(info.identity_public_key).substr(0, 16)}});
}

void QueueServer::Impl::on_final(Stream* stream, const v1::ResultFinal& f) {
  const std::string session = streams[stream];
  FinalReport report;
  report.chunk_count = f.chunk_count();
  report.usage = {f.usage().prompt_tokens(), f.usage().cached_tokens(),
                  f.usage().completion_tokens(), f.usage().reasoning_tokens()};
  report.from_journal = f.from_journal();
  report.finish_reason = f.finish_reason();
  report.attempt = f.attempt();
  if (Injected* inj = injected_for(f.request_id(), session, f.attempt()); inj && inj->fault) {
    // The provider answered an envelope it should have refused: computed from it (accepted),
    // or answered from its journal without checking the envelope first.
    if (!f.from_journal()) ++faults_accepted;
    fault_counts[*inj->fault]
        .unexpected[f.from_journal() ? "answered from the journal" : "computed an answer"]++;
    injected.erase(f.request_id());
  } else if (inj) {
    injected.erase(f.request_id());
  }
  FinalResult result = queue.on_final(session, f.request_id(), report);
  std::string short_id = network::hex(f.request_id()).substr(0, 16);
  switch (result.outcome) {
    case FinalOutcome::kCompleted: {
      Verdict v = load ? load->verify(f.request_id(), result.chunks, report) : Verdict{};
      if (v.ok) {
        ++verified;
        completion_tokens += v.completion_tokens;
      } else {
        std::string reason = load ? "answer check failed: " + v.reason : "no load";
        queue.mark_answer_invalid(f.request_id(), reason);
        log_warn("netsim answer failed its check", {{"request", short_id}, {"reason", reason}});
      }
      break;
    }
    case FinalOutcome::kBilledTwice:
      log_error("netsim request billed twice", {{"request", short_id}});
      break;
    case FinalOutcome::kJournalDuplicate:
    case FinalOutcome::kUnknown:
      break;
  }
}

void QueueServer::Impl::on_error(Stream* stream, const v1::ResultError& e) {
  const std::string session = streams[stream];
  const std::string& id = e.request_id();
  std::string code = v1::ErrorCode_Name(e.code());
  ++provider_errors[code];
  Injected* held = injected_for(id, session, e.attempt());
  std::optional<Injected> inj;
  if (held) inj = *held;
  if (inj && inj->dup && !inj->fault) {
    // One copy of a duplicated lease was refused; the other one still answers.
    ++dup_refusals;
    held->dup = false;
    return;
  }
  // An error of an earlier attempt (a duplicate copy, a lease that expired) is stale: it must
  // not close the lease of the attempt outstanding now.
  if (!queue.on_error(session, id, e.attempt())) return;
  injected.erase(id);
  long index = load ? load->index_of(id) : -1;
  if (index < 0) {
    queue.fail(id, "provider error " + code);
    return;
  }
  if (inj && inj->fault) {
    FaultCounts& counts = fault_counts[*inj->fault];
    if (expected_codes(*inj->fault).count(e.code())) {
      counts.refused_as_expected++;
    } else {
      counts.unexpected[code]++;
    }
    queue.resend(id, load->seal(static_cast<size_t>(index)));
    return;
  }
  if (e.code() == v1::ERROR_OVERLOADED || e.code() == v1::ERROR_DRAINING) {
    ++busy_resends;
    queue.resend(id, load->seal(static_cast<size_t>(index)));
    return;
  }
  if (e.code() == v1::ERROR_WRONG_RECIPIENT) {
    // Sealed before the provider re-registered with another key: seal again to the current
    // one (bounded by the queue's attempt limit).
    queue.resend(id, load->seal(static_cast<size_t>(index)));
    return;
  }
  queue.fail(id, "provider error " + code + (e.message().empty() ? "" : ": " + e.message()));
}

QueueServer::Impl::Injected* QueueServer::Impl::injected_for(const std::string& request_id,
                                                             const std::string& session,
                                                             uint32_t attempt) {
  auto it = injected.find(request_id);
  if (it == injected.end() || it->second.session != session) return nullptr;
  if (attempt != 0 && it->second.attempt != attempt) return nullptr;
  return &it->second;
}

void QueueServer::Impl::settle_fault_locked(const std::string& request_id,
                                            uint64_t FaultCounts::*outcome) {
  auto it = injected.find(request_id);
  if (it == injected.end()) return;
  if (it->second.fault) ++(fault_counts[*it->second.fault].*outcome);
  injected.erase(it);
}

QueueServer::QueueServer(ServerConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

QueueServer::~QueueServer() {
  stop();
}

void QueueServer::stop() {
  impl_->stop();
}

int QueueServer::port() const {
  return impl_->port;
}

std::optional<ProviderInfo> QueueServer::wait_for_provider(double timeout_s) {
  auto deadline = std::chrono::steady_clock::now() +
                  std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->cv.wait_until(lock, deadline, [&] { return !impl_->providers.empty(); });
  if (impl_->providers.empty()) return std::nullopt;
  return impl_->providers.begin()->second;
}

void QueueServer::run_load(LoadGenerator& load, uint32_t concurrency, double run_s,
                           double linger_s) {
  ALEM_CHECK(concurrency > 0, "concurrency must be at least 1");
  ALEM_CHECK(run_s > 0, "the run time must be positive");
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lock(m.mu);
    ALEM_CHECK(!m.load, "the simulator runs one load");
    m.load = &load;
    m.concurrency = concurrency;
    m.load_start_ms = steady_ms();
    m.load_end_ms = m.load_start_ms + static_cast<uint64_t>(run_s * 1000);
  }
  log_info("netsim load started", {{"requests", std::to_string(load.size())},
                                   {"concurrency", std::to_string(concurrency)}});
  std::unique_lock<std::mutex> lock(m.mu);
  m.cv.wait_until(lock,
                  std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(run_s * 1000)),
                  [&] { return m.load_finished_locked(); });
  m.load_end_ms = steady_ms();
  lock.unlock();
  if (linger_s > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(linger_s * 1000)));
  }
}

}  // namespace alem::netsim
