// `alem bench calibrate`: measures this node for the planner and writes a calibration file
// (JSON, format alem-calibration-v1) that `alem plan --calibration FILE` uses in place of the
// cluster description's datasheet figures:
//   - matmul throughput per weight dtype with the engine's own CPU kernels: GFLOP/s at a
//     prefill-sized batch, and the weight-streaming rate (GB/s) of one-row decode matmuls over a
//     footprint the size of a model, so caches help as much as they help the engine;
//   - streaming read bandwidth of one core and of all cores;
//   - latency and bandwidth of send/recv and all-reduce per message size over MPI (run under
//     mpirun with the ranks a job would use), fitted to latency + bytes / bandwidth;
//   - AES-256-GCM throughput of the secure channel's own implementation;
//   - with -m, the engine at the model's own shapes (calibrate_engine.cc): its matmuls, forward
//     pass and serving step, which replace the synthetic matmul figures for the model's dtype;
//   - under mpirun, the share of a core each rank gets when all ranks compute at once (more
//     ranks than cores, and whatever else the node runs), and the wait per collective.
// Times are wall-clock medians: the planner predicts wall-clock figures, and a shared node slows
// the calibration as it slows the benchmark.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>

#include "cli/calibrate_engine.h"
#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/runtime.h"
#include "core/error.h"
#include "engine/generator.h"
#include "kernels/cpu/machine_limits.h"
#include "model/model_store.h"
#include "model/weights.h"
#include "mpi/mpi_context.h"
#include "mpi/secure_crypto.h"
#include "plan/build_info.h"
#include "plan/cluster_spec.h"

namespace alem::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct CalibrateOptions {
  std::string output = "calibration.json";
  std::vector<std::string> dtypes = {"bf16", "int8", "f32"};
  int threads = 1;
  int footprint_mb = 256;
  double seconds = 0.5;  // per measurement
  int repeats = 5;       // timings per engine figure (their median)
  int prefill_rows = 128;
  std::string model;  // optional: measure the engine's per-layer cost beyond its matmuls
  bool collectives_only = false;  // update --output's collective figures only (under mpirun)
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Mean of the middle 80% (at least one dropped at each end from 5 values): message times on
// shared cores are bimodal (a peer on a core, or descheduled for a time slice of ~4 ms), and
// what a step pays over many collectives is their mean; a median flips between the two modes
// from one calibration to the next, a plain mean follows single outliers.
double trimmed_mean(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t drop = v.size() >= 5 ? std::max<size_t>(1, v.size() / 10) : 0;
  double sum = 0;
  for (size_t i = drop; i < v.size() - drop; ++i) sum += v[i];
  return sum / double(v.size() - 2 * drop);
}

// Median wall seconds of fn() over about `seconds` of calls (at least 5).
template <typename Fn>
double time_median(double seconds, Fn&& fn) {
  fn();  // warm-up
  std::vector<double> times;
  const auto start = Clock::now();
  while (times.size() < 5 ||
         (std::chrono::duration<double>(Clock::now() - start).count() < seconds &&
          times.size() < 100000)) {
    const auto t0 = Clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return median(times);
}

// One transformer-FFN-like matrix (1536 x 576, SmolLM2's gate), copied until the copies fill
// the footprint, so one-row matmuls stream them as the engine streams a model's weights.
void calibrate_matmul(const CalibrateOptions& o, KernelBackend& backend, plan::Calibration& c) {
  const int64_t N = 1536, K = 576;
  std::vector<float> values(N * K);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  for (float& v : values) v = dist(rng);
  for (const std::string& name : o.dtypes) {
    const DType dtype = parse_dtype(name);
    std::vector<WeightMatrix> copies;
    copies.push_back(make_weight_matrix(values.data(), N, K, dtype));
    const size_t each = copies[0].bytes();
    const size_t count = std::max<size_t>(1, size_t{1} * o.footprint_mb * 1000000 / each);
    while (copies.size() < count) {
      WeightMatrix w;
      w.dtype = dtype;
      w.rows = N;
      w.cols = K;
      w.data.resize(copies[0].data.size());
      std::memcpy(w.data.data(), copies[0].data.data(), copies[0].data.size());
      w.scales = copies[0].scales;
      copies.push_back(std::move(w));
    }
    // As the engine hands weights over (the CPU backend interleaves block weights then).
    if (backend.memory_space() == MemorySpace::kHost) {
      for (WeightMatrix& w : copies) backend.adopt_weight(w);
    }
    std::vector<float> x(o.prefill_rows * K, 0.01f), y(o.prefill_rows * N);
    size_t next = 0;
    const double decode_s = time_median(o.seconds, [&] {
      backend.matmul(x.data(), 1, copies[next], nullptr, y.data());
      next = (next + 1) % copies.size();
    });
    const double prefill_s = time_median(
        o.seconds, [&] { backend.matmul(x.data(), o.prefill_rows, copies[0], nullptr, y.data()); });
    const double gbs = each / decode_s / 1e9;
    const double gflops = 2.0 * o.prefill_rows * N * K / prefill_s / 1e9;
    c.matmul_gbs[dtype_name(dtype)] = gbs;
    c.matmul_gflops[dtype_name(dtype)] = gflops;
    std::printf(
        "matmul %-5s  decode (1 row, %d MB of weights) %7.2f GB/s   prefill (%d rows) "
        "%7.1f GFLOP/s\n",
        dtype_name(dtype).c_str(), o.footprint_mb, gbs, o.prefill_rows, gflops);
  }
}

void calibrate_aes(const CalibrateOptions& o, plan::Calibration& c) {
  ChannelKey key{};
  key[0] = 1;
  AesGcm gcm(key, /*encrypt=*/true);
  std::vector<uint8_t> buffer(1 << 20, 7), out(buffer.size());
  uint8_t tag[kGcmTagBytes];
  GcmNonce nonce{};
  uint64_t counter = 0;
  const double s = time_median(o.seconds, [&] {
    ++counter;
    std::memcpy(nonce.data(), &counter, sizeof counter);
    gcm.seal(nonce, {}, buffer, out.data(), tag);
  });
  c.aes_gcm_gbs = buffer.size() / s / 1e9;
  std::printf("AES-256-GCM (secure channel, 1 MiB messages, one core) %.2f GB/s\n", c.aes_gcm_gbs);
}

// How fast this node runs one rank now: the one-row matmul streaming 64 MB of bf16 weights
// (GB/s). Taken with the full calibration and again right before a benchmark, their ratio
// scales the calibration to the load of the moment.
class StreamProbe {
 public:
  explicit StreamProbe(int threads) : backend_(make_backend("cpu")) {
    backend_->set_max_threads(threads);
    const int64_t N = 1536, K = 576;
    std::vector<float> values(N * K, 0.01f);
    x_.assign(K, 0.01f);
    y_.resize(N);
    const size_t count = std::max<size_t>(2, size_t{64} * 1000000 / (N * K * 2));
    for (size_t i = 0; i < count; ++i)
      copies_.push_back(make_weight_matrix(values.data(), N, K, DType::BF16));
  }
  double gbs(double seconds) {
    size_t bytes = 0;
    const auto t0 = Clock::now();
    double elapsed = 0;
    while (elapsed < seconds) {
      backend_->matmul(x_.data(), 1, copies_[next_], nullptr, y_.data());
      bytes += copies_[next_].bytes();
      next_ = (next_ + 1) % copies_.size();
      elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    }
    return bytes / elapsed / 1e9;
  }

 private:
  std::unique_ptr<KernelBackend> backend_;
  std::vector<WeightMatrix> copies_;
  std::vector<float> x_, y_;
  size_t next_ = 0;
};

// The load probe: one rank's one-row matmul rate now (GB/s, median of three), over the
// model's own matrices with -m (then give the same -m to every calibration of one file: the
// full one and --collectives-only compare their probes), else a synthetic stream.
double load_probe_gbs(const CalibrateOptions& o) {
  std::vector<double> rates;
  if (!o.model.empty()) {
    ModelMatmulProbe probe(o.model, o.threads, o.footprint_mb * 4e6);
    probe.gbs(0.05);
    for (int r = 0; r < 3; ++r) rates.push_back(probe.gbs(0.3));
  } else {
    StreamProbe probe(o.threads);
    for (int r = 0; r < 3; ++r) rates.push_back(probe.gbs(0.2));
  }
  return median(rates);
}

// send/recv ping-pong between ranks 0 and 1 (one way = half the round trip) and all-reduce over
// all ranks, per message size. Every rank runs the same loop; rank 0's medians are recorded.
void calibrate_collectives(const CalibrateOptions& o, ParallelContext& ctx, plan::Calibration& c) {
  ProcessGroup& world = *ctx.world;
  const int rank = world.rank(), size = world.size();
  c.collective_ranks = size;
  {  // Are ranks 0 and 1 (the send/recv pair) on different hosts? Then the fit is the link between
     // nodes.
    std::array<char, 256> mine{};
    gethostname(mine.data(), mine.size() - 1);
    std::vector<std::array<char, 256>> hosts(size);
    world.all_gather(mine.data(), mine.size(), hosts.data());
    c.link_between_nodes = std::string(hosts[0].data()) != std::string(hosts[1].data());
  }
  std::vector<float> buffer((size_t{16} << 20) / sizeof(float), 1.f);
  for (size_t bytes = 64; bytes <= (size_t{16} << 20); bytes *= 8) {
    // Medians of many for the small messages (their times swing with the scheduler), fewer
    // for the large ones (seconds each on a shaped link).
    const int reps = bytes <= (size_t{256} << 10) ? 25 : 7;
    std::vector<double> pp, ar;
    for (int r = 0; r < reps; ++r) {
      world.barrier();
      const auto t0 = Clock::now();
      if (rank == 0) {
        world.send(buffer.data(), bytes, 1, 901);
        world.recv(buffer.data(), bytes, 1, 902);
      } else if (rank == 1) {
        world.recv(buffer.data(), bytes, 0, 901);
        world.send(buffer.data(), bytes, 0, 902);
      }
      pp.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / 2);
      world.barrier();
      const auto t1 = Clock::now();
      world.all_reduce(buffer.data(), bytes / sizeof(float));
      ar.push_back(std::chrono::duration<double>(Clock::now() - t1).count());
    }
    if (rank == 0) {
      c.collectives["send_recv"].push_back({double(bytes), trimmed_mean(pp)});
      c.collectives["all_reduce"].push_back({double(bytes), trimmed_mean(ar)});
      std::printf("%d ranks, %9zu bytes: send/recv %9.1f us one way, all-reduce %9.1f us\n", size,
                  bytes, trimmed_mean(pp) * 1e6, trimmed_mean(ar) * 1e6);
    }
  }
  // Each rank's share of a core when k ranks compute at once, for k = 1 to all: ranks 0..k-1
  // run the engine's one-row matmul over the model's own matrices (with -m; else a synthetic
  // model-sized stream) while the others sleep, so they take no core (as idle ranks that yield
  // do); each k's rate against rank 0 alone. It covers more ranks than cores, what several
  // engines get together, and the node's other load, as the job's ranks will meet them. With
  // the model's matmul the same again at 8 rows of x (`rank_core_share_batched`): streaming
  // weights shares the node's memory bandwidth, a batch shares only the cores.
  {
    std::unique_ptr<ModelMatmulProbe> model_probe;
    std::unique_ptr<StreamProbe> stream_probe;
    if (!o.model.empty())
      model_probe = std::make_unique<ModelMatmulProbe>(o.model, o.threads, o.footprint_mb * 4e6);
    else
      stream_probe = std::make_unique<StreamProbe>(o.threads);
    const int batch_rows = model_probe ? ModelMatmulProbe::kMaxRows : 1;
    auto rate = [&](double seconds, int rows) {
      return model_probe ? model_probe->gbs(seconds, rows) : stream_probe->gbs(seconds);
    };
    rate(0.05, 1);  // warm-up: pages touched, caches filled
    // k -> median rate of the k ranks, at one row and at batch_rows rows
    std::vector<std::vector<double>> rates(size + 1), batched(size + 1);
    const int rounds = 3;
    for (int round = 0; round < rounds; ++round) {
      for (int k = 1; k <= size; ++k) {
        for (const int rows : {1, batch_rows}) {
          if (rows == batch_rows && batch_rows == 1) continue;
          world.barrier();
          double mine = 0;
          if (rank < k) {
            mine = rate(0.3, rows);
          } else {
            usleep(550000);
          }
          std::vector<double> all(size);
          world.all_gather(&mine, sizeof mine, all.data());
          all.resize(k);
          (rows == 1 ? rates : batched)[k].push_back(median(all));
        }
      }
    }
    if (rank == 0) {
      const double solo = median(rates[1]);
      c.load_probe_now_gbs = solo;
      std::printf("core share (%s one-row matmul), each of k ranks computing at once:",
                  model_probe ? "the model's" : "a synthetic");
      for (int k = 1; k <= size; ++k) {
        const double share = solo > 0 ? std::min(1.0, median(rates[k]) / solo) : 0;
        c.rank_core_share[k] = share;
        std::printf("  %d: %.2f", k, share);
      }
      std::printf("\n");
      if (batch_rows > 1) {
        const double solo_batched = median(batched[1]);
        std::printf("core share (the model's %d-row matmul):", batch_rows);
        for (int k = 1; k <= size; ++k) {
          const double share =
              solo_batched > 0 ? std::min(1.0, median(batched[k]) / solo_batched) : 0;
          c.rank_core_share_batched[k] = share;
          std::printf("  %d: %.2f", k, share);
        }
        std::printf("\n");
      }
    }
  }
  // Collectives under load: every rank computes (a one-row matmul, as in a decode step), then
  // all ranks all-reduce a message, as a TP layer does; each round is timed. Per message size,
  // over at least 40 rounds, the (trimmed) mean round beyond the compute is what an all-reduce
  // costs while ranks wait for peers that are computing or descheduled
  // (`all_reduce_loaded`: the planner's all-reduce time for this many ranks up to 256 KiB),
  // and beyond the idle all-reduce, the waiting per collective (`sync_us_by_bytes`; at 4 KiB,
  // `sync_us`, also charged per pipeline hop).
  {
    auto backend = make_backend("cpu");
    backend->set_max_threads(o.threads);
    const int64_t N = 1536, K = 576;
    std::vector<float> values(N * K, 0.01f), x(K, 0.01f), y(N);
    const WeightMatrix w = make_weight_matrix(values.data(), N, K, DType::BF16);
    auto compute = [&] { backend->matmul(x.data(), 1, w, nullptr, y.data()); };
    world.barrier();
    std::vector<double> compute_times;
    for (int r = 0; r < 60; ++r) {  // all ranks at once: the loaded figure
      const auto t0 = Clock::now();
      compute();
      compute_times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::vector<double> all(size);
    double mine = trimmed_mean(compute_times);
    world.all_gather(&mine, sizeof mine, all.data());
    const double solo = trimmed_mean(all);
    for (const size_t bytes : {size_t{4096}, size_t{32768}, size_t{262144}}) {
      double idle_ar = 0;
      for (const auto& p : c.collectives["all_reduce"]) {
        if (p.bytes == double(bytes)) idle_ar = p.seconds;
      }
      std::vector<double> rounds;
      const auto start = Clock::now();
      int r = 0;
      for (; r < 400; ++r) {
        const auto t0 = Clock::now();
        compute();
        world.all_reduce(buffer.data(), bytes / sizeof(float));
        rounds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        // Every rank decides the same: rank 0's clock, shared, ends the loop after ~1.5 s.
        int stop = rank == 0 && r >= 40 &&
                   std::chrono::duration<double>(Clock::now() - start).count() > 1.5;
        world.broadcast(&stop, sizeof stop, 0);
        if (stop) break;
      }
      mine = trimmed_mean(rounds);
      world.all_gather(&mine, sizeof mine, all.data());
      if (rank == 0) {
        const double per_round = trimmed_mean(all);
        const double loaded = std::max(per_round - solo, 0.0);
        const double wait_us = std::max(0.0, (loaded - idle_ar) * 1e6);
        c.collectives["all_reduce_loaded"].push_back({double(bytes), loaded});
        c.sync_us_by_bytes[double(bytes)] = wait_us;
        if (bytes == 4096) {
          c.sync_us = wait_us;
          c.sync_us_by_ranks[size] = wait_us;
        }
        std::printf(
            "compute + %zu-byte all-reduce, mean of %d rounds: %.1f us (compute %.1f us): "
            "all-reduce under load %.1f us, %.1f us beyond the idle one\n",
            bytes, r + 1, per_round * 1e6, solo * 1e6, loaded * 1e6, wait_us);
      }
    }
  }
  if (rank == 0) {
    c.fitted_link = plan::fit_alpha_beta(c.collectives["send_recv"]);
    std::printf("link fit (send/recv, %s): latency %.1f us, bandwidth %.2f GB/s\n",
                c.link_between_nodes ? "between hosts" : "inside a host", c.fitted_link.latency_us,
                c.fitted_link.bandwidth_gbs);
  }
}

std::string utc_now() {
  char text[32];
  const std::time_t t = std::time(nullptr);
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return text;
}

void run_calibrate(const CalibrateOptions& o) {
  ALEM_CHECK(o.threads >= 1 && o.footprint_mb >= 1 && o.seconds > 0 && o.prefill_rows >= 1,
             "--threads, --footprint-mb, --seconds and --prefill-rows must be positive");
  const bool mpi = launched_by_mpi();
  ParallelContext ctx;
  if (mpi) {
    init_mpi();
    ParallelOptions po;
    po.dp = mpi_world_size();
    ctx = make_context(po);
  }
  const bool leader = !mpi || ctx.world->rank() == 0;
  plan::Calibration c;
  if (o.collectives_only) {
    c = plan::load_calibration(o.output);
  } else {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    c.host = host;
    c.created_utc = utc_now();
    c.git_revision = plan::git_revision();
    c.threads = o.threads;
  }
  try {
    if (leader && !o.collectives_only) {
      ALEM_CHECK(!mpi || ctx.world->size() == 1,
                 "measure compute alone (the other ranks would compete for the cores): run "
                 "without mpirun, then `mpirun -np N alem bench calibrate --collectives-only`");
      std::printf("# %s\n", cpu_description().c_str());
      auto backend = make_backend("cpu");
      backend->set_max_threads(o.threads);
      omp_set_num_threads(o.threads);
      CalibrateOptions synthetic = o;
      if (!o.model.empty()) {  // the model's own dtype is measured at its own shapes below
        const ModelStoreReader store(o.model);
        const std::string own =
            dtype_name(store.tensor_info(layer_tensor_name(0, "self_attn.q_proj.weight")).dtype);
        std::erase_if(synthetic.dtypes,
                      [&](const std::string& d) { return dtype_name(parse_dtype(d)) == own; });
      }
      const int stages = o.model.empty() ? 3 : 4;
      show_progress("calibrate", 0, stages, "matmul kernels");
      calibrate_matmul(synthetic, *backend, c);
      show_progress("calibrate", 1, stages, "memory bandwidth");
      c.read_bandwidth_gbs = measure_memory_bandwidth_gbs(size_t{256} << 20, o.threads);
      const int cores = std::max(1, omp_get_num_procs());
      c.node_read_bandwidth_gbs = measure_memory_bandwidth_gbs(size_t{256} << 20, cores);
      std::printf("streaming read: %.1f GB/s on %d thread(s), %.1f GB/s on %d\n",
                  c.read_bandwidth_gbs, o.threads, c.node_read_bandwidth_gbs, cores);
      show_progress("calibrate", 2, stages, "AES-256-GCM");
      calibrate_aes(o, c);
      if (!o.model.empty()) {
        show_progress("calibrate", 3, stages, "the engine at the model's shapes");
        calibrate_engine_at_model_shapes(o.model, *backend, o.footprint_mb * 4e6, o.repeats, c);
      }
      show_progress("calibrate", stages, stages, "done");
      c.load_probe_gbs = c.load_probe_now_gbs = load_probe_gbs(o);
      std::printf("load probe: one rank runs %.2f GB/s now\n", c.load_probe_gbs);
    } else if (leader && !mpi) {  // --collectives-only on one rank: the load probe alone
      c.load_probe_now_gbs = load_probe_gbs(o);
      std::printf("load probe: one rank runs %.2f GB/s now (%.2f at calibration)\n",
                  c.load_probe_now_gbs, c.load_probe_gbs);
    }
    if (mpi && ctx.world->size() >= 2) {
      calibrate_collectives(o, ctx, c);
    } else if (leader) {
      std::printf("one rank: collectives not measured (run under mpirun -np N)\n");
    }
    if (leader) {
      std::ofstream f(o.output, std::ios::trunc);
      ALEM_CHECK(f.good(), "cannot write " + o.output);
      f << plan::calibration_to_json(c);
      ALEM_CHECK(f.good(), "cannot write " + o.output);
      std::printf("wrote %s\n", o.output.c_str());
    }
  } catch (const std::exception& e) {
    if (mpi) fail_job(&ctx, e.what());
    throw;
  }
}

}  // namespace

void add_bench_calibrate_command(CLI::App& bench) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* cmd = bench.add_subcommand(
      "calibrate", "Measure this node (matmul, bandwidth, MPI, AES-GCM) for alem plan");
  cmd->add_option("--output,-o", o->output, "Calibration file to write")->capture_default_str();
  cmd->add_option("--dtypes", o->dtypes, "Weight dtypes to measure")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads per rank (as OMP_NUM_THREADS of a job)")
      ->capture_default_str();
  cmd->add_option("--footprint-mb", o->footprint_mb,
                  "Weights the decode matmuls stream (about the model's size)")
      ->capture_default_str();
  cmd->add_option("--seconds", o->seconds, "Time spent per measurement")->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "Timings per engine figure (their median is kept)")
      ->capture_default_str();
  cmd->add_option("--prefill-rows", o->prefill_rows, "Rows of the prefill-sized matmul")
      ->capture_default_str();
  cmd->add_flag("--collectives-only", o->collectives_only,
                "Update --output's file: the load probe, and under mpirun -np N each rank's core "
                "share and the collectives");
  cmd->add_option("--model,-m", o->model,
                  "Also time this model's decode steps (per-layer cost beyond the matmuls); with "
                  "--collectives-only, probe the load and core share with its matmuls");
  cmd->callback([o] {
    run_calibrate(*o);
    if (launched_by_mpi()) finalize_mpi();
  });
}

}  // namespace alem::cli
