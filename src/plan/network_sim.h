// A discrete-event simulation of the network in front of many providers (`alem plan simulate`):
// requests arrive (Poisson, or bursty: a two-state modulated Poisson process), with prompt and
// output lengths drawn from log-normal distributions; COCOON's proxy routes each to the eligible
// provider (running < its announced max_active, alive) with the smallest running x average
// request time; a provider's request time comes from the planner's TTFT and ITL at its current
// batch; providers fail and recover, and the requests they held come back after their lease
// expires (alem's queue rules: redelivery up to max_attempts, then lost). Deterministic for a
// seed. Figures: latency percentiles, utilisation and traffic per provider class, lost and
// redelivered requests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace alem::plan {

struct ProviderClass {
  std::string name;  // "worker", "cluster"
  int count = 0;
  int gpus = 1;         // GPUs of one provider (for per-GPU figures)
  int replicas = 1;     // dp replicas inside one provider (requests spread over them)
  int max_active = 60;  // the capacity it announces
  // Per-replica batch b (index b-1, b = 1..max_active): seconds to first token at the mean
  // prompt, and seconds per further token.
  std::vector<double> ttft_s, itl_s;
};

struct SimulationConfig {
  std::vector<ProviderClass> classes;
  double arrival_rate = 100;    // requests per second (mean)
  double burst_factor = 1;      // >1: bursty; rate x factor in bursts, lower between them
  double burst_fraction = 0.2;  // share of time in bursts
  double burst_mean_s = 30;     // mean burst length
  double prompt_mean = 512, output_mean = 256, length_sigma = 0.6;  // log-normal spread
  double duration_s = 3600;
  double mtbf_s = 0;  // mean time between failures of one provider (0: none)
  double repair_s = 300;
  double lease_s = 30;  // a failed provider's requests return after this
  int max_attempts = 12;
  uint64_t seed = 1;
};

struct ClassResult {
  std::string name;
  int providers = 0, gpus = 0;
  double requests = 0;  // routed to the class (deliveries)
  double requests_per_provider_s = 0;
  double requests_per_gpu_s = 0;
  double mean_running = 0;      // time-averaged running requests per provider
  double slot_utilisation = 0;  // mean_running / max_active
  double mean_request_s = 0;
};

struct SimulationResult {
  double submitted = 0, completed = 0, lost = 0, redelivered = 0, unfinished = 0;
  double latency_p50 = 0, latency_p95 = 0, latency_p99 = 0;  // arrival to last token
  double queue_wait_p95 = 0;                                 // at the proxy, none eligible
  double failures = 0;
  double wall_seconds = 0;  // what the simulation itself took
  std::vector<ClassResult> classes;
};

SimulationResult simulate_network(const SimulationConfig& config);

}  // namespace alem::plan
