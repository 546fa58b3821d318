// `alem plan simulate`: the network in front of many providers, simulated (src/plan/
// network_sim.h): single-GPU workers and cluster providers whose step times come from the
// planner, COCOON's routing rule, failures and lease-based redelivery. Prints latency
// percentiles, traffic and utilisation per provider class, lost and redelivered requests
// (docs/scaling.md uses it).
#include <cstdio>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "plan/cost_model.h"
#include "plan/network_sim.h"

namespace alem::cli {
namespace {

struct SimulateOptions {
  std::string model = "qwen3-32b";
  std::string cluster;
  int workers = 1000;
  int worker_max_active = 60;
  int cluster_providers = 0;
  std::string cluster_layout = "1,1,1,8";
  int cluster_max_active = 60;
  plan::SimulationConfig sim;
  double mtbf_hours = 0;
  std::string json;
};

plan::ProviderClass make_class(const std::string& name, int count, const plan::Layout& layout,
                               int max_active, const plan::ModelShape& shape,
                               const plan::ClusterSpec& cluster,
                               const plan::SimulationConfig& sim) {
  plan::ProviderClass pc;
  pc.name = name;
  pc.count = count;
  pc.gpus = layout.world();
  pc.replicas = layout.dp;
  pc.max_active = max_active;
  const int per_replica = (max_active + layout.dp - 1) / layout.dp;
  for (int b = 1; b <= per_replica; ++b) {
    plan::Workload w;
    w.prompt_tokens = static_cast<int>(sim.prompt_mean);
    w.output_tokens = static_cast<int>(sim.output_mean);
    w.concurrency = b * layout.dp;
    w.max_batch = b;
    const plan::Prediction p = plan::predict(shape, cluster, w, layout);
    ALEM_CHECK(p.fits, name + " providers (" + layout.describe() + ") cannot run " + shape.name +
                           " at batch " + std::to_string(b) + ": " + p.why_not);
    pc.ttft_s.push_back(p.prefill.total);
    pc.itl_s.push_back(p.decode.total);
  }
  return pc;
}

void run_simulate(SimulateOptions o) {
  ALEM_CHECK(!o.cluster.empty(), "alem plan simulate: --cluster FILE.toml (the GPUs) is required");
  ALEM_CHECK(o.workers >= 0 && o.cluster_providers >= 0 && o.workers + o.cluster_providers > 0,
             "give --workers and/or --cluster-providers (at least one provider)");
  const plan::ModelShape shape = plan::named_shape(o.model);
  const plan::ClusterSpec cluster = plan::load_cluster_spec(o.cluster);
  o.sim.mtbf_s = o.mtbf_hours * 3600;
  if (o.workers > 0)
    o.sim.classes.push_back(
        make_class("worker", o.workers, {1, 1, 1, 1}, o.worker_max_active, shape, cluster, o.sim));
  if (o.cluster_providers > 0) {
    plan::Layout l;
    ALEM_CHECK(
        std::sscanf(o.cluster_layout.c_str(), "%d,%d,%d,%d", &l.tp, &l.pp, &l.ep, &l.dp) == 4,
        "--cluster-layout must be TP,PP,EP,DP");
    o.sim.classes.push_back(
        make_class("cluster", o.cluster_providers, l, o.cluster_max_active, shape, cluster, o.sim));
  }
  const plan::SimulationResult r = plan::simulate_network(o.sim);
  std::printf("# %s on %s; %.0f s of traffic at %.1f requests/s%s; simulated in %.2f s\n",
              shape.name.c_str(), cluster.name.c_str(), o.sim.duration_s, o.sim.arrival_rate,
              o.sim.burst_factor > 1 ? " (bursty)" : " (Poisson)", r.wall_seconds);
  std::printf(
      "requests: %.0f submitted, %.0f completed, %.0f unfinished at the end, %.0f "
      "redelivered, %.0f lost; %.0f provider failures\n",
      r.submitted, r.completed, r.unfinished, r.redelivered, r.lost, r.failures);
  std::printf(
      "latency (arrival to last token): p50 %.2f s, p95 %.2f s, p99 %.2f s; wait at the "
      "proxy p95 %.2f s\n",
      r.latency_p50, r.latency_p95, r.latency_p99, r.queue_wait_p95);
  std::printf("%-8s %9s %6s %11s %14s %12s %12s %12s %10s\n", "class", "providers", "GPUs",
              "requests", "req/s/provider", "req/s/GPU", "mean running", "slot util.", "mean s");
  for (const auto& c : r.classes) {
    std::printf("%-8s %9d %6d %11.0f %14.4f %12.4f %12.2f %12.2f %10.2f\n", c.name.c_str(),
                c.providers, c.gpus, c.requests, c.requests_per_provider_s, c.requests_per_gpu_s,
                c.mean_running, c.slot_utilisation, c.mean_request_s);
  }
  if (!o.json.empty()) {
    nlohmann::json j = {{"submitted", r.submitted},
                        {"completed", r.completed},
                        {"unfinished", r.unfinished},
                        {"redelivered", r.redelivered},
                        {"lost", r.lost},
                        {"failures", r.failures},
                        {"latency_p50_s", r.latency_p50},
                        {"latency_p95_s", r.latency_p95},
                        {"latency_p99_s", r.latency_p99},
                        {"wall_seconds", r.wall_seconds},
                        {"classes", nlohmann::json::array()}};
    for (const auto& c : r.classes) {
      j["classes"].push_back({{"name", c.name},
                              {"providers", c.providers},
                              {"gpus", c.gpus},
                              {"requests", c.requests},
                              {"requests_per_gpu_s", c.requests_per_gpu_s},
                              {"mean_running", c.mean_running},
                              {"slot_utilisation", c.slot_utilisation},
                              {"mean_request_s", c.mean_request_s}});
    }
    std::ofstream f(o.json, std::ios::trunc);
    ALEM_CHECK(f.good(), "cannot write " + o.json);
    f << j.dump(2) << "\n";
  }
}

}  // namespace

void add_plan_simulate_command(CLI::App& plan) {
  auto o = std::make_shared<SimulateOptions>();
  CLI::App* cmd = plan.add_subcommand(
      "simulate", "Discrete-event simulation of the network in front of many providers");
  cmd->add_option("--model,-m", o->model, "Named model shape")->capture_default_str();
  cmd->add_option("--cluster,-c", o->cluster, "GPU description (TOML) for the providers' steps");
  cmd->add_option("--workers", o->workers, "Single-GPU workers")->capture_default_str();
  cmd->add_option("--worker-max-active", o->worker_max_active, "Capacity a worker announces")
      ->capture_default_str();
  cmd->add_option("--cluster-providers", o->cluster_providers, "Cluster providers")
      ->capture_default_str();
  cmd->add_option("--cluster-layout", o->cluster_layout, "Their layout: TP,PP,EP,DP")
      ->capture_default_str();
  cmd->add_option("--cluster-max-active", o->cluster_max_active, "Capacity a cluster announces")
      ->capture_default_str();
  cmd->add_option("--rate", o->sim.arrival_rate, "Mean arrivals per second")->capture_default_str();
  cmd->add_option("--burst-factor", o->sim.burst_factor,
                  "Bursty arrivals: rate x this during bursts (1: Poisson)")
      ->capture_default_str();
  cmd->add_option("--burst-fraction", o->sim.burst_fraction, "Share of time in bursts")
      ->capture_default_str();
  cmd->add_option("--prompt-tokens", o->sim.prompt_mean, "Mean prompt length (log-normal)")
      ->capture_default_str();
  cmd->add_option("--output-tokens", o->sim.output_mean, "Mean output length (log-normal)")
      ->capture_default_str();
  cmd->add_option("--length-sigma", o->sim.length_sigma, "Log-normal sigma of both lengths")
      ->capture_default_str();
  cmd->add_option("--duration", o->sim.duration_s, "Simulated seconds")->capture_default_str();
  cmd->add_option("--mtbf-hours", o->mtbf_hours, "Mean hours between failures of a provider")
      ->capture_default_str();
  cmd->add_option("--repair-s", o->sim.repair_s, "Seconds a failed provider stays away")
      ->capture_default_str();
  cmd->add_option("--lease-s", o->sim.lease_s, "Lease: a failed provider's requests return after")
      ->capture_default_str();
  cmd->add_option("--max-attempts", o->sim.max_attempts, "Deliveries before a request is lost")
      ->capture_default_str();
  cmd->add_option("--seed", o->sim.seed, "Random seed")->capture_default_str();
  cmd->add_option("--json", o->json, "Also write the figures as JSON");
  cmd->callback([o] { run_simulate(*o); });
}

}  // namespace alem::cli
