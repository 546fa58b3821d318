// The lease queue of the reference network simulator, as pure bookkeeping (no gRPC, no clock
// of its own), so its rules can be tested exactly: requests wait in FIFO order; a provider
// (one identity, possibly several streams) never holds more open leases than its credits; a
// lease not finished by its deadline, or held by a stream that drops, or released, goes back
// to the front of the queue with attempt + 1; the first ResultFinal of a request bills it, a
// later one answered from the provider's journal is a harmless duplicate, and a later one that
// was computed again counts in billed_twice (which must stay 0). Every result names the
// attempt it answers; results of an earlier attempt never touch a later delivery's lease.
//
// Times are milliseconds from any monotonic origin, passed in by the caller. Not thread-safe:
// the server serializes calls with its own lock.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace alem::netsim {

struct QueueConfig {
  uint64_t lease_ms = 30000;   // a lease returns to the queue this long after delivery
  uint32_t max_attempts = 12;  // deliveries of one request before it fails
};

// One delivery of a request to a stream.
struct LeaseGrant {
  std::string request_id;  // 32 raw bytes
  uint32_t attempt = 0;    // 1 on the first delivery
  uint64_t deadline_ms = 0;
  std::string model;
  std::string payload;  // the sealed request as the queue holds it
};

struct UsageRecord {
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;
  uint32_t completion_tokens = 0;
  uint32_t reasoning_tokens = 0;
};

struct FinalReport {
  uint32_t attempt = 0;  // the delivery it answers (0: the latest delivery to that stream)
  uint32_t chunk_count = 0;
  UsageRecord usage;
  bool from_journal = false;
  std::string finish_reason;
};

// What a ResultFinal did to the books.
enum class FinalOutcome {
  kCompleted,         // the first final of this request: billed now; `chunks` hold its answer
  kJournalDuplicate,  // already billed; answered from the journal: not billed again
  kBilledTwice,       // already billed and computed again: counted in billed_twice
  kUnknown,           // not a request this stream was ever given
};

struct FinalResult {
  FinalOutcome outcome = FinalOutcome::kUnknown;
  // For kCompleted: the sealed chunks by sequence from the delivery the final belongs to
  // (missing sequences are absent).
  std::map<uint32_t, std::string> chunks;
};

enum class RequestState { kPending, kLeased, kAwaitingClient, kCompleted, kFailed };

struct QueueStats {
  uint64_t submitted = 0;
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t deliveries = 0;
  uint64_t redelivered = 0;  // deliveries after a lease was lost (deadline, drop, release)
  uint64_t expired = 0;      // leases that passed their deadline
  uint64_t dropped = 0;      // leases returned because their stream went away
  uint64_t released = 0;     // leases handed back by the provider
  uint64_t resent = 0;       // requests the client sent again after an error answer
  uint64_t journal_duplicates = 0;
  uint64_t billed_twice = 0;
  uint64_t stale_messages = 0;     // results for requests the stream does not hold
  uint64_t duplicate_chunks = 0;   // a sequence number seen twice in one delivery
  uint64_t credit_violations = 0;  // must stay 0: checked on every grant
};

class LeaseQueue {
 public:
  explicit LeaseQueue(QueueConfig config = {});

  // A new request (fresh 32-byte id) with its sealed payload. Throws alem::Error on a reused id.
  void submit(const std::string& request_id, const std::string& model, std::string payload);
  // The client sends a request again after an error answer (a fresh sealing, same id). The
  // request goes to the front of the queue.
  void resend(const std::string& request_id, std::string payload);
  // The client gives up on a request; `reason` goes into the report.
  void fail(const std::string& request_id, const std::string& reason);

  // A registered stream of provider `provider` (its identity key) with `credits`. The latest
  // registration of an identity sets its credits.
  void attach(const std::string& session, const std::string& provider, uint32_t credits);
  // The stream is gone: its open leases go back to the queue. Returns their ids.
  std::vector<std::string> detach(const std::string& session);

  // Grants leases to `session` while its provider has free credits and requests wait.
  std::vector<LeaseGrant> grant(const std::string& session, uint64_t now_ms);
  // Leases past their deadline go back to the queue. Returns their ids.
  std::vector<std::string> expire(uint64_t now_ms);

  // Results name the attempt (delivery) they answer, so a late chunk, final, error or release
  // of an earlier delivery never mixes with, or closes, a later one. Attempt 0 (a provider that
  // does not say) means the latest delivery to that stream.
  void on_chunk(const std::string& session, const std::string& request_id, uint32_t sequence,
                std::string sealed_chunk, uint32_t attempt = 0);
  FinalResult on_final(const std::string& session, const std::string& request_id,
                       const FinalReport& final_report);
  // An error answer closes the lease; the request waits for the client (resend or fail).
  // Returns false when the stream does not hold that attempt's lease now (stale).
  bool on_error(const std::string& session, const std::string& request_id, uint32_t attempt = 0);
  // The provider hands a lease back unstarted: the request goes back to the queue. False when
  // stale, as for on_error.
  bool on_release(const std::string& session, const std::string& request_id, uint32_t attempt = 0);

  // After a kCompleted final whose answer did not verify: the request fails (still billed once).
  void mark_answer_invalid(const std::string& request_id, const std::string& reason);

  RequestState state(const std::string& request_id) const;
  uint32_t attempts(const std::string& request_id) const;
  std::optional<UsageRecord> billed_usage(const std::string& request_id) const;
  uint32_t open_leases(const std::string& provider) const;
  size_t pending() const { return pending_.size(); }
  // Requests neither completed nor failed.
  uint64_t unfinished() const;
  // Requests that failed, with their reason, by request id.
  const std::map<std::string, std::string>& failures() const { return failures_; }
  const QueueStats& stats() const { return stats_; }

 private:
  struct Delivery {
    std::string session;
    uint32_t attempt = 0;
    std::map<uint32_t, std::string> chunks;
  };
  struct Request {
    std::string model;
    std::string payload;
    RequestState state = RequestState::kPending;
    uint32_t attempt = 0;  // deliveries so far
    std::string holder;    // session holding the open lease (kLeased)
    uint64_t deadline_ms = 0;
    bool lost_lease = false;  // the next delivery is a redelivery
    std::vector<Delivery> deliveries;
    std::optional<UsageRecord> billed;
  };
  struct Provider {
    uint32_t credits = 0;
    uint32_t open = 0;
  };

  Request& find(const std::string& request_id);
  const Request* find_if(const std::string& request_id) const;
  // The delivery of `attempt` to `session` (attempt 0: the latest one to it), or nullptr.
  Delivery* delivery_of(Request& request, const std::string& session, uint32_t attempt);
  void close_lease(Request& request);
  // The request whose open lease `session` holds under `attempt` (0: any), or nullptr
  // (counted as a stale message).
  Request* held_lease(const std::string& session, const std::string& request_id, uint32_t attempt);
  void requeue_front(const std::string& request_id, Request& request);
  void finish_failed(const std::string& request_id, Request& request, const std::string& reason);

  QueueConfig config_;
  std::map<std::string, Request> requests_;
  std::deque<std::string> pending_;
  std::map<std::string, std::string> session_provider_;
  std::map<std::string, Provider> providers_;
  std::map<std::string, std::string> failures_;
  QueueStats stats_;
};

}  // namespace alem::netsim
