// Prometheus metrics of the gateway, written by hand in the text exposition format (version
// 0.0.4) so the server needs no metrics library. Counters and histograms are fed by the HTTP
// side as requests progress; gauges that describe the engine (running/waiting requests, KV
// blocks, preemptions, prefix-cache lookups) are read from the engine's stats snapshot at
// scrape time. Every per-replica series carries a `replica` label (the data-parallel replica
// that served it) and, once set_model_name() is called (alem serve always does), `model_name`.
// The names follow what vLLM's Grafana dashboards read, under alem_ (docs/serving.md), and the
// text passes `promtool check metrics` (tests/unit/test_metrics.cc).
//
// Thread-safe: HTTP threads record, the scrape thread renders.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace alem {
struct ReplicaStats;  // engine/serving_engine.h
struct RequestEvent;  // engine/scheduler.h
}  // namespace alem

namespace alem::serve {

// A fixed-bucket histogram (cumulative counts rendered as Prometheus _bucket/_sum/_count).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  // Appends the series lines for `name` with the given label text (e.g. `replica="0"`).
  void render(const std::string& name, const std::string& labels, std::string& out) const;
  uint64_t count() const;

 private:
  mutable std::mutex mutex_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// What the engine reports about one replica at scrape time.
struct ReplicaGauges {
  int replica = 0;
  int64_t running_requests = 0;
  int64_t waiting_requests = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_cached = 0;
  int64_t kv_blocks_total = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;                     // counters since start
  int64_t prefix_cache_queries = 0;            // tokens looked up in the prefix cache
  int64_t prefix_cache_hits = 0;               // of those, found there
  std::vector<int64_t> moe_tokens_per_expert;  // empty for dense models
  int moe_ep_size = 1;
};

// What the engine says about one sequence when it finishes (any finish reason). A phase the
// sequence never reached is negative and not observed.
struct FinishedRequestFigures {
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  double queue_seconds = -1;    // queued in the scheduler until first admitted
  double prefill_seconds = -1;  // first admitted until its first token
  double decode_seconds = -1;   // first token until finished
};

// The engine's snapshot of one replica, as the metrics read it.
ReplicaGauges replica_gauges(const ReplicaStats& stats);
// The figures of a finished engine event (its usage and timings).
FinishedRequestFigures finished_request_figures(const RequestEvent& finished_event);

class ServingMetrics {
 public:
  explicit ServingMetrics(int num_replicas = 1);

  void add_prompt_tokens(int replica, int64_t tokens);
  void add_generation_tokens(int replica, int64_t tokens);
  void observe_time_to_first_token(int replica, double seconds);
  void observe_inter_token_latency(int replica, double seconds);
  void observe_request_latency(int replica, double seconds);
  // Per-sequence histograms: prompt and generation length, queue, prefill and decode time.
  void observe_finished_request(int replica, const FinishedRequestFigures& figures);
  // The served model's name, shown as the model_name label of every per-replica series.
  void set_model_name(const std::string& name);
  // A request that ran to an end (finish_reason "stop" or "length").
  void count_success(int replica, const std::string& finish_reason);
  // A request that ended otherwise: "client_disconnect", "aborted", "error".
  void count_failure(int replica, const std::string& reason);
  // A request turned away before it reached the engine: "invalid" (4xx), "overloaded" (429),
  // "unavailable" (503), "too_large" (413).
  void count_rejected(const std::string& reason);

  // The Slurm job this server runs in, shown as alem_job_info{job_id,node_list} 1 and
  // alem_job_restarts (SLURM_RESTART_COUNT). Empty job id: not rendered.
  void set_job(const std::string& job_id, const std::string& node_list, int restart_count);
  // Another part of the server (the network provider: alem_network_*) adds its own series:
  // `source` returns Prometheus text and is called at the end of every render. Thread-safe.
  void add_source(std::function<std::string()> source);
  // The whole exposition text.
  std::string render(const std::vector<ReplicaGauges>& gauges) const;
  // Generation tokens per second over the last few seconds (for the tokens/s gauge and tests).
  double generation_tokens_per_second(int replica) const;

 private:
  using Clock = std::chrono::steady_clock;
  static constexpr int kRateWindowSeconds = 10;
  struct Replica {
    Replica();
    uint64_t prompt_tokens = 0;
    uint64_t generation_tokens = 0;
    std::map<std::string, uint64_t> successes;  // by finish reason
    std::map<std::string, uint64_t> failures;   // by reason
    Histogram ttft, itl, latency;
    Histogram queue_time, prefill_time, decode_time;  // seconds, per sequence
    Histogram prompt_length, generation_length;       // tokens, per sequence
    // Generation tokens per whole second, a ring indexed by second % size.
    std::array<uint64_t, kRateWindowSeconds + 1> per_second{};
    std::array<int64_t, kRateWindowSeconds + 1> second_of_slot{};
  };
  Replica& replica(int index);
  const Replica& replica(int index) const;
  int64_t now_second() const;

  mutable std::mutex mutex_;
  // `replica="i"` plus `,model_name="..."` when a model name is set.
  std::string labels(int replica) const;
  void render_moe_load(const std::vector<ReplicaGauges>& gauges, std::string& out) const;

  std::string job_id_, node_list_;
  std::string model_name_;
  int restart_count_ = 0;
  Clock::time_point start_ = Clock::now();
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::map<std::string, uint64_t> rejected_;
  mutable std::mutex sources_mutex_;
  std::vector<std::function<std::string()>> sources_;
};

}  // namespace alem::serve
