// The kernel test's performance mode: times the "cpu" backend's matmul on SmolLM2-135M's real
// shapes for every weight dtype, at decode (M=1) and prefill (M=128, 256) sizes, on 1 and 2
// threads, and paged attention on the model's heads at several context lengths (decode with
// its cache from DRAM, as in a real step, and from the caches). Every figure is printed beside the
// machine's measured limits (DRAM/L3 read bandwidth, peak FMA GFLOP/s) so it reads as a
// fraction of what the hardware can do. Decode matmuls cycle through enough copies of each
// matrix to exceed the L3, as a real decode step (30 layers, 270 MB of bf16) does.
//
//   alem_kernel_bench [--quick] [--threads 1,2] [--dtypes f32,bf16,f16,int8] [--rows 1,128]
//                     [--model smollm2|tinyllama|llama8b] [--only SHAPE-SUBSTRING] [--no-attention]
//                     [--no-limits] [--exact-kernels]
//                     [--bf16-dot] [--no-amx] [--hot] [--row-major] [--plain-bf16]
//                     [--path stream|packed]
// --exact-kernels keeps small-M matmuls on the f32-conversion kernels (the dot-product kernels'
// before/after); --bf16-dot turns on the bf16 ones (off by default, docs/kernels.md); --no-amx
// keeps bf16 matmuls off the AMX tiles where the CPU has them. --hot runs decode rows on one
// cache-resident W too: the kernel's arithmetic alone, without the memory it streams. Weights
// are handed to the backend as the engine hands them (adopt_weight: block weights interleaved 8
// rows at a time on AVX512-VNNI, bf16 ones coded to 12 bits on AVX-512); --row-major keeps
// GGUF's layout, the kernels before that, and --plain-bf16 keeps bf16 weights at 16 bits.
// --model tinyllama takes the 1.1B shapes (K-quant sized) instead of SmolLM2's, --model llama8b
// Llama-3-8B's. --path forces f32, f16, bf16 and row-major int8 matmuls onto the streaming
// kernels or the packed GEMM at every M (CpuBackend::matmul_with_path), to place the row count
// where the backend switches from one to the other on a new CPU.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/machine_limits.h"

namespace alem {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct MatmulShape {
  const char* name;
  int64_t N, K;
  int per_layer;  // how many such matmuls one transformer layer runs (0: once per token)
};

// A model's matmul shapes, with how many layers repeat them.
struct ModelShapes {
  const char* name;
  int layers;
  std::vector<MatmulShape> matmuls;
  int heads, kv_heads, head_dim;  // attention
};
// SmolLM2-135M: hidden 576, 9 heads x 64, 3 kv heads, intermediate 1536, vocab 49152.
const ModelShapes kSmolLM2 = {"SmolLM2-135M",
                              30,
                              {
                                  {"q/o 576->576", 576, 576, 2},
                                  {"k/v 576->192", 192, 576, 2},
                                  {"gate+up 576->3072", 3072, 576, 1},
                                  {"down 1536->576", 576, 1536, 1},
                                  {"lm_head 576->49152", 49152, 576, 0},
                              },
                              9,
                              3,
                              64};
// TinyLlama-1.1B (--model tinyllama): hidden 2048, 32 heads x 64, 4 kv heads, intermediate
// 5632, vocab 32000. Its K (2048, 5632) divide into K-quant super-blocks of 256.
const ModelShapes kTinyLlama = {"TinyLlama-1.1B",
                                22,
                                {
                                    {"q/o 2048->2048", 2048, 2048, 2},
                                    {"k/v 2048->256", 256, 2048, 2},
                                    {"gate+up 2048->11264", 11264, 2048, 1},
                                    {"down 5632->2048", 2048, 5632, 1},
                                    {"lm_head 2048->32000", 32000, 2048, 0},
                                },
                                32,
                                4,
                                64};
// Llama-3-8B (--model llama8b): hidden 4096, 32 heads x 128, 8 kv heads, intermediate 14336,
// vocab 128256. Its down projection's x (14336 values: 56 KiB in f32, 28 KiB in bf16) no
// longer fits in a 32 KiB L1 beside the weight stream, as the smaller shapes' x does.
const ModelShapes kLlama8B = {"Llama-3-8B",
                              32,
                              {
                                  {"q/o 4096->4096", 4096, 4096, 2},
                                  {"k/v 4096->1024", 1024, 4096, 2},
                                  {"gate+up 4096->28672", 28672, 4096, 1},
                                  {"down 14336->4096", 4096, 14336, 1},
                                  {"lm_head 4096->128256", 128256, 4096, 0},
                              },
                              32,
                              8,
                              128};

struct Options {
  bool quick = false;
  bool attention = true;
  bool limits = true;                    // measure bandwidth and peak FLOP/s first
  bool dot_products = true;              // --exact-kernels: small M without the dot-product kernels
  bool bf16_dot = false;                 // --bf16-dot: bf16 weights on vdpbf16ps too
  bool amx = true;                       // --no-amx: bf16 prefill without AMX tiles
  bool hot = false;                      // --hot: decode rows read a cache-resident W as well
  bool row_major = false;                // --row-major: block weights not interleaved when adopted
  bool plain_bf16 = false;               // --plain-bf16: bf16 weights not coded when adopted
  int path = -1;                         // --path: -1 the backend's choice, 0 stream, 1 packed
  std::string only;                      // run only shapes whose name contains this
  const ModelShapes* model = &kSmolLM2;  // --model smollm2|tinyllama|llama8b
  std::vector<int64_t> rows;             // M values (default: 1, 4, 128, 256; --quick: 1, 128)
  std::vector<int> threads = {1, 2};
  std::vector<DType> dtypes = {DType::F32, DType::BF16, DType::F16, DType::I8};
};

struct Limits {
  std::map<int, double> dram_gbs, l3_gbs, peak_gflops;
};

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) parts.push_back(part);
  return parts;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      o.quick = true;
    } else if (arg == "--no-limits") {
      o.limits = false;
    } else if (arg == "--exact-kernels") {
      o.dot_products = false;
    } else if (arg == "--bf16-dot") {
      o.bf16_dot = true;
    } else if (arg == "--no-amx") {
      o.amx = false;
    } else if (arg == "--row-major") {
      o.row_major = true;
    } else if (arg == "--plain-bf16") {
      o.plain_bf16 = true;
    } else if (arg == "--path" && i + 1 < argc) {
      const std::string path = argv[++i];
      ALEM_CHECK(path == "stream" || path == "packed",
                 "--path must be stream or packed, got '" + path + "'");
      o.path = path == "packed" ? 1 : 0;
    } else if (arg == "--hot") {
      o.hot = true;
    } else if (arg == "--no-attention") {
      o.attention = false;
    } else if (arg == "--threads" && i + 1 < argc) {
      o.threads.clear();
      for (const auto& t : split_commas(argv[++i])) o.threads.push_back(std::stoi(t));
    } else if (arg == "--model" && i + 1 < argc) {
      const std::string name = argv[++i];
      ALEM_CHECK(name == "smollm2" || name == "tinyllama" || name == "llama8b",
                 "--model must be smollm2, tinyllama or llama8b, got '" + name + "'");
      o.model = name == "smollm2" ? &kSmolLM2 : name == "tinyllama" ? &kTinyLlama : &kLlama8B;
    } else if (arg == "--only" && i + 1 < argc) {
      o.only = argv[++i];
    } else if (arg == "--rows" && i + 1 < argc) {
      for (const auto& m : split_commas(argv[++i])) o.rows.push_back(std::stoll(m));
    } else if (arg == "--dtypes" && i + 1 < argc) {
      o.dtypes.clear();
      for (const auto& d : split_commas(argv[++i])) o.dtypes.push_back(parse_dtype(d));
    } else {
      ALEM_FAIL(
          "usage: alem_kernel_bench [--quick] [--threads 1,2] [--dtypes f32,bf16,f16,int8]"
          " [--rows 1,128] [--model smollm2|tinyllama|llama8b] [--only SHAPE-SUBSTRING] "
          "[--no-attention]"
          " [--exact-kernels] "
          "[--bf16-dot] [--no-amx] [--hot] [--row-major] [--path stream|packed]");
    }
  }
  return o;
}

// Copies of one weight matrix, enough to exceed `footprint` bytes, so cycling through them
// reads from DRAM (or, with footprint 0, one copy that stays cache-resident).
std::vector<WeightMatrix> weight_copies(const MatmulShape& shape, DType dtype, size_t footprint) {
  std::vector<float> values(static_cast<size_t>(shape.N * shape.K));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  for (float& v : values) v = dist(rng);
  std::vector<WeightMatrix> copies;
  copies.push_back(make_weight_matrix(values.data(), shape.N, shape.K, dtype));
  const size_t each = copies[0].bytes();
  const size_t count =
      footprint == 0 ? 1 : std::clamp<size_t>((footprint + each - 1) / each, 2, 5000);
  while (copies.size() < count) {
    WeightMatrix w;
    w.dtype = dtype;
    w.rows = shape.N;
    w.cols = shape.K;
    w.data.resize(copies[0].data.size());
    std::memcpy(w.data.data(), copies[0].data.data(), copies[0].data.size());
    w.scales = copies[0].scales;
    copies.push_back(std::move(w));
  }
  return copies;
}

// Seconds per matmul call, cycling through the copies (with copies larger than the L3 every
// call reads its weights from DRAM). The machine may be shared, so calls are timed one by one
// and the best is kept; one-thread calls use the thread's CPU clock, which does not run while
// the thread is descheduled, and multi-thread calls the wall clock.
struct CallTimes {
  double best = 1e30;  // the fastest call
  double mean = 0;     // all calls: what a model's step pays on a shared machine
};
CallTimes time_matmul(const CpuBackend& cpu, const std::vector<WeightMatrix>& copies, int64_t M,
                      const std::vector<float>& x, std::vector<float>& y, double min_seconds,
                      int path) {
  // The backend's choice of kernel, or the one --path forces (block weights have one path).
  const auto matmul = [&](const WeightMatrix& w) {
    if (path < 0) {
      cpu.matmul(x.data(), M, w, nullptr, y.data());
    } else {
      cpu.matmul_with_path(x.data(), M, w, nullptr, y.data(), path == 1);
    }
  };
  matmul(copies[0]);  // warm-up (and thread pool start)
  const bool cpu_clock = cpu.max_threads() == 1;
  CallTimes t;
  double spent = 0, total = 0;
  int64_t calls = 0;
  while (calls < 20 || (spent < min_seconds && calls < 20000)) {
    for (const WeightMatrix& w : copies) {
      const double wall_start = now_seconds(), cpu_start = thread_cpu_seconds();
      matmul(w);
      const double elapsed =
          cpu_clock ? thread_cpu_seconds() - cpu_start : now_seconds() - wall_start;
      t.best = std::min(t.best, elapsed);
      total += elapsed;
      spent += now_seconds() - wall_start;
      ++calls;
    }
  }
  t.mean = total / static_cast<double>(calls);
  return t;
}

// "42%", or "-" where the limit was not measured (--no-limits).
std::string percent_of(double value, double limit) {
  if (limit <= 1e-6) return "-";
  char text[32];
  std::snprintf(text, sizeof text, "%.0f%%", 100 * value / limit);
  return text;
}

// Seconds per call for every (shape, dtype, M, threads); prints one table row each.
std::map<std::string, double> bench_matmul(const Options& o, const Limits& limits) {
  std::map<std::string, double> results;
  const std::vector<int64_t> rows = !o.rows.empty() ? o.rows
                                    : o.quick       ? std::vector<int64_t>{1, 128}
                                                    : std::vector<int64_t>{1, 4, 128, 256};
  const double min_seconds = o.quick ? 0.05 : 0.25;
  std::printf("\n## matmul y[M][N] = x[M][K] W[N][K]^T\n");
  std::printf(
      "decode rows (M<16) cycle through copies of W larger than the L3 (DRAM-bound, as in a\n"
      "real decode step); prefill rows reuse one W (compute-bound). Best of many calls (the\n"
      "rates are from it) and their mean; 1 thread on the thread's CPU clock, 2 threads on the\n"
      "wall clock.\n\n");
  std::printf(
      "| shape | dtype | M | thr | us/call | mean us | GB/s (W) | %% of DRAM BW | GFLOP/s | %% of "
      "peak |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const MatmulShape& shape : o.model->matmuls) {
    if (std::string(shape.name).find(o.only) == std::string::npos) continue;
    for (DType dtype : o.dtypes) {
      auto cold = weight_copies(shape, dtype, size_t(768) << 20);
      std::vector<WeightMatrix> hot = weight_copies(shape, dtype, 0);
      CpuBackend adopter(cpu::configured_isa(), 1, o.dot_products, o.bf16_dot, o.amx);
      adopter.set_interleave_blocks(!o.row_major);
      adopter.set_code_bf16(!o.plain_bf16);
      for (auto* set : {&cold, &hot}) {
        for (WeightMatrix& w : *set) adopter.adopt_weight(w);
      }
      for (int64_t M : rows) {
        const bool decode = M < CpuBackend::kPackedMinRows && !o.hot;
        std::vector<float> x(static_cast<size_t>(M * shape.K), 0.01f), y(M * shape.N);
        for (int threads : o.threads) {
          CpuBackend cpu(cpu::configured_isa(), threads, o.dot_products, o.bf16_dot, o.amx);
          const CallTimes times =
              time_matmul(cpu, decode ? cold : hot, M, x, y, min_seconds, o.path);
          const double seconds = times.best;
          const double gbs = cold[0].bytes() / seconds / 1e9;
          const double gflops = 2.0 * M * shape.N * shape.K / seconds / 1e9;
          std::printf("| %s | %s | %lld | %d | %.1f | %.1f | %.1f | %s | %.1f | %s |\n", shape.name,
                      dtype_name(dtype).c_str(), static_cast<long long>(M), threads, seconds * 1e6,
                      times.mean * 1e6, gbs, percent_of(gbs, limits.dram_gbs.at(threads)).c_str(),
                      gflops, percent_of(gflops, limits.peak_gflops.at(threads)).c_str());
          std::fflush(stdout);
          results[std::string(shape.name) + "|" + dtype_name(dtype) + "|" + std::to_string(M) +
                  "|" + std::to_string(threads)] = seconds;
        }
      }
    }
  }
  return results;
}

// Tokens/s of a whole model's matmuls (30 layers + LM head) from the per-shape timings.
void print_model_projection(const Options& o, const std::map<std::string, double>& results) {
  std::printf("\n## %s, all matmuls of one step (%d layers + LM head), projected\n\n",
              o.model->name, o.model->layers);
  std::printf(
      "| dtype | thr | decode tok/s (M=1) | prefill tok/s (M=128) | prefill tok/s (M=256) |\n");
  std::printf("|---|---:|---:|---:|---:|\n");
  for (DType dtype : o.dtypes) {
    for (int threads : o.threads) {
      std::printf("| %s | %d |", dtype_name(dtype).c_str(), threads);
      for (int64_t M : {1, 128, 256}) {
        double seconds = 0;
        bool complete = true;
        for (const MatmulShape& shape : o.model->matmuls) {
          const auto it = results.find(std::string(shape.name) + "|" + dtype_name(dtype) + "|" +
                                       std::to_string(M) + "|" + std::to_string(threads));
          if (it == results.end()) {
            complete = false;
            break;
          }
          seconds += it->second * (shape.per_layer ? shape.per_layer * o.model->layers : 1);
        }
        if (complete) {
          std::printf(" %.0f |", M / seconds);
        } else {
          std::printf(" - |");
        }
      }
      std::printf("\n");
    }
  }
}

// Paged attention on the model's heads, one layer per call. "decode" reads a cache that came
// from DRAM, as in a real decode step (every layer's cache and the weights streamed through since
// this layer's last step): each call takes the next of enough copies to exceed the L3. "decode,
// hot" repeats one layer's cache (the arithmetic alone); prefill reuses one cache too.
void bench_attention(const Options& o) {
  const ModelShapes& m = *o.model;
  std::printf("\n## paged attention, %s: %d heads / %d kv heads x %d, block 16, one layer\n\n",
              m.name, m.heads, m.kv_heads, m.head_dim);
  std::printf(
      "| case | cache | context | thr | us/call | mean us | KV GB/s |\n"
      "|---|---|---:|---:|---:|---:|---:|\n");
  const AttentionShape shape{m.heads, m.kv_heads, m.head_dim, 16,
                             1.f / std::sqrt(static_cast<float>(m.head_dim))};
  const size_t block_floats = size_t(shape.block_size) * shape.num_kv_heads * shape.head_dim;
  // Enough blocks for 96 MiB of f32 cache (48 of bf16), above any L3 here, and for one sequence
  // of the longest context.
  const int max_context = 8192;
  const int context_blocks = max_context / shape.block_size + 1;
  const int pool_blocks =
      std::max<int>(context_blocks, (96 << 20) / (block_floats * sizeof(float) * 2));
  // Held as the engine holds its cache (a sensitive tensor: SensitiveBuffer).
  const size_t elements = size_t(pool_blocks) * block_floats;
  SensitiveBuffer k_buffer(elements * sizeof(float)), v_buffer(elements * sizeof(float));
  SensitiveBuffer k16_buffer(elements * 2), v16_buffer(elements * 2);
  float* k = k_buffer.as<float>();
  float* v = v_buffer.as<float>();
  uint16_t* k16 = k16_buffer.as<uint16_t>();
  uint16_t* v16 = v16_buffer.as<uint16_t>();
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (size_t i = 0; i < elements; ++i) {
    k[i] = normal(rng);
    v[i] = normal(rng);
    k16[i] = f32_to_bf16(k[i]);
    v16[i] = f32_to_bf16(v[i]);
  }
  std::vector<float> q(256 * shape.num_heads * shape.head_dim), out(q.size());
  for (float& x : q) x = normal(rng);
  // sequences > 1: a serving step's decode rows, one per sequence, each with its own cache.
  struct Case {
    const char* name;
    int q_count, start_pos;
    bool cold;
    int sequences = 1;
  };
  const Case cases[] = {{"decode", 1, 127, true},
                        {"decode", 1, 511, true},
                        {"decode", 1, 2047, true},
                        {"decode", 1, 8191, true},
                        {"decode, hot", 1, 127, false},
                        {"decode, hot", 1, 2047, false},
                        {"decode, 16 sequences", 1, 127, true, 16},
                        {"decode, 16 sequences, hot", 1, 127, false, 16},
                        {"prefill 256", 256, 0, false},
                        {"prefill 256", 256, 1792, false}};
  for (const Case& c : cases) {
    const int context = c.start_pos + c.q_count;
    const int blocks = (context + shape.block_size - 1) / shape.block_size * c.sequences;
    // Copies of one layer's cache in the pool (all sequences' blocks): the calls walk them in
    // turn.
    const int copies = c.cold ? std::max(1, pool_blocks / blocks) : 1;
    std::vector<int32_t> table(size_t(copies) * blocks);
    for (int copy = 0; copy < copies; ++copy) {
      for (int i = 0; i < blocks; ++i) {  // scattered within the copy's blocks
        table[size_t(copy) * blocks + i] = copy * blocks + (i * 37) % blocks;
      }
    }
    for (DType dtype : {DType::F32, DType::BF16}) {
      const KVCacheLayerView cache =
          dtype == DType::F32 ? KVCacheLayerView{k, v, dtype} : KVCacheLayerView{k16, v16, dtype};
      for (int threads : o.threads) {
        CpuBackend cpu(cpu::configured_isa(), threads);
        double best = 1e30, total = 0;
        const int reps =
            c.cold ? std::max(o.quick ? 5 : 20, std::min(copies, 200)) : (o.quick ? 5 : 20);
        for (int rep = 0; rep < reps; ++rep) {
          std::vector<AttentionSequence> seqs(c.sequences);
          for (int i = 0; i < c.sequences; ++i) {
            seqs[i] = {i * c.q_count, c.q_count, c.start_pos,
                       table.data() + size_t(rep % copies) * blocks + i * (blocks / c.sequences)};
          }
          const double start = threads == 1 ? thread_cpu_seconds() : now_seconds();
          cpu.paged_attention(shape, seqs.data(), c.sequences, q.data(), cache, out.data());
          const double t = (threads == 1 ? thread_cpu_seconds() : now_seconds()) - start;
          best = std::min(best, t);
          total += t;
        }
        const double kv_bytes =
            2.0 * context * c.sequences * shape.num_kv_heads * shape.head_dim * dtype_size(dtype);
        std::printf("| %s | %s | %d | %d | %.1f | %.1f | %.1f |\n", c.name,
                    dtype_name(dtype).c_str(), context, threads, best * 1e6, total / reps * 1e6,
                    kv_bytes / best / 1e9);
        std::fflush(stdout);
      }
    }
  }
}

int run(int argc, char** argv) {
  const Options o = parse_options(argc, argv);
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  std::printf("# alem kernel benchmark\n\n%s\nload average at start: %.1f\n\n",
              cpu_description().c_str(), load[0]);
  Limits limits;
  std::printf("| threads | DRAM read GB/s (1 GiB) | L3 read GB/s (64 MiB) | peak f32 GFLOP/s |\n");
  std::printf("|---:|---:|---:|---:|\n");
  for (int threads : o.threads) {
    limits.dram_gbs[threads] =
        o.limits ? measure_memory_bandwidth_gbs(size_t(1) << 30, threads) : 1e-9;
    limits.l3_gbs[threads] =
        o.limits ? measure_memory_bandwidth_gbs(size_t(64) << 20, threads) : 1e-9;
    limits.peak_gflops[threads] = o.limits ? measure_peak_gflops(threads) : 1e-9;
    std::printf("| %d | %.1f | %.1f | %.1f |\n", threads, limits.dram_gbs[threads],
                limits.l3_gbs[threads], limits.peak_gflops[threads]);
    std::fflush(stdout);
  }
  const auto results = bench_matmul(o, limits);
  print_model_projection(o, results);
  if (o.attention) bench_attention(o);
  return 0;
}

}  // namespace
}  // namespace alem

int main(int argc, char** argv) {
  try {
    return alem::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "alem_kernel_bench: %s\n", e.what());
    return 1;
  }
}
