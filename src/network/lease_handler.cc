// One lease from the network to its answer (see lease_handler.h for the rules it keeps).
#include "network/lease_handler.h"

#include <sodium.h>

#include <chrono>

#include "core/error.h"
#include "core/json_input.h"
#include "core/log.h"
#include "network/protocol.h"
#include "serve/openai_protocol.h"

namespace alem::network {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxRememberedEnvelopes = 100000;

uint64_t ms_since(Clock::time_point start) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
}

std::string envelope_hash(const std::string& envelope) {
  uint8_t digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, reinterpret_cast<const uint8_t*>(envelope.data()), envelope.size());
  return std::string(reinterpret_cast<const char*>(digest), sizeof digest);
}

v1::ErrorCode code_for_open_error(OpenError error) {
  switch (error) {
    case OpenError::kBadEnvelope:
      return v1::ERROR_BAD_ENVELOPE;
    case OpenError::kWrongRecipient:
      return v1::ERROR_WRONG_RECIPIENT;
    case OpenError::kTampered:
      return v1::ERROR_TAMPERED;
    case OpenError::kNone:
      break;
  }
  return v1::ERROR_INTERNAL;
}

v1::ErrorCode code_for_api_error(const serve::ApiError& error) {
  switch (error.status) {
    case 404:
      return v1::ERROR_UNKNOWN_MODEL;
    case 413:
      return v1::ERROR_TOO_LARGE;
    case 429:
      return v1::ERROR_OVERLOADED;
    case 503:
      return v1::ERROR_OVERLOADED;
    case 500:
      return v1::ERROR_INTERNAL;
    default:
      return v1::ERROR_BAD_REQUEST;
  }
}

// Stamps the lease's attempt on every result message, so the network can tell the answers of
// two deliveries of one request apart.
class AttemptReply final : public LeaseReply {
 public:
  AttemptReply(LeaseReply& inner, uint32_t attempt) : inner_(inner), attempt_(attempt) {}
  bool send(const v1::ProviderMessage& message) override {
    v1::ProviderMessage out = message;
    switch (out.kind_case()) {
      case v1::ProviderMessage::kChunk:
        out.mutable_chunk()->set_attempt(attempt_);
        break;
      case v1::ProviderMessage::kFinal:
        out.mutable_final()->set_attempt(attempt_);
        break;
      case v1::ProviderMessage::kError:
        out.mutable_error()->set_attempt(attempt_);
        break;
      case v1::ProviderMessage::kRelease:
        out.mutable_release()->set_attempt(attempt_);
        break;
      default:
        break;
    }
    return inner_.send(out);
  }

 private:
  LeaseReply& inner_;
  uint32_t attempt_;
};

}  // namespace

std::string error_code_label(v1::ErrorCode code) {
  std::string name = v1::ErrorCode_Name(code);
  if (name.rfind("ERROR_", 0) == 0) name = name.substr(6);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name.empty() ? "code_" + std::to_string(static_cast<int>(code)) : name;
}

LeaseHandler::LeaseHandler(const X25519KeyPair& sealing_key, UsageJournal& journal,
                           const serve::ServedModel& served_model, EngineClient& engine,
                           serve::ServingMetrics& metrics)
    : key_(sealing_key),
      journal_(journal),
      model_(served_model),
      engine_(engine),
      metrics_(metrics) {}

void LeaseHandler::send_error(LeaseReply& reply, const std::string& request_id, v1::ErrorCode code,
                              const std::string& message) {
  const int index = static_cast<int>(code);
  if (index >= 0 && index < 11) counters_.errors[index].fetch_add(1);
  log_warn("network lease refused",
           {{"request_id", hex(request_id)}, {"code", error_code_label(code)}, {"why", message}});
  v1::ProviderMessage out;
  v1::ResultError* error = out.mutable_error();
  error->set_request_id(request_id);
  error->set_code(code);
  error->set_message(message);
  reply.send(out);
}

void LeaseHandler::send_release(LeaseReply& reply, const std::string& request_id,
                                const std::string& reason) {
  counters_.released.fetch_add(1);
  v1::ProviderMessage out;
  out.mutable_release()->set_request_id(request_id);
  out.mutable_release()->set_reason(reason);
  reply.send(out);
}

bool LeaseHandler::answer_from_journal(const std::string& request_id, LeaseReply& reply) {
  std::optional<FinishRecord> rec = journal_.finished(request_id);
  if (!rec) return false;
  for (size_t i = 0; i < rec->sealed_chunks.size(); ++i) {
    v1::ProviderMessage out;
    v1::ResultChunk* chunk = out.mutable_chunk();
    chunk->set_request_id(request_id);
    chunk->set_sequence(static_cast<uint32_t>(i));
    chunk->set_sealed_chunk(std::move(rec->sealed_chunks[i]));
    reply.send(out);
  }
  v1::ProviderMessage out;
  v1::ResultFinal* final_message = out.mutable_final();
  final_message->set_request_id(request_id);
  final_message->set_chunk_count(static_cast<uint32_t>(rec->sealed_chunks.size()));
  final_message->mutable_usage()->set_prompt_tokens(rec->usage.prompt_tokens);
  final_message->mutable_usage()->set_cached_tokens(rec->usage.cached_tokens);
  final_message->mutable_usage()->set_completion_tokens(rec->usage.completion_tokens);
  final_message->mutable_usage()->set_reasoning_tokens(rec->usage.reasoning_tokens);
  final_message->mutable_timing()->set_queue_ms(rec->queue_ms);
  final_message->mutable_timing()->set_first_token_ms(rec->first_token_ms);
  final_message->mutable_timing()->set_total_ms(rec->total_ms);
  final_message->set_from_journal(true);
  final_message->set_finish_reason(rec->finish_reason);
  counters_.from_journal.fetch_add(1);  // before the final, as for a computed answer
  reply.send(out);
  log_info("network lease answered from the journal", {{"request_id", hex(request_id)}});
  return true;
}

bool LeaseHandler::claim(const std::string& request_id) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!computing_.count(request_id)) {
    computing_[request_id] = 1;
    return true;
  }
  computing_done_.wait(lock, [&] { return !computing_.count(request_id); });
  return false;
}

void LeaseHandler::release_claim(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    computing_.erase(request_id);
  }
  computing_done_.notify_all();
}

bool LeaseHandler::note_envelope(const std::string& hash, const std::string& request_id,
                                 bool remember) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = envelopes_.find(hash);
  if (it != envelopes_.end()) return it->second == request_id;
  if (!remember) return true;
  envelopes_.emplace(hash, request_id);
  envelope_order_.push_back(hash);
  if (envelope_order_.size() > kMaxRememberedEnvelopes) {
    envelopes_.erase(envelope_order_.front());
    envelope_order_.pop_front();
  }
  return true;
}

void LeaseHandler::handle(const v1::Lease& lease, LeaseReply& stream_reply) {
  const auto received = Clock::now();
  counters_.leases.fetch_add(1);
  active_.fetch_add(1);
  struct ActiveGuard {
    std::atomic<int64_t>& n;
    ~ActiveGuard() { n.fetch_sub(1); }
  } guard{active_};
  AttemptReply reply(stream_reply, lease.attempt());
  const std::string& id = lease.request_id();
  try {
    // The envelope first: a redelivery must be as authentic as the first delivery before the
    // journal (or a computation in progress) answers it.
    if (id.size() != kRequestIdBytes) {
      send_error(reply, id, v1::ERROR_BAD_ENVELOPE,
                 "the lease's request id is " + std::to_string(id.size()) + " bytes, not 32");
      return;
    }
    OpenedPayload opened;
    if (!open_request(lease, reply, opened)) return;
    if (answer_from_journal(id, reply)) return;
    if (!claim(id)) {
      // A duplicate delivery while another thread computed it: answer from its journal record,
      // or hand it back when that attempt did not finish (aborted by a drain).
      if (!answer_from_journal(id, reply)) send_release(reply, id, "retry: not finished here");
      return;
    }
    struct ClaimGuard {
      LeaseHandler* self;
      const std::string& id;
      ~ClaimGuard() { self->release_claim(id); }
    } claim_guard{this, id};
    // Between the first journal look-up and the claim, another thread may have finished it.
    if (answer_from_journal(id, reply)) return;
    compute(lease, std::move(opened), reply, received);
  } catch (const std::exception& e) {
    send_error(reply, id, v1::ERROR_INTERNAL, "the provider failed on this lease");
    log_error("network lease failed", {{"request_id", hex(id)}, {"why", e.what()}});
  }
}

bool LeaseHandler::open_request(const v1::Lease& lease, LeaseReply& reply, OpenedPayload& opened) {
  const std::string& id = lease.request_id();
  if (lease.sealed_request().size() > kMaxSealedRequestBytes) {
    send_error(reply, id, v1::ERROR_TOO_LARGE,
               "the sealed request is " + std::to_string(lease.sealed_request().size()) +
                   " bytes; the limit is " + std::to_string(kMaxSealedRequestBytes));
    return false;
  }
  const std::string hash = envelope_hash(lease.sealed_request());
  if (!note_envelope(hash, id, /*remember=*/false)) {
    send_error(reply, id, v1::ERROR_REPLAYED,
               "this envelope was already delivered under another request id");
    return false;
  }
  OpenResult result = open_envelope(key_, id, kPurposeRequest, lease.sealed_request());
  if (!result.ok()) {
    send_error(reply, id, code_for_open_error(result.error), result.message);
    return false;
  }
  if (!note_envelope(hash, id, /*remember=*/true)) {  // a copy opened first in another thread
    result.payload.wipe();
    send_error(reply, id, v1::ERROR_REPLAYED,
               "this envelope was already delivered under another request id");
    return false;
  }
  opened = std::move(result.payload);
  return true;
}

void LeaseHandler::compute(const v1::Lease& lease, OpenedPayload opened, LeaseReply& reply,
                           Clock::time_point received) {
  const std::string& id = lease.request_id();
  if (draining_.load()) {
    opened.wipe();
    send_release(reply, id, "draining");
    return;
  }
  if (!lease.model().empty() && !serve::model_name_matches(lease.model(), model_.name)) {
    opened.wipe();
    send_error(reply, id, v1::ERROR_UNKNOWN_MODEL,
               "this provider serves \"" + model_.name + "\", not \"" + lease.model() + "\"");
    return;
  }
  v1::RequestPayload payload;
  const bool parsed = payload.ParseFromArray(opened.view().data(), static_cast<int>(opened.size()));
  opened.wipe();
  struct PayloadWipe {
    v1::RequestPayload& p;
    ~PayloadWipe() {
      if (std::string* body = p.mutable_body(); !body->empty()) wipe_string(*body);
    }
  } payload_wipe{payload};
  if (!parsed) {
    send_error(reply, id, v1::ERROR_BAD_REQUEST, "the opened request is not a RequestPayload");
    return;
  }
  if (payload.client_public_key().size() != kX25519KeyBytes) {
    send_error(reply, id, v1::ERROR_BAD_REQUEST, "the client public key is not 32 bytes");
    return;
  }
  X25519PublicKey client_key{};
  std::copy(payload.client_public_key().begin(), payload.client_public_key().end(),
            client_key.begin());
  serve::Endpoint endpoint;
  if (payload.endpoint() == "/v1/completions") {
    endpoint = serve::Endpoint::kCompletions;
  } else if (payload.endpoint() == "/v1/chat/completions") {
    endpoint = serve::Endpoint::kChatCompletions;
  } else {
    send_error(reply, id, v1::ERROR_BAD_REQUEST,
               "unknown endpoint (expected /v1/completions or /v1/chat/completions)");
    return;
  }
  // Outside JSON is parsed with a bound on its depth first (core/json_input.h): a body nested
  // deeper than any real request is refused here, before the request parser walks it.
  try {
    nlohmann::json bounded = parse_json_bounded(payload.body());
    wipe_json_strings(bounded);
  } catch (const JsonInputError& e) {
    send_error(reply, id, v1::ERROR_BAD_REQUEST,
               std::string("the request body is not valid JSON: ") + e.what());
    return;
  }

  journal_.start(id, lease.attempt());
  std::shared_ptr<serve::CompletionSession> session;
  try {
    serve::ApiRequest request = serve::parse_request(payload.body(), endpoint, model_.name);
    wipe_string(*payload.mutable_body());
    if (!engine_.healthy()) {
      throw serve::ApiException(serve::ApiError::unavailable("the engine is not ready"));
    }
    session = std::make_shared<serve::CompletionSession>(model_, engine_, metrics_,
                                                         std::move(request), received);
    session->start();
  } catch (const serve::ApiException& e) {
    if (session) session->close(true);
    if (e.error().status == 503 && draining_.load()) {
      send_release(reply, id, "draining");
      return;
    }
    send_error(reply, id, code_for_api_error(e.error()), e.error().message);
    return;
  }
  const uint64_t queue_ms = ms_since(received);

  // Seal and send every chunk as it comes; keep the sealed copies for the journal.
  FinishRecord record;
  record.request_id = id;
  uint64_t first_token_ms = 0;
  auto emit = [&](std::string& json) {
    const uint32_t sequence = static_cast<uint32_t>(record.sealed_chunks.size());
    std::string sealed = seal(client_key, id, chunk_purpose(sequence), json);
    wipe_string(json);
    v1::ProviderMessage out;
    out.mutable_chunk()->set_request_id(id);
    out.mutable_chunk()->set_sequence(sequence);
    out.mutable_chunk()->set_sealed_chunk(sealed);
    reply.send(out);
    counters_.chunks_sent.fetch_add(1);
    record.sealed_chunks.push_back(std::move(sealed));
  };
  try {
    if (session->streaming()) {
      // The session's structured chunks, sealed one by one: no SSE text in between.
      bool more = true;
      std::vector<serve::StreamChunk> chunks;
      while (more) {
        chunks.clear();
        more = session->next_stream_chunks(chunks, std::chrono::milliseconds(100));
        for (serve::StreamChunk& chunk : chunks) {
          if (first_token_ms == 0 && chunk.has_text) first_token_ms = ms_since(received);
          std::string json = serve::dump_json(chunk.value);
          wipe_json_strings(chunk.value);
          emit(json);
        }
      }
      session->close(true);
    } else {
      std::string body = session->wait_for_response();  // closes the session
      first_token_ms = ms_since(received);
      emit(body);
    }
  } catch (const serve::ApiException& e) {
    session->close(true);
    send_error(reply, id, code_for_api_error(e.error()), e.error().message);
    return;
  }
  if (session->engine_failed()) {
    send_error(reply, id, v1::ERROR_INTERNAL, "the engine failed while generating");
    return;
  }
  if (session->finish_reason() == FinishReason::kAbort) {
    // Aborted (the drain ran out of time): not complete, not billed; the network requeues it.
    send_release(reply, id, "aborted by the provider's drain");
    return;
  }
  const serve::Usage usage = session->usage();
  record.usage.prompt_tokens = static_cast<uint32_t>(usage.prompt_tokens);
  record.usage.cached_tokens = static_cast<uint32_t>(usage.cached_tokens);
  record.usage.completion_tokens = static_cast<uint32_t>(usage.completion_tokens);
  // Counted from token ids for models with think markers (serve/reasoning.h), else 0.
  record.usage.reasoning_tokens = static_cast<uint32_t>(usage.reasoning_tokens);
  record.finish_reason = finish_reason_name(session->finish_reason());
  record.queue_ms = queue_ms;
  record.first_token_ms = first_token_ms;
  record.total_ms = ms_since(received);
  const uint32_t chunk_count = static_cast<uint32_t>(record.sealed_chunks.size());
  v1::ProviderMessage out;
  v1::ResultFinal* final_message = out.mutable_final();
  final_message->set_request_id(id);
  final_message->set_chunk_count(chunk_count);
  final_message->mutable_usage()->set_prompt_tokens(record.usage.prompt_tokens);
  final_message->mutable_usage()->set_cached_tokens(record.usage.cached_tokens);
  final_message->mutable_usage()->set_completion_tokens(record.usage.completion_tokens);
  final_message->mutable_usage()->set_reasoning_tokens(record.usage.reasoning_tokens);
  final_message->mutable_timing()->set_queue_ms(record.queue_ms);
  final_message->mutable_timing()->set_first_token_ms(record.first_token_ms);
  final_message->mutable_timing()->set_total_ms(record.total_ms);
  final_message->set_from_journal(false);
  final_message->set_finish_reason(record.finish_reason);
  journal_.finish(std::move(record));  // durable before the network hears of it
  // Counted before the final goes out: whoever reads the final (the network, a test, then a
  // metrics scrape) must find it counted, as it finds it in the journal.
  counters_.completed.fetch_add(1);
  reply.send(out);
  log_info("network lease answered",
           {{"request_id", hex(id)},
            {"attempt", std::to_string(lease.attempt())},
            {"chunks", std::to_string(chunk_count)},
            {"prompt_tokens", std::to_string(final_message->usage().prompt_tokens())},
            {"completion_tokens", std::to_string(final_message->usage().completion_tokens())},
            {"total_ms", std::to_string(final_message->timing().total_ms())}});
}

std::string LeaseHandler::render_metrics() const {
  std::string out;
  auto counter = [&out](const std::string& name, const std::string& help, uint64_t value,
                        const std::string& labels = "") {
    out += "# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n";
    out += name + (labels.empty() ? "" : "{" + labels + "}") + " " + std::to_string(value) + "\n";
  };
  counter("alem_network_leases_total", "Leases received from the network.",
          counters_.leases.load());
  counter("alem_network_completed_total", "Leases computed, journaled and billed.",
          counters_.completed.load());
  counter("alem_network_from_journal_total",
          "Redelivered leases answered from the usage journal (not billed again).",
          counters_.from_journal.load());
  counter("alem_network_released_total", "Leases handed back to the network unstarted.",
          counters_.released.load());
  counter("alem_network_chunks_total", "Sealed answer chunks sent.", counters_.chunks_sent.load());
  out += "# HELP alem_network_errors_total Leases answered with ResultError, by code.\n";
  out += "# TYPE alem_network_errors_total counter\n";
  for (int code = 1; code < 11; ++code) {
    out += "alem_network_errors_total{code=\"" +
           error_code_label(static_cast<v1::ErrorCode>(code)) + "\"} " +
           std::to_string(counters_.errors[code].load()) + "\n";
  }
  return out;
}

}  // namespace alem::network
