// Data-parallel serving: one gateway in front of several model replicas of one job.
//
// With --dp D, the job holds D replicas (each TP x PP ranks, engine/serving_engine.h). World
// rank 0 is the gateway and the leader of replica 0; the leaders of replicas 1..D-1 run their
// own engine loops. The gateway's HTTP side talks to a DataParallelRouter, an EngineClient that
// sends each request to the replica with the fewest requests in flight:
//   - replica 0 directly (its ServingEngine lives in the same process);
//   - replica d > 0 over a MessageChannel (mpi/message_channel.h) to a ReplicaAgent on that
//     replica's leader, which submits to its engine and sends every token event back.
// Each agent also reports its replica's stats a few times a second, so /metrics, /health and
// `alem status` see every replica. Drain, abort and stop reach every replica.
//
// Messages carry token ids (never text) and are wiped after use. They travel between nodes:
// in confidential mode, run replicas inside one node or rely on the encrypted interconnect
// (docs/security.md).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/serving_engine.h"
#include "mpi/message_channel.h"

namespace alem {

class DataParallelRouter final : public EngineClient, public EngineControl {
 public:
  // `replica_leaders[d]` is the world rank of replica d's leader; replica 0 must be `local`'s,
  // on this rank. Starts the thread that receives the agents' messages.
  DataParallelRouter(ServingEngine& local, MessageChannel& channel,
                     std::vector<int> replica_leaders);
  ~DataParallelRouter() override;

  // EngineClient
  SubmitResult submit(EngineRequest request) override;
  void cancel(int64_t request_id) override;
  std::vector<ReplicaStats> stats() const override;
  bool healthy() const override;
  int max_model_len() const override;

  // EngineControl: every replica.
  void stop_accepting() override;
  void abort_all() override;
  void stop(int exit_code) override;
  int64_t in_flight() const override;

  // Stats older than this count a remote replica as not alive.
  static constexpr int kStatsTimeoutMs = 5000;

 private:
  struct Routed {
    int replica = 0;
    int64_t engine_id = -1;  // the id in that replica's engine (local) or agent (remote)
    EngineEventCallback on_event;
  };
  struct PendingAck {
    bool answered = false;
    SubmitStatus status = SubmitStatus::kAccepted;
  };
  void receive_loop();
  void deliver(int64_t router_id, const RequestEvent& event);
  int pick_replica() const;  // caller holds mutex_

  ServingEngine& local_;
  MessageChannel& channel_;
  std::vector<int> leaders_;
  mutable std::mutex mutex_;
  std::condition_variable acked_;
  int64_t next_id_ = 1;
  std::map<int64_t, Routed> routed_;
  std::map<int64_t, PendingAck> pending_acks_;
  std::vector<int64_t> outstanding_;  // per replica
  std::vector<ReplicaStats> remote_stats_;
  std::vector<std::chrono::steady_clock::time_point> remote_seen_;
  bool stopped_ = false;
  std::thread receiver_;
};

// Runs beside the engine loop on the leader of a replica d > 0: takes the router's commands,
// submits to the engine, sends events and stats back to the gateway.
class ReplicaAgent {
 public:
  ReplicaAgent(ServingEngine& engine, MessageChannel& channel, int gateway_rank, int replica);
  ~ReplicaAgent();
  // The exit code the gateway asked for with its stop (0 until then).
  int exit_code() const { return exit_code_.load(); }
  // Ends the agent's threads (call after the engine loop returned).
  void shutdown();

 private:
  void command_loop();
  void stats_loop();
  void send(const std::vector<uint8_t>& bytes);

  ServingEngine& engine_;
  MessageChannel& channel_;
  const int gateway_;
  const int replica_;
  std::mutex mutex_;
  std::map<int64_t, int64_t> engine_of_router_;  // router id -> engine id
  std::atomic<int> exit_code_{0};
  std::atomic<bool> running_{true};
  std::mutex stats_mutex_;
  std::condition_variable stats_wake_;
  std::thread commands_, stats_;
};

}  // namespace alem
