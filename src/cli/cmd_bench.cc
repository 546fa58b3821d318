// `alem bench generate`: prefill and decode throughput of the engine on the real model, at each
// requested thread count, printed beside the machine's measured memory bandwidth and peak
// FMA throughput, with the fraction of those limits reached. Results also go to a CSV file.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/error.h"
#include "core/log.h"
#include "engine/generator.h"
#include "engine/moe_ffn.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/machine_limits.h"
#include "kernels/timed_backend.h"
#include "model/model_store.h"

namespace alem::cli {
namespace {

// Bytes of this process's anonymous memory on transparent huge pages (0 when unknown).
double huge_page_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("AnonHugePages:", 0) == 0) return std::stod(line.substr(14)) * 1024.0;
  }
  return 0;
}

// What a prefill's FLOP/s are set against: the measured peak of the instruction its matmuls
// run on (CpuBackend::prefill_arithmetic), and its name for the header. Other backends, and AMX
// tiles (whose peak is not measured): the f32 FMA peak, named as such.
struct PrefillPeak {
  CpuBackend::PrefillArithmetic kind = CpuBackend::PrefillArithmetic::kF32Fma;
  const char* name() const {
    switch (kind) {
      case CpuBackend::PrefillArithmetic::kBf16Dot:
        return "the bf16 dot-product peak";
      case CpuBackend::PrefillArithmetic::kInt8Dot16BitX:
        return "half the int8 dot-product peak (16-bit x: two vpdpbusd per four products)";
      case CpuBackend::PrefillArithmetic::kInt8Dot:
        return "the int8 dot-product peak";
      case CpuBackend::PrefillArithmetic::kAmx:
        return "the f32 FMA peak (AMX tiles, whose own peak is not measured, run beyond it)";
      default:
        return "the f32 FMA peak";
    }
  }
  double gops(double f32_fma, double bf16_dot, double int8_dot) const {
    switch (kind) {
      case CpuBackend::PrefillArithmetic::kBf16Dot:
        return bf16_dot;
      case CpuBackend::PrefillArithmetic::kInt8Dot16BitX:
        return int8_dot / 2;
      case CpuBackend::PrefillArithmetic::kInt8Dot:
        return int8_dot;
      default:
        return f32_fma;
    }
  }
};

struct BenchGenerateOptions {
  std::string model;
  std::string backend = "cpu";
  std::vector<int> threads = {1, 2};
  int prompt_tokens = 256;
  int decode_tokens = 64;
  int repeats = 2;
  int warmup = 1;
  std::string csv;
  ParallelOptions parallel;
};

// Expert weight bytes this rank read per decoded token (single-token steps), over its layers.
double active_expert_bytes_per_token(const ShardedTransformer& model) {
  const MoeRoutingCounts& c = model.moe_routing();
  if (c.single_token_calls == 0) return 0;
  const double tokens = static_cast<double>(c.single_token_calls) / model.num_moe_layers();
  return static_cast<double>(c.single_token_expert_bytes) / tokens;
}

// Load balance of the routing so far: tokens per expert (min, mean, max) and per ep slice, and
// the weight bytes a decoded token read, with the experts' share (stored as `expert_dtype`).
void print_moe_load(const ShardedTransformer& model, double bytes_per_token,
                    double expert_bytes_per_token, DType expert_dtype) {
  const ModelConfig& c = model.config();
  const ShardPlan& s = model.shard();
  const std::vector<uint64_t>& per_expert = model.moe_routing().tokens_per_expert;
  if (per_expert.empty()) return;
  const uint64_t lo = *std::min_element(per_expert.begin(), per_expert.end());
  const uint64_t hi = *std::max_element(per_expert.begin(), per_expert.end());
  double sum = 0;
  for (uint64_t n : per_expert) sum += static_cast<double>(n);
  std::printf(
      "#   moe: %d experts top-%d, ep %d (rank 0 holds %d), %.1f MB weights read per "
      "decoded token (experts %s: %.1f MB) of %.1f MB held (active %.1f%%); tokens per expert "
      "min %llu mean %.1f max %llu; per ep slice:",
      c.num_experts, c.num_experts_per_tok, s.ep_size, s.num_local_experts, bytes_per_token / 1e6,
      dtype_name(expert_dtype).c_str(), expert_bytes_per_token / 1e6, model.weight_bytes() / 1e6,
      100.0 * bytes_per_token / std::max<double>(model.weight_bytes(), 1),
      static_cast<unsigned long long>(lo), sum / per_expert.size(),
      static_cast<unsigned long long>(hi));
  const size_t per_slice = per_expert.size() / s.ep_size;
  for (int slice = 0; slice < s.ep_size; ++slice) {
    uint64_t total = 0;
    for (size_t e = slice * per_slice; e < (slice + 1) * per_slice; ++e) total += per_expert[e];
    std::printf(" %llu", static_cast<unsigned long long>(total));
  }
  std::printf("\n");
}

// Experts across replicas: every rank's all_to_all share of its step time over one run and the
// bytes it dispatched per step (token rows out and results back, to other ranks), gathered over
// the world (collective) so that rank 0 prints every rank's.
void print_expert_dispatch(ParallelContext& ctx, const ShardedTransformer& model,
                           const ExpertDispatchStats& before) {
  if (!ctx.layout.experts_across_replicas()) return;
  const ExpertDispatchStats& now = model.expert_dispatch();
  const ForwardTimings& t = model.timings();
  const double step_seconds = std::max(t.compute_seconds + t.communication_seconds, 1e-9);
  const double mine[3] = {
      (now.all_to_all_seconds - before.all_to_all_seconds) / step_seconds,
      static_cast<double>(now.bytes_sent - before.bytes_sent) / std::max<int64_t>(t.steps, 1),
      static_cast<double>(now.rows_sent - before.rows_sent) / std::max<int64_t>(t.steps, 1)};
  std::vector<double> all(3 * static_cast<size_t>(ctx.world->size()));
  ctx.world->all_gather(mine, sizeof(mine), all.data());
  if (ctx.world_rank != 0) return;
  std::printf(
      "#   expert dispatch (experts across ep %d replicas), per rank: all_to_all share of step "
      "time, kB sent per step (rows out + results back), rows sent per step:",
      ctx.layout.ep_size());
  for (size_t r = 0; r < all.size() / 3; ++r) {
    std::printf(" [%zu] %.1f%% %.1f kB %.1f", r, 100 * all[3 * r], all[3 * r + 1] / 1e3,
                all[3 * r + 2]);
  }
  std::printf("\n");
}

// Where a single-sequence decode step's time goes: each kind of kernel, and what is left outside
// the kernels (sampling on the host, the scheduler, collectives, waiting).
void print_decode_breakdown(const OpTimes& ops, double decode_seconds, int steps) {
  if (steps <= 0 || decode_seconds <= 0) return;
  std::printf("#   decode step %.3f ms:", 1e3 * decode_seconds / steps);
  for (int k = 0; k < kOpKinds; ++k) {
    if (ops.calls[k] == 0) continue;
    std::printf(" %s %.1f%%", op_kind_name(static_cast<OpKind>(k)),
                100 * ops.seconds[k] / decode_seconds);
  }
  std::printf(", outside the kernels (host sampling, scheduling, collectives) %.1f%%\n",
              100 * std::max(0.0, decode_seconds - ops.total()) / decode_seconds);
}

void run_bench_generate(const BenchGenerateOptions& o) {
  ParallelContext ctx = make_context(o.parallel);
  const bool leader = ctx.world_rank == 0;
  ModelStoreReader store(o.model);
  auto inner_backend = make_backend(o.backend);
  // Every kernel call is timed, so the decode step can be split into its parts below.
  auto backend = std::make_unique<TimedBackend>(*inner_backend, store.config().hidden_size);
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

  // Bytes a decode step streams on this rank: every weight matrix once. An untied model's input
  // embedding is only looked up (one row per token), so it does not count; a tied one is read
  // whole as the LM head and counts once.
  const ModelConfig& config = store.config();
  const std::string embed_name = "model.embed_tokens.weight";
  const DType embed_dtype = store.tensor_info(embed_name).dtype;
  const double embed_bytes_per_value =
      embed_dtype == DType::I8
          ? 1.0 + 4.0 / kInt8GroupSize
          : double(dtype_block_bytes(embed_dtype)) / double(dtype_block_elements(embed_dtype));
  const double untied_embedding_bytes =
      !config.tie_word_embeddings && model.shard().has_embedding()
          ? double(model.shard().vocab_size) * config.hidden_size * embed_bytes_per_value
          : 0.0;
  double matmul_params = static_cast<double>(model.weight_bytes()) - untied_embedding_bytes;
  // A MoE model streams every non-expert weight plus only the experts a decoded token used
  // (measured after the first run, from the single-token steps).
  const bool moe = model.num_moe_layers() > 0;
  const double non_expert_bytes = matmul_params - static_cast<double>(model.expert_weight_bytes());
  const DType weights = store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype;
  const std::string weights_dtype = dtype_name(weights);
  // FLOPs of one token through the whole model (all ranks): 2 per matmul weight; the input
  // embedding of an untied model is a lookup, not a matmul.
  const double flops_per_token =
      2.0 * (static_cast<double>(config.active_parameter_count()) -  // MoE: top-k experts
             (config.tie_word_embeddings ? 0.0 : double(config.vocab_size) * config.hidden_size));
  // A prefill runs the LM head on its last row only (the row it samples from), not per token.
  const double lm_head_flops = 2.0 * double(config.vocab_size) * config.hidden_size;
  const double prefill_flops = o.prompt_tokens * (flops_per_token - lm_head_flops) + lm_head_flops;
  const int ranks = model.shard().tp_size * model.shard().pp_size;  // of this replica
  PrefillPeak prefill_peak_of;
  const cpu::LightPrefetchTuner* prefetch_tuner = nullptr;
  if (const auto* cpu = dynamic_cast<const CpuBackend*>(inner_backend.get())) {
    prefill_peak_of.kind = cpu->prefill_arithmetic(weights, config.hidden_size);
    prefetch_tuner = cpu->light_prefetch_tuner();
  }
  // The warm-up decodes enough tokens for the prefetch tuner to measure the LM head (read once a
  // step; the layers' matrices take one step or two), so the timed runs show the setting a
  // serving process keeps (its first tokens measure both).
  const int warm_tokens = 4 + (prefetch_tuner ? cpu::LightPrefetchTuner::kWarmCalls +
                                                    2 * cpu::LightPrefetchTuner::kMinSamples
                                              : 0);

  std::ofstream csv;
  if (leader && !o.csv.empty()) {
    csv.open(o.csv);
    csv << "layout,backend,weights,threads,prompt_tokens,decode_tokens,prefill_tok_s,decode_tok_s,"
           "mem_bw_gb_s,peak_gflop_s,decode_bw_fraction,prefill_flop_fraction,comm_fraction,"
           "mem_bw_4k_gb_s,peak_bf16_gop_s,peak_int8_gop_s,step_read_gb_s,decode_step_read_"
           "fraction,prefill_peak_gop_s\n";
  }
  if (leader) {
    std::printf(
        "# %s\n# model %s, weights %s, %.1f MB streamed per decode step (this rank), "
        "%.1f MB of this process on huge pages\n",
        cpu_description().c_str(), config.name.c_str(), weights_dtype.c_str(), matmul_params / 1e6,
        huge_page_bytes() / 1e6);
    std::printf(
        "# per rank: read GB/s on 4 KiB pages and on huge pages, f32 FMA GFLOP/s, bf16 "
        "and int8 dot-product GOP/s; bw frac = decode bytes/s over the huge-page read "
        "bandwidth, flop frac = prefill FLOP/s over %d rank(s) x %s, the instruction its "
        "matmuls run on\n"
        "# rd step = a plain read of the step's bytes once per decoded token, timed like the "
        "decode (wall clock, back to back, best run); step frac = decode bytes/s over it\n",
        ranks, prefill_peak_of.name());
    std::printf("%-8s %11s %10s %9s %9s %9s %9s %9s %8s %9s %6s %8s %9s\n", "threads",
                "prefill t/s", "decode t/s", "rd 4K", "rd huge", "f32 fma", "bf16 dot", "int8 dot",
                "bw frac", "flop frac", "comm", "rd step", "step frac");
  }
  for (int threads : o.threads) {
    ALEM_CHECK(threads >= 1, "--threads: each count must be at least 1");
    // The backend was built before this loop (it reads OMP_NUM_THREADS at construction): set
    // its own limit, which every kernel reads, as well as the OpenMP default.
    backend->set_max_threads(threads);
    omp_set_num_threads(threads);
    log_debug("bench row", {{"threads", std::to_string(backend->max_threads())}});
    const size_t bandwidth_bytes = size_t{512} << 20;
    const double bandwidth_4k = measure_memory_bandwidth_gbs(bandwidth_bytes, threads, false);
    const double bandwidth = measure_memory_bandwidth_gbs(bandwidth_bytes, threads, true);
    const double peak = measure_peak_gflops(threads);
    const double peak_bf16 = measure_peak_dot_gops(DotKind::kBf16, threads);
    const double peak_int8 = measure_peak_dot_gops(DotKind::kInt8, threads);
    double best_prefill = 0, best_decode = 0, comm_fraction = 0, best_step_read = 0;
    OpTimes decode_ops;
    double decode_op_step_seconds = 0;  // the decode wall time of the run decode_ops comes from
    int decode_op_steps = 0;
    ExpertDispatchStats dispatch_before;
    // Untimed runs first, as llama-bench does: the first run after a load or a change of
    // thread count also pays for the thread pool, first touches of scratch and KV pages.
    SamplingParams warm = params;
    warm.max_tokens = std::min(o.decode_tokens, warm_tokens);
    for (int w = 0; w < o.warmup; ++w) generator.generate(prompt, warm);
    for (int r = 0; r < o.repeats; ++r) {
      model.reset_timings();
      backend->reset();
      dispatch_before = model.expert_dispatch();
      GenerationResult result = generator.generate(prompt, params);
      const double prefill = o.prompt_tokens / std::max(result.prefill_seconds, 1e-9);
      const double decode = (result.tokens.size() - 1) / std::max(result.decode_seconds, 1e-9);
      if (moe) matmul_params = non_expert_bytes + active_expert_bytes_per_token(model);
      best_prefill = std::max(best_prefill, prefill);
      if (decode >= best_decode) {
        decode_ops = backend->single_row();
        decode_op_step_seconds = result.decode_seconds;
        decode_op_steps = static_cast<int>(result.tokens.size()) - 1;
      }
      best_decode = std::max(best_decode, decode);
      // Right after the decode, the same bytes read plainly as many times: the machine's
      // neighbours and clocks are then as near to the decode's as one run allows.
      best_step_read =
          std::max(best_step_read,
                   measure_step_read_gbs(static_cast<size_t>(matmul_params), threads,
                                         std::max(1, static_cast<int>(result.tokens.size()) - 1)));
      const ForwardTimings& t = model.timings();
      comm_fraction =
          t.communication_seconds / std::max(t.communication_seconds + t.compute_seconds, 1e-9);
    }
    const double bw_fraction = best_decode * matmul_params / 1e9 / bandwidth;
    const double step_read_fraction = best_decode * matmul_params / 1e9 / best_step_read;
    const double prefill_peak = prefill_peak_of.gops(peak, peak_bf16, peak_int8);
    const double flop_fraction =
        best_prefill / o.prompt_tokens * prefill_flops / 1e9 / (prefill_peak * ranks);
    if (leader) {
      std::printf(
          "%-8d %11.1f %10.1f %9.1f %9.1f %9.1f %9.1f %9.1f %8.2f %9.2f %6.3f %8.1f %9.2f\n",
          backend->max_threads(), best_prefill, best_decode, bandwidth_4k, bandwidth, peak,
          peak_bf16, peak_int8, bw_fraction, flop_fraction, comm_fraction, best_step_read,
          step_read_fraction);
      if (moe) {
        print_moe_load(model, matmul_params, active_expert_bytes_per_token(model),
                       stored_expert_dtype(store, config));
      }
      print_decode_breakdown(decode_ops, decode_op_step_seconds, decode_op_steps);
      if (prefetch_tuner) {
        const auto counts = prefetch_tuner->counts();
        std::printf(
            "#   light-stream prefetch, measured per class of matrix: on for %d, off for %d\n",
            counts.on, counts.off);
      }
    }
    print_expert_dispatch(ctx, model, dispatch_before);  // collective: every rank
    if (leader) {
      if (csv) {
        csv << '"' << ctx.layout.describe() << "\"," << backend->name() << ',' << weights_dtype
            << ',' << backend->max_threads() << ',' << o.prompt_tokens << ',' << o.decode_tokens
            << ',' << best_prefill << ',' << best_decode << ',' << bandwidth << ',' << peak << ','
            << bw_fraction << ',' << flop_fraction << ',' << comm_fraction << ',' << bandwidth_4k
            << ',' << peak_bf16 << ',' << peak_int8 << ',' << best_step_read << ','
            << step_read_fraction << ',' << prefill_peak << '\n';
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
  gen->add_option("--warmup", o->warmup, "Untimed runs per setting before the timed ones")
      ->capture_default_str()
      ->check(CLI::Range(0, 100));
  gen->add_option("--csv", o->csv, "Also write results to this CSV file");
  add_parallel_flags(*gen, o->parallel);
  gen->callback([o] { run_bench_generate(*o); });
  add_bench_batch_command(*bench);
  add_bench_calibrate_command(*bench);
  add_bench_sweep_command(*bench);
}

}  // namespace alem::cli
