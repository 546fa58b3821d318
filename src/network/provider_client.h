// ProviderClient: the gateway's connections to the network's queue. The cluster sits behind a
// firewall, so it dials out: one bidirectional gRPC stream (ProviderQueue.Connect) per network
// endpoint, several endpoints at once, each on its own thread.
//
// On each stream: Register (identity key, sealing key, evidence from the EvidenceHook, models
// with digests, credits, replicas; signed with the identity key) -> Registered (heartbeat
// interval and timeout) -> Leases, each handled on its own thread by the LeaseHandler, whose
// answers go back on the stream the lease came on. Heartbeats go both ways: the provider sends
// one every interval, and drops the stream when it has heard nothing for the timeout. A dropped
// or refused stream is dialled again after a jittered exponential backoff (reset once a
// registration succeeds).
//
// Credits: the provider never holds more open leases than its credits, across all endpoints
// together. Each endpoint is announced its share (credits / endpoints, the remainder to the
// first ones) and a lease beyond the total is handed back at once (Release "over credits").
//
// TLS with the operator's CA file (grpc::SslCredentials); plaintext only when asked for
// (insecure = true, for tests on 127.0.0.1). Messages above kMaxMessageBytes are refused by gRPC
// (RESOURCE_EXHAUSTED), logged as such, and the stream is dialled again.
//
// Drain: drain() makes new leases come back as Release and heartbeats announce 0 credits;
// leases in flight go on; stop() closes every stream and waits for every lease thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "network/evidence.h"
#include "network/lease_handler.h"
#include "network/provider.pb.h"
#include "network/provider_keys.h"

namespace alem::network {

struct ProviderClientOptions {
  std::vector<std::string> endpoints;  // HOST:PORT
  std::string ca_file;                 // PEM roots for TLS; empty: the system's roots
  bool insecure = false;               // plaintext (tests only)
  std::string provider_name;           // free text (job id, cluster)
  uint32_t credits = 1;                // leases at once, all endpoints together
  uint32_t replicas = 1;
  std::vector<v1::ModelInfo> models;
  EvidenceHook evidence;  // required
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{10000};
  // Used until the network's Registered says otherwise.
  std::chrono::milliseconds heartbeat_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{5000};
};

struct EndpointStatus {
  std::string endpoint;
  bool connected = false;
  bool registered = false;
  uint64_t connects = 0;  // streams opened so far
  uint32_t credits = 0;   // this endpoint's share
  std::string session_id;
};

class ProviderClient {
 public:
  // Checks the options (at least one endpoint, a readable CA file, credits >= 1, an evidence
  // hook); throws alem::Error naming the problem. Nothing is dialled before start().
  ProviderClient(ProviderClientOptions options, const ProviderKeys& keys, LeaseHandler& handler);
  ~ProviderClient();
  ProviderClient(const ProviderClient&) = delete;
  ProviderClient& operator=(const ProviderClient&) = delete;

  void start();
  // Stop taking leases (they are Released); in-flight leases go on.
  void drain();
  // Closes every stream and waits for every lease thread (they finish their leases first).
  void stop();

  int64_t open_leases() const { return open_leases_.load(); }
  std::vector<EndpointStatus> status() const;
  // Prometheus text: alem_network_* counters of the handler plus per-endpoint gauges.
  std::string render_metrics() const;

 private:
  struct Stream;
  struct Connection;
  void run_connection(Connection& connection);
  void run_ticker();
  void on_lease(Connection& connection, const std::shared_ptr<Stream>& stream,
                const v1::Lease& lease);
  v1::ProviderMessage make_register(const Connection& connection);
  bool sleep_backoff(std::chrono::milliseconds delay);

  ProviderClientOptions options_;
  const ProviderKeys& keys_;
  LeaseHandler& handler_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::thread ticker_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> draining_{false};
  std::atomic<int64_t> open_leases_{0};
  std::atomic<uint64_t> over_credit_releases_{0};
  std::atomic<uint64_t> oversized_messages_{0};
  mutable std::mutex mutex_;
  std::condition_variable wake_;         // backoff sleeps and the ticker
  std::condition_variable leases_done_;  // lease threads
  int64_t lease_threads_ = 0;
};

}  // namespace alem::network
