// The engine half of `alem bench calibrate -m MODEL`: what the planner's cost model needs,
// measured on the engine itself at the model's own shapes, so that a prediction for this model
// on this node starts from what the engine really does rather than from a synthetic kernel:
//   - the engine's matmul kernel over the model's own matrices (fused QKV, O, gate/up, down per
//     layer, then the LM head) at 1 to 64 rows, fitted to A + B x rows: A is the weight-streaming
//     time (GB/s), B the per-row compute (GFLOP/s);
//   - the engine's forward pass (ShardedTransformer::forward on one rank) for decode steps of
//     1 to 16 sequences: what it takes beyond those matmuls is charged per layer (fixed) and per
//     layer and token; two contexts give paged attention's own rate;
//   - the serving engine's decode step (scheduler, sampling, events) at 1 and 8 sequences: what
//     it takes beyond the forward pass is charged per step and per sequence.
// All figures are wall-clock medians on one rank with the threads given.
#include "cli/calibrate_engine.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/serving_engine.h"
#include "engine/transformer.h"
#include "model/model_store.h"
#include "model/weights.h"
#include "mpi/mpi_context.h"

namespace alem::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Least squares of y = a + b x (plain: the points are few and of similar weight).
std::pair<double, double> fit_line(const std::vector<std::pair<double, double>>& xy) {
  double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [x, y] : xy) n += 1, sx += x, sy += y, sxx += x * x, sxy += x * y;
  const double det = n * sxx - sx * sx;
  if (n < 2 || det <= 0) return {n > 0 ? sy / n : 0, 0};
  const double b = (n * sxy - sx * sy) / det;
  return {(sy - b * sx) / n, b};
}

// The model's matrices with random values in the store's dtype: every layer's (or, for a model
// larger than `max_bytes`, enough layers to fill it, the time scaled up), then the LM head.
struct ModelMatrices {
  std::vector<WeightMatrix> layer_mats;
  WeightMatrix head;
  int layers_built = 0, layers_total = 0;
  double bytes = 0, params = 0;  // of all layers and the head, as the model has them

  ModelMatrices(const ModelConfig& c, DType dtype, double max_bytes) {
    const int64_t H = c.hidden_size, hd = c.head_dim;
    const int64_t qkv = (int64_t{c.num_heads} + 2 * c.num_kv_heads) * hd;
    const int64_t q = int64_t{c.num_heads} * hd;
    std::vector<std::pair<int64_t, int64_t>> shapes = {{qkv, H}, {H, q}};
    if (c.num_moe_layers() > 0) {  // the experts one token runs, and the router
      for (int e = 0; e < c.num_experts_per_tok; ++e) {
        shapes.push_back({2 * int64_t{c.moe_intermediate_size}, H});
        shapes.push_back({H, c.moe_intermediate_size});
      }
      shapes.push_back({c.num_experts, H});
    } else {
      shapes.push_back({2 * int64_t{c.intermediate_size}, H});
      shapes.push_back({H, c.intermediate_size});
    }
    int64_t largest = int64_t{c.vocab_size} * H;
    for (const auto& [n, k] : shapes) largest = std::max(largest, n * k);
    std::vector<float> values(largest);
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    for (float& v : values) v = dist(rng);
    layers_total = c.num_layers;
    double layer_bytes = 0, layer_params = 0;
    for (int l = 0; l < c.num_layers; ++l) {
      for (const auto& [n, k] : shapes) {
        layer_mats.push_back(make_weight_matrix(values.data(), n, k, dtype));
        if (l == 0) layer_bytes += layer_mats.back().bytes(), layer_params += double(n) * k;
      }
      ++layers_built;
      if ((layers_built + 1) * layer_bytes > max_bytes) break;
    }
    head = make_weight_matrix(values.data(), c.vocab_size, H, dtype);
    bytes = layer_bytes * layers_total + head.bytes();
    params = layer_params * layers_total + double(c.vocab_size) * H;
  }

  // Hands every matrix to a host backend as the engine does (the CPU backend interleaves Q4_0,
  // Q4_1 and Q8_0 weights then), so the probe times the kernels the engine runs.
  void adopt_by(const KernelBackend& backend) {
    if (backend.memory_space() != MemorySpace::kHost) return;
    for (WeightMatrix& w : layer_mats) backend.adopt_weight(w);
    backend.adopt_weight(head);
  }

  // Seconds of one pass over every layer's matrices at `rows` rows (at many rows, over the
  // first `max_layers` layers, scaled), then the head at `head_rows`.
  double pass(const KernelBackend& backend, int64_t rows, int64_t head_rows, std::vector<float>& x,
              std::vector<float>& y, int max_layers = 1 << 30) const {
    const size_t per_layer = layer_mats.size() / layers_built;
    const int used = std::min(layers_built, max_layers);
    const auto t0 = Clock::now();
    for (size_t i = 0; i < used * per_layer; ++i)
      backend.matmul(x.data(), rows, layer_mats[i], nullptr, y.data());
    const double layer_s = seconds_since(t0) * layers_total / used;
    const auto t1 = Clock::now();
    backend.matmul(x.data(), head_rows, head, nullptr, y.data());
    return layer_s + seconds_since(t1);
  }
};

// A plan of `seqs` sequences each decoding one token at position `context` (or, with
// `prefill`, one sequence of `seqs` tokens from position 0), with KV blocks of its own.
StepPlan synthetic_plan(int seqs, int context, bool prefill, int block_size, int vocab) {
  StepPlan plan;
  int next_block = 0;
  const int n = prefill ? 1 : seqs;
  for (int s = 0; s < n; ++s) {
    StepSequence seq;
    seq.request_id = s;
    seq.num_tokens = prefill ? seqs : 1;
    seq.start_pos = prefill ? 0 : context;
    seq.sample = true;
    const int blocks = (seq.start_pos + seq.num_tokens + block_size - 1) / block_size;
    for (int b = 0; b < blocks; ++b) seq.block_table.push_back(next_block++);
    for (int t = 0; t < seq.num_tokens; ++t)
      plan.tokens.push_back(100 + (37 * (s + t)) % (vocab - 100));
    plan.sequences.push_back(std::move(seq));
  }
  return plan;
}

// The serving engine at `seqs` sequences of one rank: the median gap between tokens.
double serving_itl(ShardedTransformer& model, ParallelContext& solo, int seqs, int prompt_tokens,
                   int max_tokens, int vocab) {
  ServingOptions serving;
  serving.max_num_seqs = seqs;
  serving.max_waiting = seqs + 1;
  serving.heartbeat_interval_s = 0;
  ServingEngine engine(model, solo, serving);
  std::mutex mutex;
  std::condition_variable done;
  int finished = 0;
  std::vector<double> gaps;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> token(100, vocab - 1);
  for (int r = 0; r < seqs; ++r) {
    EngineRequest request;
    request.prompt.resize(prompt_tokens);
    for (int32_t& t : request.prompt) t = token(rng);
    request.params.temperature = 0.f;
    request.params.ignore_eos = true;
    request.params.max_tokens = max_tokens;
    request.cache_salt = "calibrate-" + std::to_string(r);
    auto last = std::make_shared<Clock::time_point>();
    auto count = std::make_shared<int>(0);
    request.on_event = [&, last, count](const RequestEvent& e) {
      const auto now = Clock::now();
      std::lock_guard<std::mutex> lock(mutex);
      if (e.has_token) {
        // The first two tokens come from the prefill step and the first decode step with
        // others still prefilling; later gaps are pure decode steps.
        if (++*count > 2) gaps.push_back(std::chrono::duration<double>(now - *last).count());
        *last = now;
      }
      if (e.finished) {
        ++finished;
        done.notify_all();
      }
    };
    ALEM_CHECK(engine.submit(std::move(request)).status == SubmitStatus::kAccepted,
               "calibration: the serving engine refused a request");
  }
  std::thread waiter([&] {
    std::unique_lock<std::mutex> lock(mutex);
    done.wait(lock, [&] { return finished == seqs; });
    lock.unlock();
    engine.stop(0);
  });
  engine.run_leader_loop();
  waiter.join();
  return median_of(gaps);
}

}  // namespace

void calibrate_engine_at_model_shapes(const std::string& model_path, KernelBackend& backend,
                                      double max_matrix_bytes, int repeats, plan::Calibration& c) {
  repeats = std::max(repeats, 3);
  ModelStoreReader store(model_path);
  const ModelConfig& config = store.config();
  const DType dtype = store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype;
  const std::string dtype_text = dtype_name(dtype);

  // 1. The matmul kernel over the model's own matrices.
  ModelMatrices mats(config, dtype, max_matrix_bytes);
  mats.adopt_by(backend);
  const int max_rows = 256;
  const int64_t widest =
      std::max<int64_t>({int64_t{config.vocab_size}, 2 * int64_t{config.intermediate_size},
                         2 * int64_t{config.moe_intermediate_size}, int64_t{config.num_experts},
                         (int64_t{config.num_heads} + 2 * config.num_kv_heads) * config.head_dim});
  const int64_t deepest = std::max<int64_t>(
      {int64_t{config.hidden_size}, int64_t{config.intermediate_size},
       int64_t{config.moe_intermediate_size}, int64_t{config.num_heads} * config.head_dim});
  std::vector<float> x(max_rows * deepest, 0.01f), y(max_rows * widest);
  mats.pass(backend, 1, 1, x, y);  // warm-up
  // Rows 1..16 take the dot-product path, 24 and more the packed GEMM (kernels/cpu): the curve
  // has points on both sides. Many-row passes run over a few layers (the time scaled).
  const std::vector<int> curve_rows = {1, 2, 4, 8, 16, 24, 32, 64, 128, 256};
  std::vector<std::pair<double, double>>& curve = c.matmul_curve[dtype_text];
  curve.clear();
  for (int rows : curve_rows) {
    std::vector<double> t;
    const int layers_used = rows <= 16 ? 1 << 30 : std::max(2, 512 / rows);
    for (int r = 0; r < repeats; ++r)
      t.push_back(mats.pass(backend, rows, rows, x, y, layers_used));
    curve.push_back({double(rows), median_of(t) / mats.bytes});
  }
  // Roofline figures for the same dtype: the one-row streaming rate and the many-row rate.
  const double stream_s = curve.front().second * mats.bytes;
  const auto& last = curve.back();
  const auto& before = curve[curve.size() - 2];
  const double per_row_s = (last.second - before.second) / (last.first - before.first) * mats.bytes;
  ALEM_CHECK(stream_s > 0 && per_row_s > 0,
             "calibration: the matmul times do not grow with the rows (a machine too noisy to "
             "measure): run it again");
  c.matmul_gbs[dtype_text] = mats.bytes / stream_s / 1e9;
  c.matmul_gflops[dtype_text] = 2.0 * mats.params / per_row_s / 1e9;
  std::printf("matmul %-5s at %s's shapes (ms per pass over the model):", dtype_text.c_str(),
              config.name.c_str());
  for (const auto& [rows, per_byte] : curve)
    std::printf(" %.0f rows %.1f;", rows, per_byte * mats.bytes * 1e3);
  std::printf("\n  weights streamed at %.2f GB/s, %.1f GFLOP/s at many rows\n",
              c.matmul_gbs[dtype_text], c.matmul_gflops[dtype_text]);
  auto curve_at = [&](double rows) {
    size_t i = 1;
    while (i + 1 < curve.size() && curve[i].first < rows) ++i;
    const auto& [r0, s0] = curve[i - 1];
    const auto& [r1, s1] = curve[i];
    return s0 + (s1 - s0) * (rows - r0) / (r1 - r0);
  };
  auto matmul_model = [&](double layer_rows, double head_rows) {
    const double head = mats.head.bytes();
    return (mats.bytes - head) * curve_at(layer_rows) + head * curve_at(head_rows);
  };

  // 2. The engine's forward pass, decode steps of one token per sequence.
  ParallelContext solo = make_solo_context();
  EngineOptions options;
  const int short_context = 32, long_context = 288, max_seqs = 16;
  options.max_model_len = long_context + 2;
  options.num_kv_blocks =
      max_seqs * ((options.max_model_len + options.block_size - 1) / options.block_size + 1);
  ShardedTransformer model(store, solo, backend, options);
  auto forward_once = [&](int seqs, int context, bool prefill) {
    const StepPlan plan =
        synthetic_plan(seqs, context, prefill, options.block_size, config.vocab_size);
    const auto t0 = Clock::now();
    model.forward(plan);
    return seconds_since(t0);
  };
  auto forward_s = [&](int seqs, int context, bool prefill) {
    forward_once(seqs, context, prefill);  // warm-up (buffers sized)
    std::vector<double> t;
    for (int r = 0; r < repeats; ++r) t.push_back(forward_once(seqs, context, prefill));
    return median_of(t);
  };
  // Median over `repeats` of a() - b(), the two timed in turn so that both see the same load.
  auto median_difference = [&](auto&& a, auto&& b) {
    a(), b();  // warm-up
    std::vector<double> d;
    for (int r = 0; r < repeats; ++r) d.push_back(a() - b());
    return median_of(d);
  };
  const double layers = config.num_layers;
  const double q_heads = config.num_heads, hd = config.head_dim;
  auto attention_flops = [&](double tokens, double context) {
    return 4.0 * tokens * context * q_heads * hd * layers;
  };
  // Paged attention's rate: 8 sequences at a long and a short context (the KV bytes read are
  // charged to memory traffic by the planner, so they are taken out here).
  const double kv_bytes_per_position =
      layers * 2.0 * config.num_kv_heads * hd * (options.kv_cache_dtype == DType::BF16 ? 2 : 4);
  {
    const double extra = median_difference([&] { return forward_once(8, long_context, false); },
                                           [&] { return forward_once(8, short_context, false); });
    const double kv_s =
        8.0 * (long_context - short_context) * kv_bytes_per_position / (mats.bytes / stream_s);
    const double attention_s = std::max(extra - kv_s, 0.2 * std::max(extra, 1e-6));
    c.attention_gflops = attention_flops(8, long_context - short_context) / attention_s / 1e9;
  }
  std::vector<std::pair<double, double>> residual;
  for (int seqs : {1, 4, max_seqs}) {
    const double beyond =
        median_difference([&] { return forward_once(seqs, short_context, false); },
                          [&] { return mats.pass(backend, seqs, seqs, x, y); });
    const double f = forward_s(seqs, short_context, false);
    const double mm = f - beyond;
    const double attention = attention_flops(seqs, short_context) / (c.attention_gflops * 1e9) +
                             seqs * short_context * kv_bytes_per_position / (mats.bytes / stream_s);
    residual.push_back({double(seqs), beyond - attention});
    c.engine_points.push_back({seqs, seqs, short_context, f, mm});
  }
  const auto [fixed_s, per_token_s] = fit_line(residual);
  c.layer_overhead_us = std::max(0.0, fixed_s) / layers * 1e6;
  c.token_overhead_us = std::max(0.0, per_token_s) / layers * 1e6;
  // A prefill point, not fitted: the check of the fit at many tokens.
  const int prefill_tokens = 64;
  const double prefill = forward_s(prefill_tokens, 0, true);
  c.engine_points.push_back({prefill_tokens, 1, 0, prefill, matmul_model(prefill_tokens, 1)});
  const double prefill_model =
      matmul_model(prefill_tokens, 1) +
      attention_flops(prefill_tokens, prefill_tokens / 2.0) / (c.attention_gflops * 1e9) +
      layers * (c.layer_overhead_us + prefill_tokens * c.token_overhead_us) * 1e-6;
  std::printf(
      "engine forward (%s, 1 rank): decode %.1f / %.1f / %.1f ms at 1 / 4 / %d sequences; "
      "besides the matmuls %.1f us per layer + %.2f us per layer and token; attention %.1f "
      "GFLOP/s; prefill of %d tokens %.1f ms (fit: %.1f ms)\n",
      config.name.c_str(), c.engine_points[0].seconds * 1e3, c.engine_points[1].seconds * 1e3,
      c.engine_points[2].seconds * 1e3, max_seqs, c.layer_overhead_us, c.token_overhead_us,
      c.attention_gflops, prefill_tokens, prefill * 1e3, prefill_model * 1e3);

  // 3. The serving engine's decode step beyond the forward pass.
  const int prompt_tokens = short_context, max_tokens = 12;
  std::vector<std::pair<double, double>> step_extra;
  for (int seqs : {1, 8}) {
    // Serving step and bare forward pass measured in turn, so both see the same load.
    std::vector<double> itl, extra;
    for (int r = 0; r < std::max(3, repeats / 2); ++r) {
      itl.push_back(serving_itl(model, solo, seqs, prompt_tokens, max_tokens, config.vocab_size));
      extra.push_back(itl.back() - forward_s(seqs, prompt_tokens + max_tokens / 2, false));
    }
    step_extra.push_back({double(seqs), median_of(extra)});
    if (seqs == 1) c.engine_decode_step_s = median_of(itl);
  }
  const auto [step_s, per_seq_s] = fit_line(step_extra);
  c.step_overhead_us = std::max(0.0, step_s) * 1e6;
  c.sequence_overhead_us = std::max(0.0, per_seq_s) * 1e6;
  c.engine_model = config.name;
  std::printf(
      "serving engine: decode step %.1f ms at 1 sequence; besides the forward pass %.0f us per "
      "step + %.0f us per sequence\n",
      c.engine_decode_step_s * 1e3, c.step_overhead_us, c.sequence_overhead_us);
}

struct ModelMatmulProbe::State {
  std::unique_ptr<KernelBackend> backend;
  std::unique_ptr<ModelMatrices> mats;
  std::vector<float> x, y;
  size_t next = 0;  // the matrix to run next (the head after the last layer's)
};

ModelMatmulProbe::ModelMatmulProbe(const std::string& model_path, int threads, double max_bytes)
    : state_(std::make_unique<State>()) {
  ModelStoreReader store(model_path);
  const ModelConfig& config = store.config();
  const DType dtype = store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype;
  state_->backend = make_backend("cpu");
  state_->backend->set_max_threads(threads);
  state_->mats = std::make_unique<ModelMatrices>(config, dtype, max_bytes);
  state_->mats->adopt_by(*state_->backend);
  int64_t widest = config.vocab_size;
  for (const WeightMatrix& w : state_->mats->layer_mats) widest = std::max(widest, w.rows);
  const int64_t width = std::max<int64_t>(
      {config.hidden_size, config.intermediate_size, 2 * int64_t{config.moe_intermediate_size}});
  state_->x.assign(width * kMaxRows, 0.01f);
  state_->y.resize(widest * kMaxRows);
}

ModelMatmulProbe::~ModelMatmulProbe() = default;

double ModelMatmulProbe::gbs(double seconds, int rows) {
  ALEM_CHECK(rows >= 1 && rows <= kMaxRows, "matmul probe: rows out of range");
  State& s = *state_;
  const size_t count = s.mats->layer_mats.size() + 1;
  double bytes = 0, elapsed = 0;
  const auto t0 = Clock::now();
  while (elapsed < seconds) {
    const WeightMatrix& w =
        s.next < s.mats->layer_mats.size() ? s.mats->layer_mats[s.next] : s.mats->head;
    s.backend->matmul(s.x.data(), rows, w, nullptr, s.y.data());
    bytes += w.bytes();
    s.next = (s.next + 1) % count;
    elapsed = seconds_since(t0);
  }
  return bytes / elapsed / 1e9;
}

}  // namespace alem::cli
