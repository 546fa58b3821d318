// How the CPU backend's driver files (cpu_backend.cc, cpu_backend_matmul.cc) split an op over
// OpenMP threads: one place for the pool wake-up threshold and the aligned range split.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu_threads {

// Runs body(thread_index, thread_count) on up to `threads` OpenMP threads (inline when 1), each
// with the calling thread's light-stream prefetch choice (cpu::light_prefetch_now).
template <typename Body>
void run_on_threads(int threads, const Body& body) {
  if (threads <= 1) {
    body(0, 1);
    return;
  }
  const cpu::LightPrefetch choice = cpu::light_prefetch_now;
#pragma omp parallel num_threads(threads)
  {
    const cpu::ScopedLightPrefetch scoped(choice);
    body(omp_get_thread_num(), omp_get_num_threads());
  }
}

// The part [begin, end) of `total` items that `index` of `count` workers takes, in whole units
// of `align` items (the last part takes the remainder).
inline std::pair<int64_t, int64_t> split_range(int64_t total, int count, int index, int64_t align) {
  const int64_t units = (total + align - 1) / align;
  const int64_t begin = units * index / count * align;
  const int64_t end = units * (index + 1) / count * align;
  return {std::min(begin, total), std::min(end, total)};
}

// Work smaller than this (in multiply-adds or weight bytes) runs on one thread: waking the pool
// costs a few microseconds.
constexpr double kMinParallelMacs = 1 << 18;

inline int threads_for(double work, int max_threads) {
  return work < kMinParallelMacs ? 1 : max_threads;
}

}  // namespace alem::cpu_threads
