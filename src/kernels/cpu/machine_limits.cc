// Measures memory bandwidth and peak FMA throughput (see machine_limits.h). The vector loops
// carry function-level target attributes and are only called after a CPUID check, so this file
// builds with the project's baseline flags and runs anywhere.
#include "kernels/cpu/machine_limits.h"

#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <new>
#include <sstream>
#include <vector>

#include "core/aligned_buffer.h"
#include "kernels/cpu/cpu_kernels.h"

namespace alem {
namespace {

constexpr size_t kPrefetchFloats = 1024;  // 4 KiB ahead (prefetches past the end are harmless)

__attribute__((target("avx512f"))) float sum_floats_avx512(const float* p, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 64 <= n; i += 64) {
    // Software prefetch as the matmul kernels do; hardware prefetch alone leaves a core's
    // streaming bandwidth well below what it can pull.
    for (int line = 0; line < 4; ++line) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i + kPrefetchFloats + 16 * line), _MM_HINT_T0);
    }
    a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx2"))) float sum_floats_avx2(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    _mm_prefetch(reinterpret_cast<const char*>(p + i + kPrefetchFloats), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + i + kPrefetchFloats + 16), _MM_HINT_T0);
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0;
  for (float v : lanes) s += v;
  return s;
}

float sum_floats_scalar(const float* p, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  return s0 + s1 + s2 + s3;
}

// `iterations` rounds of 12 independent FMA chains (named variables, so they stay in registers;
// 12 chains cover the 4-cycle FMA latency on two FMA ports).
#define ALEM_TWELVE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
constexpr int kFmaChains = 12;

__attribute__((target("avx512f"))) void fma_loop_avx512(int64_t iterations, float* sink) {
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
#define ALEM_INIT(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
#define ALEM_STEP(i) acc##i = _mm512_fmadd_ps(acc##i, a, b);
#define ALEM_SUM(i) total = _mm512_add_ps(total, acc##i);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m512 total = _mm512_setzero_ps();
  ALEM_TWELVE(ALEM_SUM)
  *sink = _mm512_reduce_add_ps(total);
#undef ALEM_INIT
#undef ALEM_STEP
#undef ALEM_SUM
}

__attribute__((target("avx2,fma"))) void fma_loop_avx2(int64_t iterations, float* sink) {
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
#define ALEM_INIT(i) __m256 acc##i = _mm256_set1_ps(static_cast<float>(i));
#define ALEM_STEP(i) acc##i = _mm256_fmadd_ps(acc##i, a, b);
#define ALEM_SUM(i) total = _mm256_add_ps(total, acc##i);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m256 total = _mm256_setzero_ps();
  ALEM_TWELVE(ALEM_SUM)
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, total);
  *sink = lanes[0] + lanes[7];
#undef ALEM_INIT
#undef ALEM_STEP
#undef ALEM_SUM
}
// The same shape of loop on the dot-product instructions: vdpbf16ps (32 bf16 multiply-adds per
// instruction) and vpdpbusd (64 int8 multiply-adds).
__attribute__((target("avx512f,avx512bf16"))) void dot_loop_bf16(int64_t iterations, float* sink) {
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3F80), b = (__m512bh)_mm512_set1_epi16(0x3380);
#define ALEM_INIT(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
#define ALEM_STEP(i) acc##i = _mm512_dpbf16_ps(acc##i, a, b);
#define ALEM_SUM(i) total = _mm512_add_ps(total, acc##i);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m512 total = _mm512_setzero_ps();
  ALEM_TWELVE(ALEM_SUM)
  *sink = _mm512_reduce_add_ps(total);
#undef ALEM_INIT
#undef ALEM_STEP
#undef ALEM_SUM
}

__attribute__((target("avx512f,avx512vnni"))) void dot_loop_int8(int64_t iterations, float* sink) {
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(-1);
#define ALEM_INIT(i) __m512i acc##i = _mm512_set1_epi32(i);
#define ALEM_STEP(i) acc##i = _mm512_dpbusd_epi32(acc##i, a, b);
#define ALEM_SUM(i) total = _mm512_add_epi32(total, acc##i);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m512i total = _mm512_setzero_si512();
  ALEM_TWELVE(ALEM_SUM)
  *sink = static_cast<float>(_mm512_reduce_add_epi32(total));
#undef ALEM_INIT
#undef ALEM_STEP
#undef ALEM_SUM
}
// vpdpbusd on 256-bit registers (32 int8 multiply-adds), the dot product of the AVX-VNNI kernel
// set (cpu::Isa::kAvxVnni): the VEX form of AVX-VNNI, or the EVEX form where only AVX512-VNNI
// with AVX512-VL has it.
#define ALEM_INIT(i) __m256i acc##i = _mm256_set1_epi32(i);
#define ALEM_SUM(i) total = _mm256_add_epi32(total, acc##i);
#define ALEM_STEP(i) acc##i = _mm256_dpbusd_avx_epi32(acc##i, a, b);
__attribute__((target("avx2,avxvnni"))) void dot_loop_int8_avx_vnni(int64_t iterations,
                                                                    float* sink) {
  const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(-1);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m256i total = _mm256_setzero_si256();
  ALEM_TWELVE(ALEM_SUM)
  *sink = static_cast<float>(_mm256_extract_epi32(total, 0) + _mm256_extract_epi32(total, 7));
}
#undef ALEM_STEP
#define ALEM_STEP(i) acc##i = _mm256_dpbusd_epi32(acc##i, a, b);
__attribute__((target("avx512f,avx512vl,avx512vnni"))) void dot_loop_int8_256_evex(
    int64_t iterations, float* sink) {
  const __m256i a = _mm256_set1_epi8(1), b = _mm256_set1_epi8(-1);
  ALEM_TWELVE(ALEM_INIT)
  for (int64_t it = 0; it < iterations; ++it) {
    ALEM_TWELVE(ALEM_STEP)
  }
  __m256i total = _mm256_setzero_si256();
  ALEM_TWELVE(ALEM_SUM)
  *sink = static_cast<float>(_mm256_extract_epi32(total, 0) + _mm256_extract_epi32(total, 7));
}
#undef ALEM_STEP
#undef ALEM_SUM
#undef ALEM_INIT
#undef ALEM_TWELVE

// A zeroed anonymous mapping, advised onto huge pages or kept off them.
struct Mapping {
  void* data = MAP_FAILED;
  size_t bytes = 0;
  Mapping(size_t n, bool huge_pages) : bytes(n) {
    data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data == MAP_FAILED) throw std::bad_alloc();
    madvise(data, bytes, huge_pages ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  }
  ~Mapping() { munmap(data, bytes); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

}  // namespace

// Does not advance while the thread is descheduled, so a slice timed with it shows the
// hardware's speed even on a machine shared with other work.
double thread_cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

// Both measurements time many short slices, each thread on its own CPU clock, and keep the best
// slice (rated by its slowest thread): on a shared or virtualised machine that shows what the
// hardware can do, while a single wall-clock run measures mostly the neighbours.
double measure_memory_bandwidth_gbs(size_t bytes, int threads, bool huge_pages) {
  threads = std::max(1, threads);
  // Slices of at least 4 MiB per thread (past the L2), read in order, so by the time a slice is
  // read again the whole buffer has been read since: a buffer above the L3 is read from DRAM.
  const size_t slice_floats =
      std::max<size_t>(size_t(4) << 20, bytes / 32) / sizeof(float) / 64 / threads * 64 * threads;
  const size_t slices = std::max<size_t>(1, bytes / sizeof(float) / slice_floats);
  // 2 MiB aligned so every huge page the kernel can give lies wholly inside.
  const size_t used = slices * slice_floats * sizeof(float);
  Mapping mapping(used + (size_t{2} << 20), huge_pages);
  float* data =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(mapping.data) + (size_t{2} << 20) - 1) &
                               ~((size_t{2} << 20) - 1));
  const cpu::Isa isa = cpu::vector_isa(cpu::best_supported_isa());
  const size_t per_thread = slice_floats / threads;
  std::memset(data, 1, used);
  const int passes = bytes > (size_t(256) << 20) ? 6 : 40;
  double best = 0;
  std::atomic<float> sink{0};
  std::vector<double> seconds(threads);
  for (int pass = 0; pass < passes; ++pass) {
    for (size_t slice = 0; slice < slices; ++slice) {
      const float* slice_data = data + slice * slice_floats;
#pragma omp parallel num_threads(threads)
      {
        const int index = omp_get_thread_num();
        const float* part = slice_data + per_thread * index;
        const double start = thread_cpu_seconds();
        float s;
        if (isa == cpu::Isa::kAvx512) {
          s = sum_floats_avx512(part, per_thread);
        } else if (isa == cpu::Isa::kAvx2) {
          s = sum_floats_avx2(part, per_thread);
        } else {
          s = sum_floats_scalar(part, per_thread);
        }
        seconds[index] = thread_cpu_seconds() - start;
        sink.store(s, std::memory_order_relaxed);
      }
      const double slowest = *std::max_element(seconds.begin(), seconds.end());
      best = std::max(best, slice_floats * sizeof(float) / slowest / 1e9);
    }
  }
  return best;
}

double measure_step_read_gbs(size_t bytes, int threads, int passes) {
  threads = std::max(1, threads);
  passes = std::max(1, passes);
  const size_t buffer_bytes = std::min(std::max(bytes, size_t{4} << 20), size_t{1} << 30);
  // Whole 4 KiB pieces per thread, so every share is a run of aligned vector loads.
  const size_t per_thread = std::max<size_t>(1, buffer_bytes / threads / 4096) * 1024;  // floats
  const size_t buffer_floats = per_thread * threads;
  Mapping mapping(buffer_floats * sizeof(float) + (size_t{2} << 20), true);
  float* data =
      reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(mapping.data) + (size_t{2} << 20) - 1) &
                               ~((size_t{2} << 20) - 1));
  std::memset(data, 1, buffer_floats * sizeof(float));
  const cpu::Isa isa = cpu::vector_isa(cpu::best_supported_isa());
  // Each pass reads `bytes`: whole buffers, then the part of one that is left.
  const size_t pass_floats = std::max<size_t>(bytes / sizeof(float), 1);
  std::atomic<float> sink{0};
  const auto read = [&](size_t floats) {
    const size_t share = floats / buffer_floats * per_thread +
                         std::min(per_thread, floats % buffer_floats / threads / 16 * 16);
#pragma omp parallel num_threads(threads)
    {
      const float* mine = data + per_thread * omp_get_thread_num();
      float s = 0;
      for (size_t done = 0; done < share; done += per_thread) {
        const size_t n = std::min(per_thread, share - done);
        s += isa == cpu::Isa::kAvx512 ? sum_floats_avx512(mine, n)
             : isa == cpu::Isa::kAvx2 ? sum_floats_avx2(mine, n)
                                      : sum_floats_scalar(mine, n);
      }
      sink.store(s, std::memory_order_relaxed);
    }
    return share * threads * sizeof(float);
  };
  read(pass_floats);  // the first touch of the pages is not part of the measurement
  const auto start = std::chrono::steady_clock::now();
  size_t total = 0;
  for (int pass = 0; pass < passes; ++pass) total += read(pass_floats);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(total) / std::max(seconds, 1e-9) / 1e9;
}

double measure_peak_gflops(int threads) {
  threads = std::max(1, threads);
  const cpu::Isa isa = cpu::vector_isa(cpu::best_supported_isa());
  const int lanes = isa == cpu::Isa::kAvx512 ? 16 : (isa == cpu::Isa::kAvx2 ? 8 : 1);
  const int accumulators = isa == cpu::Isa::kScalar ? 8 : kFmaChains;
  const int64_t iterations = 1'000'000;
  double best = 0;
  std::vector<double> seconds(threads);
  for (int attempt = 0; attempt < 20; ++attempt) {
#pragma omp parallel num_threads(threads)
    {
      const double start = thread_cpu_seconds();
      float sink = 0;
      if (isa == cpu::Isa::kAvx512) {
        fma_loop_avx512(iterations, &sink);
      } else if (isa == cpu::Isa::kAvx2) {
        fma_loop_avx2(iterations, &sink);
      } else {
        float acc[8] = {1, 2, 3, 4, 5, 6, 7, 8};
        for (int64_t it = 0; it < iterations; ++it) {
          for (float& a : acc) a = a * 0.999999f + 1e-7f;
        }
        sink = acc[0];
      }
      volatile float keep = sink;
      (void)keep;
      seconds[omp_get_thread_num()] = thread_cpu_seconds() - start;
    }
    const double slowest = *std::max_element(seconds.begin(), seconds.end());
    best = std::max(best, 2.0 * lanes * accumulators * iterations * threads / slowest / 1e9);
  }
  return best;
}

double measure_peak_dot_gops(DotKind kind, int threads) {
  threads = std::max(1, threads);
  const bool bf16 = kind == DotKind::kBf16;
  // The AVX-VNNI kernel set's int8 dot products are 256 bits wide, whatever else the CPU has.
  const bool avx_vnni = !bf16 && cpu::configured_isa() == cpu::Isa::kAvxVnni;
  if (bf16 ? !cpu::has_avx512_bf16() : !avx_vnni && !cpu::has_avx512_vnni()) return 0;
  const int64_t iterations = 1'000'000;
  const int ops_per_instruction = bf16 || avx_vnni ? 2 * 32 : 2 * 64;
  double best = 0;
  std::vector<double> seconds(threads);
  for (int attempt = 0; attempt < 20; ++attempt) {
#pragma omp parallel num_threads(threads)
    {
      const double start = thread_cpu_seconds();
      float sink = 0;
      if (bf16) {
        dot_loop_bf16(iterations, &sink);
      } else if (avx_vnni) {
        (cpu::has_avx_vnni() ? dot_loop_int8_avx_vnni : dot_loop_int8_256_evex)(iterations, &sink);
      } else {
        dot_loop_int8(iterations, &sink);
      }
      volatile float keep = sink;
      (void)keep;
      seconds[omp_get_thread_num()] = thread_cpu_seconds() - start;
    }
    const double slowest = *std::max_element(seconds.begin(), seconds.end());
    best = std::max(
        best, double(ops_per_instruction) * kFmaChains * iterations * threads / slowest / 1e9);
  }
  return best;
}

std::string cpu_description() {
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  }
  auto read_sysfs = [](const std::string& path) {
    std::ifstream f(path);
    std::string v;
    std::getline(f, v);
    return v;
  };
  std::ostringstream out;
  out << model << ", " << omp_get_num_procs() << " logical CPUs";
  const std::string l2 = read_sysfs("/sys/devices/system/cpu/cpu0/cache/index2/size");
  const std::string l3 = read_sysfs("/sys/devices/system/cpu/cpu0/cache/index3/size");
  if (!l2.empty()) out << ", L2 " << l2 << "/core";
  if (!l3.empty()) out << ", L3 " << l3;
  out << "; flags:";
  const std::pair<const char*, bool> flags[] = {
      {"avx2", __builtin_cpu_supports("avx2")},
      {"fma", __builtin_cpu_supports("fma")},
      {"f16c", __builtin_cpu_supports("f16c")},
      {"avx512f", __builtin_cpu_supports("avx512f")},
      {"avx512bw", __builtin_cpu_supports("avx512bw")},
      {"avx512vl", __builtin_cpu_supports("avx512vl")},
      {"avx512bf16", __builtin_cpu_supports("avx512bf16")},
      {"avx512vnni", __builtin_cpu_supports("avx512vnni")},
      {"avxvnni", __builtin_cpu_supports("avxvnni")},
      {"amx-tile", __builtin_cpu_supports("amx-tile")},
      {"amx-bf16", __builtin_cpu_supports("amx-bf16")},
      {"amx-int8", __builtin_cpu_supports("amx-int8")}};
  for (const auto& [flag, present] : flags) {
    if (present) out << ' ' << flag;
  }
  out << "; kernels: " << cpu::isa_name(cpu::configured_isa())
      << (!cpu::amx::usable() ? ""
          : __builtin_cpu_supports("amx-int8") && cpu::has_avx512_vnni()
              ? " + AMX tiles (prefill: bf16 on AMX-BF16, block weights on AMX-INT8)"
              : " + AMX-BF16 tiles (bf16 prefill)")
      << ", stream prefetch: " << cpu::stream_prefetch_name(cpu::stream_prefetch)
      << ", OpenMP threads: " << omp_get_max_threads();
  return out.str();
}

}  // namespace alem
