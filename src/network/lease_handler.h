// LeaseHandler: what the provider does with one Lease from the network, whichever endpoint it
// came on. It is the exactly-once core of the provider and knows nothing of gRPC: it writes its
// answer (ResultChunk..., ResultFinal | ResultError | Release) through a LeaseReply.
//
//   1. The envelope is checked first, on every delivery: its size (ERROR_TOO_LARGE), replay
//      (ERROR_REPLAYED: these bytes were opened for another request id), and opening with the
//      provider's sealing key (ERROR_BAD_ENVELOPE, ERROR_WRONG_RECIPIENT, ERROR_TAMPERED).
//   2. A request id already finished in the usage journal is answered from the journal: the
//      recorded sealed chunks, then ResultFinal{from_journal=true} with the recorded usage. No
//      compute, no second billing record. A request id being computed right now (a duplicate
//      delivery) waits for that computation and is then answered the same way.
//   3. While draining, a new lease is handed back unstarted (Release).
//   4. The RequestPayload is parsed, the JSON body checked with a bound on its nesting
//      (core/json_input.h), the start journaled, and the body run through
//      serve::CompletionSession exactly as the HTTP API runs it (same parsing, tokenization,
//      stop strings, usage).
//   5. Every chunk the session produces (structured JSON, no SSE text; or the one
//      non-streaming response body) is sealed to the client's key with purpose
//      chunk_purpose(sequence) and sent as a ResultChunk.
//   6. The finish (usage, finish reason, timing, sealed chunks) is journaled, durably, BEFORE
//      ResultFinal is sent. A request aborted by the drain is Released, not billed.
// Every result message carries the lease's attempt.
// Plaintext (the opened payload, the request body, every answer chunk) is wiped when done.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "engine/serving_engine.h"
#include "network/provider.pb.h"
#include "network/sealing.h"
#include "network/usage_journal.h"
#include "serve/completion_session.h"
#include "serve/metrics.h"

namespace alem::network {

// Where a lease's answer goes (one gRPC stream in the provider). Send calls return false when
// the stream is gone; the handler then still finishes and journals, so a redelivery is answered
// from the journal.
class LeaseReply {
 public:
  virtual ~LeaseReply() = default;
  virtual bool send(const v1::ProviderMessage& message) = 0;
};

// Outcomes, counted by LeaseHandler (and shown as alem_network_* metrics).
struct LeaseCounters {
  std::atomic<uint64_t> leases{0};
  std::atomic<uint64_t> completed{0};     // computed and billed
  std::atomic<uint64_t> from_journal{0};  // redeliveries answered from the journal
  std::atomic<uint64_t> released{0};
  std::atomic<uint64_t> errors[11] = {};  // by v1::ErrorCode
  std::atomic<uint64_t> chunks_sent{0};
};

class LeaseHandler {
 public:
  // Everything must outlive the handler. `served_model` names the model leases may ask for.
  LeaseHandler(const X25519KeyPair& sealing_key, UsageJournal& journal,
               const serve::ServedModel& served_model, EngineClient& engine,
               serve::ServingMetrics& metrics);

  // Handles one lease to the end (blocks while it computes). Thread-safe: the provider calls it
  // from one thread per open lease.
  void handle(const v1::Lease& lease, LeaseReply& reply);

  // After this, new leases are Released; ones in flight go on.
  void set_draining(bool draining) { draining_.store(draining); }
  bool draining() const { return draining_.load(); }
  // Leases inside handle() right now.
  int64_t active() const { return active_.load(); }
  const LeaseCounters& counters() const { return counters_; }
  // Prometheus text for the alem_network_* counters.
  std::string render_metrics() const;

 private:
  // Checks the sealed request (size, replay, open) and hands out its plaintext; false after
  // answering the lease with the error.
  bool open_request(const v1::Lease& lease, LeaseReply& reply, OpenedPayload& opened);
  void compute(const v1::Lease& lease, OpenedPayload opened, LeaseReply& reply,
               std::chrono::steady_clock::time_point received);
  bool answer_from_journal(const std::string& request_id, LeaseReply& reply);
  void send_error(LeaseReply& reply, const std::string& request_id, v1::ErrorCode code,
                  const std::string& message);
  void send_release(LeaseReply& reply, const std::string& request_id, const std::string& reason);
  // Claims `request_id` for computing; false when another thread computes it now (then waits
  // until it is done).
  bool claim(const std::string& request_id);
  void release_claim(const std::string& request_id);
  // Records that `envelope_hash` belongs to `request_id`; false when it was seen for another.
  // False when the envelope was already opened under another request id (a replay). With
  // `remember`, records it for `request_id`: only envelopes that opened, so a copy sent under a
  // new id (which cannot open: the id is its associated data) never poisons the original.
  bool note_envelope(const std::string& envelope_hash, const std::string& request_id,
                     bool remember);

  const X25519KeyPair& key_;
  UsageJournal& journal_;
  const serve::ServedModel& model_;
  EngineClient& engine_;
  serve::ServingMetrics& metrics_;
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> active_{0};
  LeaseCounters counters_;

  std::mutex mutex_;
  std::condition_variable computing_done_;
  std::map<std::string, int> computing_;  // request ids being computed -> 1
  // Envelope hash -> request id, for replay detection; bounded (oldest dropped first).
  std::unordered_map<std::string, std::string> envelopes_;
  std::deque<std::string> envelope_order_;
};

// The v1::ErrorCode name without its prefix, lowercase ("tampered"), for logs and metrics.
std::string error_code_label(v1::ErrorCode code);

}  // namespace alem::network
