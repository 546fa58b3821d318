// `alem bench batch`: engine throughput under continuous batching at one parallel layout, for
// scaling sweeps (slurm/alem-sweep.sbatch runs one per array task). Every replica's leader keeps
// --concurrency requests in flight in its own ServingEngine (the same engine `alem serve` runs,
// without HTTP) until it has finished its share of --requests; the replicas' figures are then
// gathered and world rank 0 prints them and writes them as JSON to --output.
//
// Every kernel call is timed (TimedBackend), and rank 0 reports what share of its run each kind
// of kernel took and what was left outside them (sampling on the host, scheduling, collectives,
// waiting for requests): where a serving step's time goes.
//
// Prompts are random token ids, each request with its own prefix-cache salt so that nothing is
// served from the cache; decoding is greedy with end-of-sequence ignored, so every request
// generates exactly --max-tokens tokens and runs are comparable across layouts.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/runtime.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/serving_engine.h"
#include "kernels/timed_backend.h"
#include "model/model_store.h"
#include "mpi/mpi_context.h"

namespace alem::cli {
namespace {

struct BenchBatchOptions {
  std::string model;
  std::string backend = "cpu";
  ParallelOptions parallel;
  int batch = 16;        // the engine's max running sequences
  int concurrency = 16;  // requests kept in flight by the client side
  int requests = 32;
  int prompt_tokens = 64;
  int max_tokens = 32;
  int max_batch_tokens = 2048;
  std::string output;
};

// What one replica measured. Plain doubles so replicas can all-gather them as bytes.
struct ReplicaResult {
  double requests = 0;
  double prompt_tokens = 0;
  double generated_tokens = 0;
  double wall_seconds = 0;
  double ttft_p50 = 0, ttft_p95 = 0;
  double itl_p50 = 0, itl_p95 = 0;
  double failed = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// The client side on a replica leader: submits requests, keeping `concurrency` in flight,
// records time to first token and inter-token gaps, and stops the engine when all are done.
class LoadDriver {
 public:
  using Clock = std::chrono::steady_clock;

  LoadDriver(ServingEngine& engine, const BenchBatchOptions& o, int count, int vocab, int seed)
      : engine_(engine), o_(o), count_(count), vocab_(vocab), rng_(seed) {}

  void run() {
    start_ = Clock::now();
    for (int i = 0; i < count_; ++i) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return in_flight_ < o_.concurrency; });
      ++in_flight_;
      lock.unlock();
      submit(i);
    }
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_ == count_; });
    end_ = Clock::now();
    lock.unlock();
    engine_.stop(0);
  }

  ReplicaResult result() const {
    std::lock_guard<std::mutex> lock(mutex_);
    ReplicaResult r;
    r.requests = count_;
    r.prompt_tokens = static_cast<double>(count_) * o_.prompt_tokens;
    r.generated_tokens = static_cast<double>(generated_);
    r.wall_seconds = std::chrono::duration<double>(end_ - start_).count();
    r.ttft_p50 = percentile(ttft_, 0.5);
    r.ttft_p95 = percentile(ttft_, 0.95);
    r.itl_p50 = percentile(itl_, 0.5);
    r.itl_p95 = percentile(itl_, 0.95);
    r.failed = failed_;
    return r;
  }

 private:
  void submit(int index) {
    EngineRequest request;
    std::uniform_int_distribution<int32_t> token(100, vocab_ - 1);
    request.prompt.resize(o_.prompt_tokens);
    for (int32_t& t : request.prompt) t = token(rng_);
    request.params.temperature = 0.f;
    request.params.ignore_eos = true;
    request.params.max_tokens = o_.max_tokens;
    request.cache_salt = "bench-" + std::to_string(index);
    const Clock::time_point submitted = Clock::now();
    auto last = std::make_shared<Clock::time_point>(submitted);
    auto first = std::make_shared<bool>(true);
    request.on_event = [this, submitted, last, first](const RequestEvent& e) {
      const Clock::time_point now = Clock::now();
      std::lock_guard<std::mutex> lock(mutex_);
      if (e.has_token) {
        ++generated_;
        const double gap = std::chrono::duration<double>(now - *last).count();
        if (*first) {
          ttft_.push_back(std::chrono::duration<double>(now - submitted).count());
          *first = false;
        } else {
          itl_.push_back(gap);
        }
        *last = now;
      }
      if (e.finished) {
        if (e.finish_reason != FinishReason::kLength && e.finish_reason != FinishReason::kStop) {
          ++failed_;
        }
        --in_flight_;
        ++finished_;
        done_.notify_all();
      }
    };
    const SubmitResult submitted_result = engine_.submit(std::move(request));
    if (submitted_result.status != SubmitStatus::kAccepted) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++failed_;
      --in_flight_;
      ++finished_;
      done_.notify_all();
    }
  }

  ServingEngine& engine_;
  const BenchBatchOptions& o_;
  const int count_;
  const int vocab_;
  std::mt19937 rng_;
  mutable std::mutex mutex_;
  std::condition_variable done_;
  int in_flight_ = 0, finished_ = 0, failed_ = 0;
  int64_t generated_ = 0;
  std::vector<double> ttft_, itl_;
  Clock::time_point start_{}, end_{};
};

void run_bench_batch(const BenchBatchOptions& o) {
  ALEM_CHECK(o.batch >= 1 && o.concurrency >= 1 && o.requests >= 1 && o.prompt_tokens >= 1 &&
                 o.max_tokens >= 1,
             "--batch, --concurrency, --requests, --prompt-tokens and --max-tokens must be >= 1");
  ParallelContext ctx = make_context(o.parallel);
  try {
    ModelStoreReader store(o.model);
    auto inner_backend = make_backend(o.backend);
    TimedBackend backend(*inner_backend, store.config().hidden_size);
    EngineOptions engine_options;
    engine_options.load_progress = model_load_progress(ctx.world_rank == 0);
    engine_options.max_model_len = o.prompt_tokens + o.max_tokens + 1;
    const int blocks_per_seq =
        (engine_options.max_model_len + engine_options.block_size - 1) / engine_options.block_size;
    engine_options.num_kv_blocks = blocks_per_seq * (o.batch + 1);
    ShardedTransformer model(store, ctx, backend, engine_options);
    ServingOptions serving;
    serving.max_num_seqs = o.batch;
    serving.max_batch_tokens = std::max(o.max_batch_tokens, o.batch);
    serving.max_waiting = o.requests + 1;
    serving.replica = ctx.coords.dp;
    ServingEngine engine(model, ctx, serving);
    ctx.world->barrier();
    backend.reset();

    ReplicaResult mine;
    if (engine.is_leader()) {
      const int dp = ctx.layout.dp_size();
      const int share = o.requests / dp + (ctx.coords.dp < o.requests % dp ? 1 : 0);
      LoadDriver driver(engine, o, share, store.config().vocab_size, 1000 + ctx.coords.dp);
      std::thread client([&] { driver.run(); });
      try {
        engine.run_leader_loop();
      } catch (...) {
        client.detach();
        throw;
      }
      client.join();
      mine = driver.result();
    } else {
      engine.run_follower_loop();
    }

    std::vector<ReplicaResult> all(ctx.layout.world_size());
    ctx.world->all_gather(&mine, sizeof mine, all.data());
    if (ctx.world_rank != 0) return;

    ReplicaResult total;
    nlohmann::json replicas = nlohmann::json::array();
    for (int r = 0; r < ctx.layout.world_size(); ++r) {
      const ParallelCoords c = ctx.layout.coords(r);
      if (c.pp != 0 || c.tp != 0) continue;  // replica leaders only
      const ReplicaResult& x = all[r];
      total.requests += x.requests;
      total.prompt_tokens += x.prompt_tokens;
      total.generated_tokens += x.generated_tokens;
      total.failed += x.failed;
      total.wall_seconds = std::max(total.wall_seconds, x.wall_seconds);
      replicas.push_back({{"replica", c.dp},
                          {"requests", x.requests},
                          {"generated_tokens", x.generated_tokens},
                          {"wall_seconds", x.wall_seconds},
                          {"ttft_p50_s", x.ttft_p50},
                          {"ttft_p95_s", x.ttft_p95},
                          {"itl_p50_s", x.itl_p50},
                          {"itl_p95_s", x.itl_p95}});
    }
    const double tokens_per_s = total.generated_tokens / std::max(total.wall_seconds, 1e-9);
    const double requests_per_s = total.requests / std::max(total.wall_seconds, 1e-9);
    std::printf(
        "layout %s  batch %d  concurrency %d  requests %.0f (failed %.0f)  prompt %d  max_tokens "
        "%d\n  %.1f generated tokens/s, %.2f requests/s, ttft p50 %.3f s, itl p50 %.4f s, load "
        "%.1f s\n",
        ctx.layout.describe().c_str(), o.batch, o.concurrency, total.requests, total.failed,
        o.prompt_tokens, o.max_tokens, tokens_per_s, requests_per_s, all[0].ttft_p50,
        all[0].itl_p50, model.load_seconds());
    // Rank 0's kernels over its own run (a replica leader: it measured the run's wall time).
    nlohmann::json shares = nlohmann::json::object();
    if (mine.wall_seconds > 0) {
      double kernels = 0;
      std::printf("# rank 0's run:");
      for (int k = 0; k < kOpKinds; ++k) {
        const double seconds = backend.single_row().seconds[k] + backend.many_rows().seconds[k];
        if (seconds <= 0) continue;
        kernels += seconds;
        const double share = seconds / mine.wall_seconds;
        shares[op_kind_name(static_cast<OpKind>(k))] = share;
        std::printf(" %s %.1f%%", op_kind_name(static_cast<OpKind>(k)), 100 * share);
      }
      const double outside = std::max(0.0, mine.wall_seconds - kernels) / mine.wall_seconds;
      shares["outside the kernels"] = outside;
      std::printf(
          ", outside the kernels (host sampling, scheduling, collectives, waiting) %.1f%%\n",
          100 * outside);
    }
    if (!o.output.empty()) {
      const nlohmann::json doc = {{"benchmark", "alem bench batch"},
                                  {"model", store.config().name},
                                  {"model_digest", store.model_digest()},
                                  {"backend", o.backend},
                                  {"layout",
                                   {{"tp", ctx.layout.tp_size()},
                                    {"pp", ctx.layout.pp_size()},
                                    {"dp", ctx.layout.dp_size()}}},
                                  {"batch", o.batch},
                                  {"concurrency", o.concurrency},
                                  {"prompt_tokens", o.prompt_tokens},
                                  {"max_tokens", o.max_tokens},
                                  {"requests", total.requests},
                                  {"failed", total.failed},
                                  {"generated_tokens", total.generated_tokens},
                                  {"wall_seconds", total.wall_seconds},
                                  {"generated_tokens_per_second", tokens_per_s},
                                  {"requests_per_second", requests_per_s},
                                  {"load_seconds", model.load_seconds()},
                                  {"rank0_time_shares", shares},
                                  {"replicas", replicas}};
      std::ofstream f(o.output, std::ios::trunc);
      ALEM_CHECK(f.good(), "cannot write " + o.output);
      f << doc.dump(2) << "\n";
      ALEM_CHECK(f.good(), "cannot write " + o.output);
    }
    ALEM_CHECK(total.failed == 0, std::to_string(static_cast<int>(total.failed)) +
                                      " benchmark requests did not finish normally");
  } catch (const std::exception& e) {
    fail_job(&ctx, e.what());
    throw;
  }
}

}  // namespace

void add_bench_batch_command(CLI::App& bench) {
  auto o = std::make_shared<BenchBatchOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "batch", "Continuous-batching throughput at one layout (tokens/s, TTFT, ITL) -> JSON");
  cmd->add_option("--model,-m", o->model, "HDF5 model store")->required();
  cmd->add_option("--backend", o->backend, "Kernel backend")->capture_default_str();
  add_parallel_flags(*cmd, o->parallel);
  cmd->add_option("--batch", o->batch, "Sequences the engine runs at once (max_num_seqs)")
      ->capture_default_str();
  cmd->add_option("--concurrency", o->concurrency, "Requests kept in flight per replica")
      ->capture_default_str();
  cmd->add_option("--requests", o->requests, "Requests in all (split over replicas)")
      ->capture_default_str();
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length")->capture_default_str();
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens generated per request")
      ->capture_default_str();
  cmd->add_option("--max-batch-tokens", o->max_batch_tokens, "Token budget of one engine step")
      ->capture_default_str();
  cmd->add_option("--output,-o", o->output, "Write the results as JSON to this file");
  cmd->callback([o] {
    run_bench_batch(*o);
    if (launched_by_mpi()) finalize_mpi();
  });
}

}  // namespace alem::cli
