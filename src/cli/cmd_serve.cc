// `alem serve`: the long-lived server of a Slurm job. Every rank loads its shard; world rank 0
// is the gateway (the OpenAI-compatible HTTP API of src/serve) and the leader of replica 0, whose
// engine loop (engine/serving_engine.h) schedules and broadcasts every step; the other ranks of
// the replica follow the leader's steps.
//
// Threads on the gateway: the main thread runs the engine loop (so MPI is only ever called from
// the thread that started it), the HTTP server's I/O threads answer HTTP, and a control thread
// turns signals into a drain or a stop:
//   SIGUSR1, SIGTERM  drain: new requests get 503, /health 503, network leases are handed back,
//                     requests in flight finish (or are aborted after drain_seconds). Then every
//                     rank exits: after SIGUSR1 (Slurm's warning before the time limit or a
//                     preemption) with code 75, which the Slurm script takes as "requeue me";
//                     after SIGTERM (the job is being ended) with code 0.
//   SIGINT            stop: abort what is in flight, exit 0.
// Followers note signals but act only on the leader's stop message, so the replica stays in step.
//
// Hang detection (docs/operations.md): once every rank has loaded, each arms the collective
// timeout (--collective-timeout, 20 s by default) and the leader sends a heartbeat step every
// --heartbeat-interval seconds when idle, so a stopped or silent rank ends the job with a named
// MPI_Abort, and /health and /v1/models turn 503 within seconds of the engine's last progress.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <ctime>
#include <thread>

#include <unistd.h>

#include "cli/commands.h"
#include "cli/confidential_start.h"
#include "cli/progress.h"
#include "cli/runtime.h"
#include "confidential/memory_hygiene.h"
#include "confidential/sandbox.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/constrained/token_constraint.h"
#include "engine/dp_router.h"
#include "engine/serving_engine.h"
#include "model/chat_template.h"
#include "model/model_store.h"
#include "model/tokenizer.h"
#include "mpi/failure_watchdog.h"
#include "mpi/message_channel.h"
#include "mpi/mpi_context.h"
#include "mpi/nccl_process_group.h"
#include "mpi/secure_message_channel.h"
#include "network/evidence.h"
#include "network/lease_handler.h"
#include "network/protocol.h"
#include "network/provider_client.h"
#include "network/provider_keys.h"
#include "network/usage_journal.h"
#include "serve/api_key.h"
#include "serve/http_server.h"
#include "serve/job_status.h"
#include "serve/serve_config.h"

namespace alem::cli {
namespace {

constexpr int kExitDrained = 75;  // "drained on request, requeue me" (slurm/alem-serve.sbatch)

std::atomic<int> g_last_signal{0};

extern "C" void remember_signal(int signal_number) {
  g_last_signal.store(signal_number);
}

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = remember_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int s : {SIGUSR1, SIGTERM, SIGINT}) sigaction(s, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hung up must not end the server
}

struct ServeOptions {
  std::string model;
  ConfidentialFlags confidential;  // --confidential, --encrypt-interconnect
  std::string host = "127.0.0.1";
  int port = 8000;
  int metrics_port = 0;
  std::string served_model_name;
  std::string chat_template_file;  // --chat-template: replaces the store's template
  ParallelOptions parallel;
  int max_num_seqs = 64;
  int max_batch_tokens = 2048;
  int max_waiting = 256;
  int block_size = 16;
  int num_kv_blocks = 0;
  int kv_cache_mb = 1024;
  std::string kv_cache_dtype = "bf16";
  int max_model_len = 0;
  std::string backend = "cpu";
  std::string config_file;
  int drain_seconds = 30;
  // Hang detection: a blocking call on a process group that waits longer ends the job (0: off;
  // unset: $ALEM_COLLECTIVE_TIMEOUT_S, else 20, so a node lost during a busy step ends the job
  // within 30 s). The idle leader's heartbeat period.
  double collective_timeout_s = 20;
  double heartbeat_interval_s = 1;
  int http_threads = 8;
  size_t max_body_bytes = size_t{1} << 20;
  // Authentication (docs/operations.md): the key from --api-key-file, else --api-key, else
  // $ALEM_API_KEY_FILE, else $ALEM_API_KEY; none: the API is open (bind loopback then).
  std::string api_key;
  std::string api_key_file;
  std::vector<std::string> api_key_protects;  // "health", "metrics": also behind the key
  int http_header_timeout = 10;
  int http_body_timeout = 30;
  bool allow_core_dumps = false;  // memory hygiene escape hatch (confidential/memory_hygiene.h)
  bool sandbox = false;           // confidential/sandbox.h
  // The network queue (docs/protocol.md): endpoints the provider client dials.
  std::vector<std::string> network_endpoints;
  std::string network_ca;
  bool network_insecure = false;
  std::string provider_key = "alem-provider.key";
  std::string usage_journal = "alem-usage.journal";
  std::string attestation = "off";
  int network_credits = 0;   // 0: max_num_seqs per replica, summed over replicas
  std::string gateway_file;  // where `alem status --job` finds this job (default under Slurm)
};

// Flags given on the command line win over the config file.
void apply_config_file(ServeOptions& o, const CLI::App& cmd) {
  if (o.config_file.empty()) return;
  const serve::ServeConfigFile c = serve::load_serve_config(o.config_file);
  auto given = [&](const char* flag) { return cmd.count(flag) > 0; };
  if (c.host && !given("--host")) o.host = *c.host;
  if (c.port && !given("--port")) o.port = *c.port;
  if (c.metrics_port && !given("--metrics-port")) o.metrics_port = *c.metrics_port;
  if (c.max_batch_tokens && !given("--max-batch-tokens")) o.max_batch_tokens = *c.max_batch_tokens;
  if (c.max_concurrent_requests && !given("--max-num-seqs")) {
    o.max_num_seqs = *c.max_concurrent_requests;
  }
  if (c.max_context_tokens && !given("--max-model-len")) o.max_model_len = *c.max_context_tokens;
  if (c.drain_seconds && !given("--drain-seconds")) o.drain_seconds = *c.drain_seconds;
  if (!c.queue_endpoints.empty() && !given("--network-endpoint")) {
    o.network_endpoints = c.queue_endpoints;
  }
  if (c.queue_ca && !given("--network-ca")) o.network_ca = *c.queue_ca;
  if (c.provider_key && !given("--provider-key")) o.provider_key = *c.provider_key;
  if (c.usage_journal && !given("--usage-journal")) o.usage_journal = *c.usage_journal;
}

LogFields job_fields() {
  LogFields fields;
  for (const char* var :
       {"SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var)) fields.emplace_back(var, v);
  }
  return fields;
}

// The API key, from the first of: --api-key-file, --api-key, $ALEM_API_KEY_FILE, $ALEM_API_KEY.
// Empty: no authentication.
std::string resolve_api_key(const ServeOptions& o) {
  if (!o.api_key_file.empty()) return serve::read_api_key_file(o.api_key_file);
  if (!o.api_key.empty()) return o.api_key;
  if (const char* file = std::getenv("ALEM_API_KEY_FILE"); file && *file) {
    return serve::read_api_key_file(file);
  }
  if (const char* key = std::getenv("ALEM_API_KEY"); key && *key) return key;
  return {};
}

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "::1" || host == "localhost" || host.rfind("127.", 0) == 0;
}

// KV blocks that fit in `budget_mb` on this rank: K and V of `kv_dtype` for this rank's layers
// and KV heads.
int kv_blocks_for_budget(const ModelConfig& config, const ParallelContext& ctx, int block_size,
                         int budget_mb, DType kv_dtype) {
  const int tp = ctx.layout.tp_size(), pp = ctx.layout.pp_size();
  const int64_t kv_heads = (config.num_kv_heads + tp - 1) / tp;
  const int64_t layers = (config.num_layers + pp - 1) / pp;
  const int64_t block_bytes = 2 * layers * kv_heads * config.head_dim *
                              static_cast<int64_t>(block_size) *
                              static_cast<int64_t>(dtype_size(kv_dtype));
  return static_cast<int>(static_cast<int64_t>(budget_mb) * 1024 * 1024 / block_bytes);
}

// The gateway's control thread: signals -> drain or stop. Returns when the engine loop is told
// to stop; `drained_code` is then the exit code of a drain (75 after SIGUSR1: requeue; 0 after
// SIGTERM: end), or stays -1 when the server stopped without a drain.
void control_loop(EngineControl& engine, serve::HttpServer& server,
                  network::ProviderClient* provider, int drain_seconds,
                  const std::atomic<bool>& engine_done, std::atomic<int>& drained_code) {
  using Clock = std::chrono::steady_clock;
  bool draining = false;
  int drain_exit_code = kExitDrained;
  Clock::time_point deadline{};
  bool aborted = false;
  Clock::time_point abort_deadline{};
  while (!engine_done.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const int sig = g_last_signal.exchange(0);
    if (sig == SIGINT) {
      log_info("SIGINT: stopping", {{"in_flight", std::to_string(engine.in_flight())}});
      server.set_draining(true);
      if (provider) provider->drain();
      engine.stop(0);
      return;
    }
    if ((sig == SIGUSR1 || sig == SIGTERM) && !draining) {
      draining = true;
      drain_exit_code = sig == SIGTERM ? 0 : kExitDrained;
      deadline = Clock::now() + std::chrono::seconds(drain_seconds);
      server.set_draining(true);
      if (provider) provider->drain();
      engine.stop_accepting();
      log_info(sig == SIGUSR1 ? "SIGUSR1: draining" : "SIGTERM: draining",
               {{"in_flight", std::to_string(engine.in_flight())},
                {"drain_seconds", std::to_string(drain_seconds)}});
    }
    if (!draining) continue;
    if (engine.in_flight() == 0 && server.active_requests() == 0 &&
        (!provider || provider->open_leases() == 0)) {
      log_info("drained: every request finished");
      drained_code = drain_exit_code;
      engine.stop(drain_exit_code);
      return;
    }
    if (!aborted && Clock::now() >= deadline) {
      log_warn("drain time is up: aborting what is left",
               {{"in_flight", std::to_string(engine.in_flight())}});
      engine.abort_all();
      aborted = true;
      abort_deadline = Clock::now() + std::chrono::seconds(5);
    }
    if (aborted && Clock::now() >= abort_deadline) {  // streams that never read their end
      drained_code = drain_exit_code;
      engine.stop(drain_exit_code);
      return;
    }
  }
}

// Tells GET /v1/status and /metrics about the job, and writes the gateway file that `alem
// status --job ID` reads (under Slurm, or when --gateway-file is given).
void publish_job_status(const ServeOptions& o, const ParallelContext& ctx,
                        const ModelStoreReader& store, const std::string& served_name,
                        double load_seconds, serve::HttpServer& server,
                        serve::ServingMetrics& metrics) {
  serve::JobInfo job;
  serve::read_slurm_environment(job);
  job.model = served_name;
  job.model_digest = store.model_digest();
  job.tp = ctx.layout.tp_size();
  job.pp = ctx.layout.pp_size();
  job.dp = ctx.layout.dp_size();
  const std::vector<std::string> rank_hosts = hosts(ctx);
  for (int r = 0; r < ctx.layout.world_size(); ++r) {
    const ParallelCoords c = ctx.layout.coords(r);
    job.ranks.push_back(
        {r, c.dp, c.pp, c.tp, r < static_cast<int>(rank_hosts.size()) ? rank_hosts[r] : ""});
  }
  job.started_unix = static_cast<int64_t>(std::time(nullptr));
  job.load_seconds = load_seconds;
  metrics.set_job(job.job_id, job.node_list, job.restart_count);
  const std::string job_id = job.job_id;
  server.set_job_info(std::move(job));

  std::string path = o.gateway_file;
  if (path.empty() && !job_id.empty()) path = serve::default_gateway_file(job_id);
  if (path.empty()) return;
  std::string host = o.host;
  if (host == "0.0.0.0" || host == "::" || host.empty()) {
    char name[256] = {};
    gethostname(name, sizeof name - 1);
    host = name;
  }
  const std::string url = "http://" + host + ":" + std::to_string(server.port());
  try {
    serve::write_gateway_file(path, url, job_id);
    log_info("gateway file written", {{"path", path}, {"url", url}});
  } catch (const std::exception& e) {
    log_warn("cannot write the gateway file; alem status needs --url", {{"why", e.what()}});
  }
}

// The provider's key file and usage journal, opened before the model loads so a bad file fails
// the job at once. Logs the public keys and the journal's replay, never a secret.
void open_network_state(const ServeOptions& o, std::unique_ptr<network::ProviderKeys>& keys,
                        std::unique_ptr<network::UsageJournal>& journal) {
  if (o.network_insecure) {
    log_warn("--network-insecure: the network queue is dialled in plaintext (tests only)");
  } else if (o.network_ca.empty()) {
    log_warn(
        "no --network-ca: the queue's TLS certificate is checked against gRPC's default "
        "roots");
  }
  bool created = false;
  keys = std::make_unique<network::ProviderKeys>(
      network::ProviderKeys::load_or_create(o.provider_key, &created));
  const auto& id = keys->identity_public_key();
  const auto& sealing = keys->sealing().public_key();
  log_info(created ? "provider key created" : "provider key loaded",
           {{"path", o.provider_key},
            {"identity", network::hex(std::string(id.begin(), id.end()))},
            {"sealing", network::hex(std::string(sealing.begin(), sealing.end()))}});
  journal =
      std::make_unique<network::UsageJournal>(o.usage_journal, network::kJournalLockWaitOnStart);
  const network::JournalReplay& r = journal->replay();
  log_info("usage journal open", {{"path", o.usage_journal},
                                  {"records", std::to_string(r.records)},
                                  {"finished", std::to_string(r.finishes)},
                                  {"truncated_bytes", std::to_string(r.truncated_bytes)}});
}

// The served model as Register announces it: name, SHA-256 digest (from the store's hex) and
// context length.
network::v1::ModelInfo network_model_info(const std::string& name, const std::string& hex_digest,
                                          int max_context) {
  network::v1::ModelInfo info;
  info.set_name(name);
  std::string digest;
  for (size_t i = 0; i + 1 < hex_digest.size(); i += 2) {
    digest.push_back(static_cast<char>(std::stoi(hex_digest.substr(i, 2), nullptr, 16)));
  }
  info.set_model_digest(digest);
  info.set_max_context(static_cast<uint32_t>(max_context));
  return info;
}

// The collective timeout in force: the flag when given, else the environment, else the default;
// checked against the heartbeat (an idle follower waits one heartbeat interval for its next
// message, so the timeout must leave room for several).
double resolve_collective_timeout(const ServeOptions& o, const CLI::App& cmd) {
  const double timeout = cmd.count("--collective-timeout") > 0
                             ? o.collective_timeout_s
                             : collective_timeout_from_environment(o.collective_timeout_s);
  ALEM_CHECK(timeout >= 0 && o.heartbeat_interval_s >= 0,
             "--collective-timeout and --heartbeat-interval must be >= 0");
  ALEM_CHECK(timeout == 0 || (o.heartbeat_interval_s > 0 && timeout >= 4 * o.heartbeat_interval_s),
             "--collective-timeout " + log_number(timeout) +
                 " s needs heartbeats at least 4 times as often (--heartbeat-interval " +
                 log_number(o.heartbeat_interval_s) +
                 " s): idle ranks would otherwise be taken for stuck ones; or pass "
                 "--collective-timeout 0");
  return timeout;
}

int serve(ServeOptions& o, const CLI::App& cmd) {
  apply_config_file(o, cmd);
  const double collective_timeout = resolve_collective_timeout(o, cmd);
  // Before MPI starts: no core dumps, not dumpable (and MPI told to copy accordingly).
  confidential::harden_process({.allow_core_dumps = o.allow_core_dumps});
  ParallelContext ctx = make_context(o.parallel);
  try {
    install_signal_handlers();
    // Replicas talk to the gateway over their own channel (collective: every rank makes it).
    std::unique_ptr<MessageChannel> channel;
    if (ctx.layout.dp_size() > 1) channel = make_mpi_channel();
    const bool gateway = ctx.world_rank == 0;
    ModelStoreReader store(o.model);
    // The provider's key file and journal are opened before the sandbox, whose private /tmp
    // would hide them (the journal is written through its open descriptor).
    std::unique_ptr<network::ProviderKeys> network_keys;
    std::unique_ptr<network::UsageJournal> usage_journal;
    if (gateway && !o.network_endpoints.empty()) {
      open_network_state(o, network_keys, usage_journal);
    }
    // The gateway renders chat prompts with the store's template, or the one given instead.
    auto chat_data = std::make_unique<TokenizerData>(store.tokenizer());
    if (gateway && !o.chat_template_file.empty()) {
      chat_data->chat_template = read_chat_template_file(o.chat_template_file);
    }
    // MPI is up, the store open, no threads yet. `--confidential sandbox` implies it.
    if (o.sandbox || o.confidential.mode == "sandbox") confidential::enter_sandbox();
    const ModelConfig& config = store.config();
    const std::string served_name = o.served_model_name.empty() ? config.name : o.served_model_name;
    ALEM_CHECK(!served_name.empty(), "the model has no name; pass --served-model-name");
    if (gateway) {
      LogFields fields = job_fields();
      fields.insert(fields.begin(), {{"model", served_name},
                                     {"layout", ctx.layout.describe()},
                                     {"bind_host", o.host},
                                     {"port", std::to_string(o.port)}});
      log_info("serve starting", fields);
    }

    // The gateway answers 503 while the ranks load their shards.
    std::unique_ptr<Tokenizer> tokenizer;
    serve::ServedModel served;
    std::unique_ptr<serve::ServingMetrics> metrics;
    std::unique_ptr<serve::HttpServer> server;
    if (gateway) {
      tokenizer = std::make_unique<Tokenizer>(store.tokenizer());
      served.name = served_name;
      served.tokenizer = tokenizer.get();
      served.tokenizer_data = chat_data.get();
      check_chat_template(*chat_data);  // an unparsable template fails here, not per request
      served.created = static_cast<int64_t>(std::time(nullptr));
      served.im_end_id = tokenizer->token_id("<|im_end|>");
      served.reasoning = serve::ReasoningTokens::find(*tokenizer);  // Qwen3's <think> markers
      metrics = std::make_unique<serve::ServingMetrics>(ctx.layout.dp_size());
      metrics->set_model_name(served_name);  // the model_name label of every series
      serve::HttpServerOptions http;
      http.host = o.host;
      http.port = o.port;
      http.metrics_port = o.metrics_port;
      http.threads = o.http_threads;
      http.max_body_bytes = o.max_body_bytes;
      http.api_key = resolve_api_key(o);
      for (const std::string& what : o.api_key_protects) {
        if (what == "health") http.api_key_protects_health = true;
        if (what == "metrics") http.api_key_protects_metrics = true;
      }
      http.header_timeout = std::chrono::seconds(o.http_header_timeout);
      http.body_timeout = std::chrono::seconds(o.http_body_timeout);
      if (http.api_key.empty() && !is_loopback(o.host)) {
        log_warn("the HTTP API is open to anyone who can reach " + o.host +
                 "; set ALEM_API_KEY or --api-key-file (docs/operations.md)");
      }
      log_info("http authentication", {{"api_key", http.api_key.empty() ? "off" : "on"}});
      server = std::make_unique<serve::HttpServer>(served, *metrics, http);
      server->bind();
      server->start();
      log_info("listening", {{"bind_host", o.host},
                             {"port", std::to_string(server->port())},
                             {"metrics_port", std::to_string(server->metrics_port())}});
    }

    // Attest every rank, verify the cluster bundle, agree keys, encrypt traffic between hosts
    // (collective). The gateway binds the network provider's sealing key when it has one.
    const auto confidential_session = start_confidential(
        ctx, o.confidential, store,
        gateway && network_keys ? &network_keys->sealing().public_key() : nullptr);
    // The data-parallel router's channel carries requests and their tokens between replica
    // leaders: between hosts it is sealed with the session's keys like every group.
    if (channel && confidential_session && confidential_session->keys &&
        confidential_session->peers_keyed > 0) {
      SecureGroupOptions channel_options;
      channel_options.treat_every_rank_as_own_node = o.confidential.encrypt == "always";
      channel =
          make_secure_channel(std::move(channel), ctx, confidential_session->keys, channel_options);
      if (auto* sealed = dynamic_cast<SecureMessageChannel*>(channel.get())) {
        int peers = 0;
        for (int r = 0; r < sealed->size(); ++r) peers += sealed->encrypts_to(r) ? 1 : 0;
        log_info("data-parallel channel encrypted", {{"peers", std::to_string(peers)}});
      }
    }

    auto backend = make_backend(o.backend);
    // GPU tensors go between tensor-parallel ranks over NCCL where this build has it, and never
    // between hosts with the interconnect encrypted (they are staged through host memory then).
    if (backend->memory_space() == MemorySpace::kDevice) {
      std::string no_nccl;
      if (!attach_device_groups(ctx, &no_nccl) && !no_nccl.empty() && ctx.world_rank == 0) {
        log_warn(no_nccl);
      }
    }
    EngineOptions engine_options;
    engine_options.block_size = o.block_size;
    engine_options.load_progress = model_load_progress(ctx.world_rank == 0);
    engine_options.kv_cache_dtype = parse_dtype(o.kv_cache_dtype);
    check_kv_cache_dtype(engine_options.kv_cache_dtype);
    engine_options.max_model_len = o.max_model_len > 0
                                       ? std::min(o.max_model_len, config.context_limit())
                                       : config.context_limit();
    engine_options.num_kv_blocks =
        o.num_kv_blocks > 0 ? o.num_kv_blocks
                            : kv_blocks_for_budget(config, ctx, o.block_size, o.kv_cache_mb,
                                                   engine_options.kv_cache_dtype);
    const int blocks_for_one = (engine_options.max_model_len + o.block_size - 1) / o.block_size;
    ALEM_CHECK(engine_options.num_kv_blocks >= blocks_for_one,
               "the KV cache of " + std::to_string(engine_options.num_kv_blocks) +
                   " blocks cannot hold one sequence of max_model_len " +
                   std::to_string(engine_options.max_model_len) + " (" +
                   std::to_string(blocks_for_one) +
                   " blocks); raise --kv-cache-mb or --num-kv-blocks, or lower --max-model-len");
    ShardedTransformer model(store, ctx, *backend, engine_options);
    // Every rank: how long its shard took and how much of the store it read (start-up figures
    // per rank and host; docs/operations.md).
    log_info("shard loaded", {{"load_s", log_number(model.load_seconds())},
                              {"bytes_read", std::to_string(store.bytes_read())}});
    confidential::log_sensitive_memory("kv cache");

    ServingOptions serving;
    serving.max_num_seqs = o.max_num_seqs;
    serving.max_batch_tokens = std::max(o.max_batch_tokens, o.max_num_seqs);
    serving.max_waiting = o.max_waiting;
    serving.replica = ctx.coords.dp;
    serving.heartbeat_interval_s = o.heartbeat_interval_s;
    // Idle health: three heartbeats missed (at least 3 s).
    serving.liveness.idle_stale_s = std::max(3.0, 3 * o.heartbeat_interval_s);
    serving.eos_token_ids = config.eos_token_ids;  // as `alem generate` stops
    if (store.tokenizer().eos_token_id >= 0) {
      serving.eos_token_ids.push_back(store.tokenizer().eos_token_id);
    }
    {  // the bytes of every token, for response_format (every last-stage rank masks)
      const Tokenizer token_source(store.tokenizer());
      serving.token_table = constrained::make_token_table(token_source);
    }
    ServingEngine engine(model, ctx, serving);
    ctx.world->barrier();  // every rank has loaded its shard
    // From here no rank legitimately waits long for another (heartbeats): arm the watchdog.
    if (ctx.watchdog && collective_timeout > 0) ctx.watchdog->arm(collective_timeout);
    if (gateway && ctx.world->size() > 1) {
      log_info("hang detection",
               {{"collective_timeout_s", log_number(ctx.watchdog ? ctx.watchdog->timeout_s() : 0)},
                {"heartbeat_interval_s", log_number(o.heartbeat_interval_s)}});
    }

    if (!engine.is_leader()) return engine.run_follower_loop();
    if (!gateway) {  // the leader of replica d > 0: the gateway's router sends it work
      ReplicaAgent agent(engine, *channel, /*gateway_rank=*/0, ctx.coords.dp);
      engine.run_leader_loop();
      agent.shutdown();
      return agent.exit_code();
    }

    // One replica: the engine itself; several: the router in front of all of them.
    std::unique_ptr<DataParallelRouter> router;
    EngineClient* client = &engine;
    EngineControl* engine_control = &engine;
    if (channel) {
      std::vector<int> leaders;
      for (int d = 0; d < ctx.layout.dp_size(); ++d)
        leaders.push_back(ctx.layout.world_rank({d, 0, 0}));
      router = std::make_unique<DataParallelRouter>(engine, *channel, leaders);
      client = router.get();
      engine_control = router.get();
    }
    server->attach_engine(client);
    std::atomic<bool> engine_done{false};
    std::atomic<int> drained_code{-1};
    // The network queue beside the HTTP API, when endpoints are given.
    std::unique_ptr<network::LeaseHandler> lease_handler;
    std::unique_ptr<network::ProviderClient> provider;
    if (network_keys) {
      lease_handler = std::make_unique<network::LeaseHandler>(
          network_keys->sealing(), *usage_journal, served, *client, *metrics);
      network::ProviderClientOptions no;
      no.endpoints = o.network_endpoints;
      no.ca_file = o.network_ca;
      no.insecure = o.network_insecure;
      no.replicas = static_cast<uint32_t>(ctx.layout.dp_size());
      no.credits = static_cast<uint32_t>(
          o.network_credits > 0 ? o.network_credits : o.max_num_seqs * ctx.layout.dp_size());
      const char* job = std::getenv("SLURM_JOB_ID");
      no.provider_name = job ? std::string("slurm-job-") + job : "alem";
      no.models.push_back(
          network_model_info(served_name, store.model_digest(), model.max_model_len()));
      // With --confidential, the cluster bundle is the evidence (alem-cluster-bundle-v1).
      no.evidence = confidential_session ? bundle_evidence_hook(*confidential_session)
                                         : network::make_evidence_hook(o.attestation);
      provider =
          std::make_unique<network::ProviderClient>(std::move(no), *network_keys, *lease_handler);
      provider->start();
      metrics->add_source([p = provider.get()] { return p->render_metrics(); });
    }
    auto stop_network = [&] {
      if (!provider) return;
      provider->stop();
      const network::LeaseCounters& n = lease_handler->counters();
      log_info("network summary", {{"leases", std::to_string(n.leases.load())},
                                   {"completed", std::to_string(n.completed.load())},
                                   {"from_journal", std::to_string(n.from_journal.load())},
                                   {"released", std::to_string(n.released.load())}});
    };
    std::thread control_thread([&] {
      control_loop(*engine_control, *server, provider.get(), o.drain_seconds, engine_done,
                   drained_code);
    });
    // "ready" (and the job status) once the server answers requests: the engine loop runs and,
    // with several replicas, every replica has reported in. A client that waits for this line
    // must not get "the model is loading" (503) after it. Never, if the engine never comes up.
    std::thread ready_thread([&] {
      while (!engine_done) {
        if (client->healthy()) {
          log_info("ready", {{"load_s", log_number(model.load_seconds())},
                             {"kv_blocks", std::to_string(model.num_kv_blocks())},
                             {"block_size", std::to_string(model.block_size())},
                             {"kv_cache_dtype", dtype_name(model.kv_cache_dtype())},
                             {"max_model_len", std::to_string(model.max_model_len())},
                             {"max_num_seqs", std::to_string(serving.max_num_seqs)},
                             {"max_batch_tokens", std::to_string(serving.max_batch_tokens)}});
          publish_job_status(o, ctx, store, served_name, model.load_seconds(), *server, *metrics);
          return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    try {
      engine.run_leader_loop();
    } catch (...) {
      engine_done = true;
      ready_thread.join();
      control_thread.join();
      stop_network();
      server->stop();
      throw;
    }
    engine_done = true;
    ready_thread.join();
    control_thread.join();
    stop_network();
    server->stop();
    const int code = std::max(drained_code.load(), 0);
    log_info(drained_code.load() == kExitDrained ? "drained; exiting for requeue"
             : drained_code.load() == 0          ? "drained; exiting"
                                                 : "stopped",
             {{"exit_code", std::to_string(code)}});
    return code;
  } catch (const std::exception& e) {
    fail_job(&ctx, e.what());
    throw;
  }
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Serve a model over an OpenAI-compatible HTTP API (vLLM-shaped)");
  cmd->add_option("--model,-m", o->model, "HDF5 model store (from `alem convert`)")->required();
  cmd->add_option("--host", o->host,
                  "HTTP bind address (loopback by default; anything else: set an API key)")
      ->capture_default_str();
  cmd->add_option("--port", o->port, "HTTP port (0: any free port)")->capture_default_str();
  cmd->add_option("--metrics-port", o->metrics_port, "Also serve /metrics on this port (0: off)");
  cmd->add_option("--served-model-name", o->served_model_name,
                  "Model name clients must send (default: the model's own name)");
  cmd->add_option("--chat-template", o->chat_template_file,
                  "Jinja chat template file to use instead of the model's");
  add_parallel_flags(*cmd, o->parallel);
  add_confidential_flags(*cmd, o->confidential);
  cmd->add_option("--max-num-seqs", o->max_num_seqs, "Sequences running at once")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", o->max_batch_tokens, "Token budget of one engine step")
      ->capture_default_str();
  cmd->add_option("--max-waiting", o->max_waiting,
                  "Sequences queued beyond the running ones; more get 429")
      ->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "Tokens per KV cache block")
      ->capture_default_str();
  cmd->add_option("--num-kv-blocks", o->num_kv_blocks, "KV cache blocks (0: from --kv-cache-mb)");
  cmd->add_option("--kv-cache-mb", o->kv_cache_mb, "KV cache memory per rank, MiB")
      ->capture_default_str();
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype,
                  "KV cache element type: bf16, or f32 (twice the memory, exact attention inputs)")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  cmd->add_option("--max-model-len", o->max_model_len,
                  "Context limit, prompt + completion (0: the model's)");
  cmd->add_option("--backend", o->backend, "Kernel backend: cpu, reference, cuda")
      ->capture_default_str();
  cmd->add_option("--config", o->config_file, "Server settings TOML ([network], [limits])");
  cmd->add_option("--drain-seconds", o->drain_seconds,
                  "On SIGUSR1/SIGTERM, how long requests in flight may still run")
      ->capture_default_str();
  cmd->add_option("--collective-timeout", o->collective_timeout_s,
                  "Seconds a rank may wait for another in one call before the job is aborted, "
                  "naming it (0: off; default $ALEM_COLLECTIVE_TIMEOUT_S or 20)")
      ->capture_default_str();
  cmd->add_option("--heartbeat-interval", o->heartbeat_interval_s,
                  "Idle leader: seconds between heartbeat steps every rank answers (0: none)")
      ->capture_default_str();
  cmd->add_option("--http-threads", o->http_threads,
                  "Threads that parse and tokenize requests (connections hold no thread)")
      ->capture_default_str();
  cmd->add_option("--http-header-timeout", o->http_header_timeout,
                  "Seconds a client has to send a request's headers (then it is disconnected)")
      ->capture_default_str();
  cmd->add_option("--http-body-timeout", o->http_body_timeout,
                  "Seconds a client has to send a request's body (then it is disconnected)")
      ->capture_default_str();
  cmd->add_option("--api-key", o->api_key,
                  "Require 'Authorization: Bearer KEY' (visible in ps: prefer --api-key-file or "
                  "$ALEM_API_KEY)");
  cmd->add_option("--api-key-file", o->api_key_file,
                  "Read the API key from this file's first line (or $ALEM_API_KEY_FILE)");
  cmd->add_option("--api-key-protects", o->api_key_protects,
                  "Also require the key on: health, metrics (open by default)")
      ->delimiter(',')
      ->check(CLI::IsMember({"health", "metrics"}));
  cmd->add_option("--max-body-bytes", o->max_body_bytes, "Largest request body (413 above)")
      ->capture_default_str();
  cmd->add_option("--network-endpoint", o->network_endpoints,
                  "Network queue endpoint HOST:PORT to dial (repeatable; docs/protocol.md)");
  cmd->add_option("--network-ca", o->network_ca, "PEM CA file for the network queue's TLS");
  cmd->add_flag("--network-insecure", o->network_insecure,
                "Dial the network queue in plaintext (tests on 127.0.0.1 only)");
  cmd->add_option("--provider-key", o->provider_key,
                  "Provider key file (identity + sealing key; created 0600 when missing)")
      ->capture_default_str();
  cmd->add_option("--usage-journal", o->usage_journal,
                  "Usage journal: exactly-once billing across crashes and requeues")
      ->capture_default_str();
  cmd->add_option("--attestation", o->attestation,
                  "Evidence in the network registration: off, sandbox or tdx")
      ->check(CLI::IsMember({"off", "sandbox", "tdx"}))
      ->capture_default_str();
  cmd->add_option("--network-credits", o->network_credits,
                  "Leases held at once (0: max-num-seqs x replicas)");
  cmd->add_option("--gateway-file", o->gateway_file,
                  "Write the gateway's URL here for `alem status` (default under Slurm: "
                  "alem-gateway-<job id>.json in the working folder)");
  cmd->add_flag("--allow-core-dumps", o->allow_core_dumps,
                "Debugging only: keep core dumps possible (they may hold prompts)");
  cmd->add_flag("--sandbox", o->sandbox,
                "Namespaces, private /tmp, no_new_privs and a seccomp filter (docs/security.md); "
                "implied by --confidential sandbox");
  cmd->callback([o, cmd] {
    // A server's log goes to collectors: JSON lines unless the operator chose otherwise.
    setenv("ALEM_LOG_FORMAT", "json", /*overwrite=*/0);
    const int code = serve(*o, *cmd);
    if (launched_by_mpi()) finalize_mpi();
    // The exit status carries the drain outcome to the Slurm script; main() only knows 0 and 1.
    if (code != 0) std::exit(code);
  });
}

}  // namespace alem::cli
