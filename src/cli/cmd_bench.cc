// `alem bench generate`: prefill and decode throughput of the engine on the real model, at each
// requested thread count, printed beside the machine's measured memory bandwidth and peak
// FMA throughput, with the fraction of those limits reached. Results also go to a CSV file.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/generator.h"
#include "kernels/cpu/machine_limits.h"
#include "model/model_store.h"

namespace alem::cli {
namespace {

struct BenchGenerateOptions {
  std::string model;
  std::string backend = "cpu";
  std::vector<int> threads = {1, 2};
  int prompt_tokens = 256;
  int decode_tokens = 64;
  int repeats = 2;
  std::string csv;
  ParallelOptions parallel;
};

void run_bench_generate(const BenchGenerateOptions& o) {
  ParallelContext ctx = make_context(o.parallel);
  const bool leader = ctx.world_rank == 0;
  ModelStoreReader store(o.model);
  auto backend = make_backend(o.backend);
  EngineOptions engine_options;
  engine_options.max_model_len = o.prompt_tokens + o.decode_tokens + 1;
  ShardedTransformer model(store, ctx, *backend, engine_options);
  Generator generator(model, ctx, {}, /*prefill_chunk=*/o.prompt_tokens);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(100, store.config().vocab_size - 1);
  std::vector<int32_t> prompt(o.prompt_tokens);
  for (int32_t& t : prompt) t = token(rng);
  SamplingParams params;
  params.temperature = 0.f;
  params.ignore_eos = true;
  params.max_tokens = o.decode_tokens;

  const double matmul_params =
      static_cast<double>(model.weight_bytes());  // bytes streamed per decode step
  const std::string weights_dtype =
      dtype_name(store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype);
  const double flops_per_token = 2.0 * static_cast<double>(store.config().parameter_count());

  std::ofstream csv;
  if (leader && !o.csv.empty()) {
    csv.open(o.csv);
    csv << "layout,backend,weights,threads,prompt_tokens,decode_tokens,prefill_tok_s,decode_tok_s,"
           "mem_bw_gb_s,peak_gflop_s,decode_bw_fraction,prefill_flop_fraction,comm_fraction\n";
  }
  if (leader) {
    std::printf("# %s\n# model %s, weights %s, %.1f MB streamed per decode step (this rank)\n",
                cpu_description().c_str(), store.config().name.c_str(), weights_dtype.c_str(),
                matmul_params / 1e6);
    std::printf("%-8s %12s %12s %14s %14s %10s %10s %8s\n", "threads", "prefill t/s", "decode t/s",
                "mem GB/s", "peak GFLOP/s", "bw frac", "flop frac", "comm");
  }
  for (int threads : o.threads) {
    ALEM_CHECK(threads >= 1, "--threads: each count must be at least 1");
    // The backend was built before this loop (it reads OMP_NUM_THREADS at construction): set
    // its own limit, which every kernel reads, as well as the OpenMP default.
    backend->set_max_threads(threads);
    omp_set_num_threads(threads);
    log_debug("bench row", {{"threads", std::to_string(backend->max_threads())}});
    const double bandwidth = measure_memory_bandwidth_gbs(size_t{1} << 30, threads);
    const double peak = measure_peak_gflops(threads);
    double best_prefill = 0, best_decode = 0, comm_fraction = 0;
    for (int r = 0; r < o.repeats; ++r) {
      model.reset_timings();
      GenerationResult result = generator.generate(prompt, params);
      const double prefill = o.prompt_tokens / std::max(result.prefill_seconds, 1e-9);
      const double decode = (result.tokens.size() - 1) / std::max(result.decode_seconds, 1e-9);
      best_prefill = std::max(best_prefill, prefill);
      best_decode = std::max(best_decode, decode);
      const ForwardTimings& t = model.timings();
      comm_fraction =
          t.communication_seconds / std::max(t.communication_seconds + t.compute_seconds, 1e-9);
    }
    const double bw_fraction = best_decode * matmul_params / 1e9 / bandwidth;
    const double flop_fraction = best_prefill * flops_per_token / 1e9 / peak;
    if (leader) {
      std::printf("%-8d %12.1f %12.1f %14.1f %14.1f %10.2f %10.2f %8.3f\n", backend->max_threads(),
                  best_prefill, best_decode, bandwidth, peak, bw_fraction, flop_fraction,
                  comm_fraction);
      if (csv) {
        csv << '"' << ctx.layout.describe() << "\"," << backend->name() << ',' << weights_dtype
            << ',' << backend->max_threads() << ',' << o.prompt_tokens << ',' << o.decode_tokens
            << ',' << best_prefill << ',' << best_decode << ',' << bandwidth << ',' << peak << ','
            << bw_fraction << ',' << flop_fraction << ',' << comm_fraction << '\n';
      }
    }
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (results as tables and CSV)");
  bench->require_subcommand(1);
  auto o = std::make_shared<BenchGenerateOptions>();
  CLI::App* gen =
      bench->add_subcommand("generate", "Prefill and decode tokens/s vs machine limits");
  gen->add_option("--model,-m", o->model, "HDF5 model store")->required();
  gen->add_option("--backend", o->backend, "Kernel backend")->capture_default_str();
  gen->add_option("--threads", o->threads, "Thread counts to run (comma-separated)")
      ->delimiter(',')
      ->capture_default_str();
  gen->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length")->capture_default_str();
  gen->add_option("--decode-tokens", o->decode_tokens, "Generated tokens")->capture_default_str();
  gen->add_option("--repeats", o->repeats, "Runs per setting (best is reported)")
      ->capture_default_str();
  gen->add_option("--csv", o->csv, "Also write results to this CSV file");
  add_parallel_flags(*gen, o->parallel);
  gen->callback([o] { run_bench_generate(*o); });
  add_bench_batch_command(*bench);
}

}  // namespace alem::cli
