// The queue server of the reference network simulator: the network's side of the provider
// protocol (provider.proto's ProviderQueue service) on a local address, over TLS or, when asked,
// plaintext. Providers dial in and register (protocol version, Ed25519 identity signature, an
// evidence policy); the server hands out leases from its LeaseQueue (netsim_queue.h) within
// each provider's credits, redelivers leases whose deadline passes or whose stream drops,
// exchanges heartbeats, and bills each request once. A LoadGenerator (netsim_client.h) in the
// same process supplies sealed requests and checks every answer; a FaultInjector
// (netsim_faults.h) breaks things on purpose along the way.
//
// The service is registered raw (gRPC ByteBuffers), so the server can also send bytes that are
// not a valid message, and so a provider's malformed bytes are refused by this code, with a
// reason, instead of inside gRPC.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "network/netsim_client.h"
#include "network/netsim_faults.h"
#include "network/netsim_queue.h"
#include "network/sealing.h"

namespace alem::netsim {

struct ServerConfig {
  std::string listen = "127.0.0.1:0";
  std::string tls_cert_file;  // PEM; with tls_key_file, serves TLS
  std::string tls_key_file;
  bool insecure = false;  // plaintext (tests); exactly one of TLS or insecure
  bool accept_software_evidence = false;
  // Cluster bundles (evidence format "alem-cluster-bundle-v1"): the MRTDs (hex) a TDX rank may
  // have. Software-evidence bundles need accept_software_evidence instead.
  std::vector<std::string> allowed_mrtd_hex;
  uint32_t heartbeat_interval_ms = 1000;
  uint32_t heartbeat_timeout_ms = 15000;
  QueueConfig queue;
  FaultSpec faults;
  uint64_t seed = 1;
};

// A registered provider as the network sees it.
struct ProviderInfo {
  std::string session;
  std::string identity_public_key;  // 32 bytes
  network::X25519PublicKey sealing_public_key{};
  std::string provider_name;
  std::vector<std::string> models;
  uint32_t credits = 0;
  uint32_t replicas = 0;
  std::string evidence_format;
};

class QueueServer {
 public:
  // Starts listening at once (throws alem::Error when it cannot: bad address, unreadable TLS
  // files, neither TLS nor insecure chosen).
  explicit QueueServer(ServerConfig config);
  ~QueueServer();
  QueueServer(const QueueServer&) = delete;
  QueueServer& operator=(const QueueServer&) = delete;

  int port() const;
  // Waits until a provider has registered; nullopt after `timeout_s`.
  std::optional<ProviderInfo> wait_for_provider(double timeout_s);
  // Submits the generator's requests, keeping at most `concurrency` unfinished, until every
  // request is completed or failed, or `run_s` passes. Then waits `linger_s` more for late
  // answers (a second billing would show there). The generator must outlive the server's use.
  void run_load(LoadGenerator& load, uint32_t concurrency, double run_s, double linger_s);
  // The report: counts, failures with reasons, rates, faults. Lost and billed_twice must be 0.
  nlohmann::json report() const;
  // True when the report shows a clean run: nothing lost, nothing billed twice, every answer
  // verified, every injected fault refused as expected, every request submitted.
  bool clean() const;
  // Stops serving (also done by the destructor).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace alem::netsim
