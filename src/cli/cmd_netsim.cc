// `alem netsim`: the reference network on this machine. It listens as the network's queue
// (gRPC, TLS or plaintext when asked), waits for a provider (`alem serve --network-endpoint`)
// to register, sends it a load of sealed requests with faults injected on purpose, checks every
// answer, and writes a report. It exits 0 only when nothing was lost, nothing was billed twice,
// every answer verified and every injected fault was refused as expected; tests and the
// benchmark rely on that.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "network/netsim_client.h"
#include "network/netsim_server.h"

namespace alem::cli {

namespace {

struct NetsimOptions {
  netsim::ServerConfig server;
  std::string faults;
  uint64_t requests = 8;
  uint32_t concurrency = 4;
  uint32_t max_tokens = 8;
  std::string model;
  std::string requests_file;
  std::string report_file;
  double wait_provider_s = 120;
  double run_s = 300;
  double linger_s = 1;
  double settle_s = 0;
};

void run_netsim(NetsimOptions& o) {
  o.server.faults = netsim::parse_fault_spec(o.faults);
  ALEM_CHECK(o.requests > 0, "--requests must be at least 1");
  ALEM_CHECK(o.concurrency > 0, "--concurrency must be at least 1");
  ALEM_CHECK(o.wait_provider_s > 0 && o.run_s > 0, "--wait-provider-s and --run-s must be > 0");
  netsim::QueueServer server(o.server);
  log_info("listening", {{"port", std::to_string(server.port())},
                         {"tls", o.server.insecure ? "false" : "true"}});
  auto provider = server.wait_for_provider(o.wait_provider_s);
  ALEM_CHECK(provider, "no provider registered within " + log_number(o.wait_provider_s) + " s");
  if (o.settle_s > 0) {
    // Lets a benchmark warm the provider up (over HTTP) before the timed load starts.
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(o.settle_s * 1000)));
  }
  netsim::LoadConfig load_config;
  load_config.requests = o.requests;
  load_config.seed = o.server.seed;
  load_config.max_tokens = o.max_tokens;
  load_config.requests_file = o.requests_file;
  load_config.model = o.model.empty() ? provider->models.front() : o.model;
  netsim::LoadGenerator load(load_config, provider->sealing_public_key);
  server.run_load(load, o.concurrency, o.run_s, o.linger_s);
  nlohmann::json report = server.report();
  bool clean = server.clean();
  report["clean"] = clean;
  report["faults_spec"] = o.faults;
  report["concurrency"] = o.concurrency;
  server.stop();
  if (!o.report_file.empty()) {
    std::ofstream out(o.report_file);
    ALEM_CHECK(out, "cannot write the report " + o.report_file);
    out << report.dump(2) << "\n";
    ALEM_CHECK(out.good(), "cannot write the report " + o.report_file);
  }
  log_info("netsim report",
           {{"submitted", std::to_string(report["submitted"].get<uint64_t>())},
            {"completed", std::to_string(report["completed"].get<uint64_t>())},
            {"redelivered", std::to_string(report["redelivered"].get<uint64_t>())},
            {"failed", std::to_string(report["failed"].get<uint64_t>())},
            {"lost", std::to_string(report["lost"].get<uint64_t>())},
            {"billed_twice", std::to_string(report["billed_twice"].get<uint64_t>())},
            {"requests_per_s", log_number(report["requests_per_s"].get<double>())},
            {"tokens_per_s", log_number(report["tokens_per_s"].get<double>())},
            {"clean", clean ? "true" : "false"}});
  ALEM_CHECK(clean, "the run was not clean (lost " + report["lost"].dump() + ", billed twice " +
                        report["billed_twice"].dump() + ", failed " + report["failed"].dump() +
                        ", faults accepted " + report["faults_accepted"].dump() +
                        "); see the report");
}

}  // namespace

void add_netsim_command(CLI::App& app) {
  auto o = std::make_shared<NetsimOptions>();
  CLI::App* cmd = app.add_subcommand(
      "netsim", "Run the reference network: a lease queue and a load of sealed requests");
  cmd->add_option("--listen", o->server.listen, "Address to listen on (HOST:PORT; port 0 picks)")
      ->capture_default_str();
  cmd->add_option("--tls-cert", o->server.tls_cert_file, "TLS certificate (PEM)");
  cmd->add_option("--tls-key", o->server.tls_key_file, "TLS private key (PEM)");
  cmd->add_flag("--insecure", o->server.insecure, "Plaintext gRPC (tests on 127.0.0.1 only)");
  cmd->add_option("--allow-mrtd", o->server.allowed_mrtd_hex,
                  "MRTD (hex) a TDX rank of a cluster bundle may have (repeatable)");
  cmd->add_flag("--accept-software-evidence", o->server.accept_software_evidence,
                "Accept providers whose evidence is a software signature (no TDX)");
  cmd->add_option("--requests", o->requests, "Requests to send")->capture_default_str();
  cmd->add_option("--concurrency", o->concurrency, "Requests unfinished at once")
      ->capture_default_str();
  cmd->add_option("--seed", o->server.seed, "Seed of the fault draws")->capture_default_str();
  cmd->add_option(
      "--faults", o->faults,
      "Faults, e.g. drop=0.05,dup=0.05,corrupt=0.02,delay_ms=50 (docs/network-simulator.md)");
  cmd->add_option("--lease-ms", o->server.queue.lease_ms, "Lease deadline after delivery")
      ->capture_default_str();
  cmd->add_option("--max-attempts", o->server.queue.max_attempts,
                  "Deliveries of one request before it fails")
      ->capture_default_str();
  cmd->add_option("--heartbeat-ms", o->server.heartbeat_interval_ms, "Heartbeat interval")
      ->capture_default_str();
  cmd->add_option("--heartbeat-timeout-ms", o->server.heartbeat_timeout_ms,
                  "Drop a provider stream silent this long")
      ->capture_default_str();
  cmd->add_option("--model", o->model, "Model name in the requests (default: the provider's)");
  cmd->add_option("--max-tokens", o->max_tokens, "max_tokens of the built-in request mix")
      ->capture_default_str();
  cmd->add_option("--requests-file", o->requests_file,
                  "JSON lines {endpoint, body, expect_text?} instead of the built-in mix");
  cmd->add_option("--report", o->report_file, "Write the JSON report here");
  cmd->add_option("--wait-provider-s", o->wait_provider_s, "How long to wait for a provider")
      ->capture_default_str();
  cmd->add_option("--run-s", o->run_s, "Longest time the load may take")->capture_default_str();
  cmd->add_option("--linger-s", o->linger_s,
                  "Time to keep listening after the load, for late answers")
      ->capture_default_str();
  cmd->add_option("--settle-s", o->settle_s,
                  "Wait this long after the provider registers before the load starts")
      ->capture_default_str();
  cmd->callback([o] { run_netsim(*o); });
}

}  // namespace alem::cli
