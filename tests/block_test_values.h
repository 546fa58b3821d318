// What the kernel tests of ggml block weights share: seeded uniform inputs, and the sums a block
// kernel's error is bounded by (test_backend_ops.cc, test_cpu_interleaved_blocks.cc,
// test_cuda_kernels.cc). The block kernels quantise x per block of 32 values (16 bits: error <=
// amax_b / 65534 per value of block b; 8 bits: amax_b / 254), so an output's error is bounded by
// sum_b (amax_b x sum_{k in b} |w_k|) over that divisor, plus the f32 summation's share of
// sum |x w|.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace alem::test {

inline std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Per output (m, n) of x[M][K] times a weight row: sum |x w| and, per block of 32, the largest
// |x| times sum |w| (the block kernels' activation rounding scales with it).
struct BlockSums {
  double product = 0;
  std::vector<double> amax_times_w;  // one per block
};
inline BlockSums block_sums(const std::vector<float>& x, int64_t m, int64_t K, const float* w_row) {
  BlockSums sums;
  for (int64_t b = 0; b < K / 32; ++b) {
    double amax = 0, w_abs = 0;
    for (int64_t k = b * 32; k < b * 32 + 32; ++k) {
      amax = std::max(amax, std::fabs(double(x[m * K + k])));
      w_abs += std::fabs(double(w_row[k]));
      sums.product += std::fabs(double(x[m * K + k]) * w_row[k]);
    }
    sums.amax_times_w.push_back(amax * w_abs);
  }
  return sums;
}

}  // namespace alem::test
