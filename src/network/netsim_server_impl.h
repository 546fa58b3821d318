// Private to the network simulator's queue server: the server's state (QueueServer::Impl) and
// its gRPC stream reactor, shared by netsim_server.cc (the protocol) and netsim_report.cc (the
// report). Not a public interface.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "network/netsim_server.h"
#include "network/provider.grpc.pb.h"

namespace alem::netsim {

namespace v1 = alem::network::v1;

inline std::string buffer_to_string(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

inline grpc::ByteBuffer string_to_buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline constexpr const char* kClusterBundleFormat = "alem-cluster-bundle-v1";

struct QueueServer::Impl {
  class Stream;
  class Service
      : public v1::ProviderQueue::WithRawCallbackMethod_Connect<v1::ProviderQueue::Service> {
   public:
    explicit Service(Impl* impl) : impl_(impl) {}
    grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Connect(
        grpc::CallbackServerContext* context) override;

   private:
    Impl* impl_;
  };

  // A fault injected into the current delivery of a request.
  struct Injected {
    std::optional<Fault> fault;  // the envelope fault, if any
    bool dup = false;
    std::string session;
    uint32_t attempt = 0;
  };
  // What became of each injected envelope fault: exactly one of these per injection.
  struct FaultCounts {
    uint64_t refused_as_expected = 0;
    uint64_t stream_closed = 0;  // the provider's stream ended while the fault was outstanding
    uint64_t released = 0;       // handed back unopened (Release: over credits, draining)
    uint64_t expired = 0;        // the lease's deadline passed first
    std::map<std::string, uint64_t> unexpected;  // what came back instead
  };
  struct Delayed {
    uint64_t due_ms;
    std::string session;
    std::string bytes;
  };

  explicit Impl(ServerConfig c);
  ~Impl();
  void stop();
  void ticker_loop();
  void tick_locked(uint64_t now);
  void reap_streams();
  Stream* stream_of(const std::string& session);
  void on_message(Stream* stream, const std::string& bytes);
  void on_register(Stream* stream, const v1::Register& reg);
  std::string check_cluster_bundle(const v1::Register& reg) const;
  void on_final(Stream* stream, const v1::ResultFinal& final_msg);
  void on_error(Stream* stream, const v1::ResultError& error);
  void end_session_locked(std::string session,
                          const char* why);  // by value: callers pass map entries it changes
  // The injected fault of `request_id`'s delivery `attempt` on `session`, if it is the one
  // outstanding (attempt 0: whichever is outstanding there); nullptr otherwise.
  Injected* injected_for(const std::string& request_id, const std::string& session,
                         uint32_t attempt);
  // Records the outcome of an outstanding envelope fault and forgets it.
  void settle_fault_locked(const std::string& request_id, uint64_t FaultCounts::*outcome);
  void send_lease_locked(const std::string& session, const LeaseGrant& grant, uint64_t now);
  const std::string* replay_candidate(const std::string& request_id) const;
  void send_locked(const std::string& session, std::string bytes, uint32_t delay_ms);
  void submit_more_locked();
  bool load_finished_locked() const;

  ServerConfig config;
  FaultInjector faults;
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  mutable std::mutex mu;
  std::condition_variable cv;
  LeaseQueue queue;
  std::map<Stream*, std::string> streams;         // live streams -> session ("" before Register)
  std::map<std::string, Stream*> sessions;        // registered sessions
  std::map<std::string, ProviderInfo> providers;  // by session
  std::map<std::string, uint64_t> last_heard_ms;  // by session
  std::optional<ProviderInfo> last_provider;
  std::map<std::string, Injected> injected;  // by request id
  std::map<Fault, FaultCounts> fault_counts;
  std::deque<std::pair<std::string, std::string>> replay_pool;  // (request id, envelope)
  std::vector<Delayed> delayed;
  std::set<std::string> garbage_sessions;  // streams sent bytes that are no message
  std::map<std::string, uint64_t> provider_errors;
  std::map<std::string, uint64_t> refusals;  // registration refusals by reason
  uint64_t registrations = 0, streams_dropped = 0, malformed_from_provider = 0;
  uint64_t faults_accepted = 0, verified = 0, completion_tokens = 0, heartbeats_in = 0;
  uint64_t dup_refusals = 0, busy_resends = 0;
  uint64_t last_heartbeat_sent_ms = 0;

  LoadGenerator* load = nullptr;
  uint32_t concurrency = 1;
  size_t next_request = 0;
  uint64_t load_start_ms = 0, load_end_ms = 0;

  std::mutex ended_mu;  // streams that ended, handed to the ticker
  std::vector<Stream*> ended;
  std::vector<Stream*> done;

  std::atomic<bool> stopping{false};
  std::thread ticker;
};

// One provider stream. Writes are queued; one is in flight at a time.
class QueueServer::Impl::Stream
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Reading starts with start(), once the server knows the stream (Service::Connect).
  Stream(Impl* impl, grpc::CallbackServerContext* context) : impl_(impl), context_(context) {}
  void start() { StartRead(&in_); }

  void send(std::string bytes) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finish_requested_) return;
    queue_.push_back(std::move(bytes));
    pump_locked();
  }
  // Ends the stream with `status` once the write in flight (if any) is done. `abort` also
  // cancels the call, so a peer that stopped reading cannot hold a write (and the end) forever.
  void close(const grpc::Status& status, bool abort = true) {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finish_requested_) return;
    finish_requested_ = true;
    finish_status_ = status;
    queue_.clear();
    if (!writing_) {
      finished_ = true;
      Finish(status);
    } else if (abort) {
      context_->TryCancel();
    }
  }
  bool closing() {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    return finish_requested_;
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        std::lock_guard<std::mutex> lock(impl_->ended_mu);
        impl_->ended.push_back(this);
      }
      close(grpc::Status::OK);
      return;
    }
    std::string bytes = buffer_to_string(in_);
    in_.Clear();
    impl_->on_message(this, bytes);
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (!finish_requested_) StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    writing_ = false;
    if (!ok && !finish_requested_) {
      finish_requested_ = true;
      finish_status_ = grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed");
      queue_.clear();
    }
    if (finish_requested_) {
      if (!finished_) {
        finished_ = true;
        Finish(finish_status_);
      }
      return;
    }
    pump_locked();
  }
  void OnDone() override {
    std::lock_guard<std::mutex> lock(impl_->ended_mu);
    impl_->done.push_back(this);
  }

 private:
  void pump_locked() {
    if (writing_ || queue_.empty() || finish_requested_) return;
    out_ = string_to_buffer(queue_.front());
    queue_.pop_front();
    writing_ = true;
    StartWrite(&out_);
  }

  Impl* impl_;
  grpc::CallbackServerContext* context_;
  std::recursive_mutex mu_;
  grpc::ByteBuffer in_, out_;
  std::deque<std::string> queue_;
  bool writing_ = false, finish_requested_ = false, finished_ = false;
  grpc::Status finish_status_;
};

}  // namespace alem::netsim
