// The CPU backend's interleaved block kernels at ggml's 8-bit activation precision
// (ALEM_CPU_DOT=all): every interleaved block type on every instruction set this CPU runs, held to
// that precision's bound (tests/block_test_values.h) against the reference backend, and shown to
// round beyond the 16-bit bound, so the mode is really taken. The 16-bit mode of the same kernels
// is BackendOps.MatmulGgmlBlockTypes (test_backend_ops.cc).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#include "model/weights.h"
#include "tests/block_test_values.h"

namespace alem {
namespace {

using test::block_sums;
using test::BlockSums;
using test::random_values;

// ALEM_CPU_DOT=all on every interleaved block type: x at ggml's 8-bit precision (one scale per
// 32 values), held to that precision's bound, and no longer to the 16-bit one.
// AVX2 does the same on its byte kernels (its Q8_0 kernel, on int16 products, keeps 16 bits),
// and AVX2 with AVX-VNNI on vpdpbusd.
class CpuInterleavedBlocks : public ::testing::TestWithParam<cpu::Isa> {};

TEST_P(CpuInterleavedBlocks, EightBitActivationsAreHeldToTheirBound) {
  if (!cpu::isa_supported(GetParam())) GTEST_SKIP() << "this CPU lacks the instruction set";
  CpuBackend cpu(GetParam(), 2, true, /*bf16_dot_products=*/true);
  if (!cpu.interleaves_blocks()) GTEST_SKIP() << "no interleaved block kernels on this CPU";
  ReferenceBackend ref;
  uint32_t seed = 900;
  bool beyond_16_bit_bound = false;
  for (DType dtype :
       {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL,
        DType::IQ4_XS, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    for (int64_t M : {1, 3, 6, 7, 33}) {
      const int64_t N = 40, K = dtype_is_super_block(dtype) ? 768 : 608;
      const auto x = random_values(M * K, seed += 3, -2.f, 2.f);
      const auto values = random_values(N * K, seed + 1);
      WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
      std::vector<float> want(M * N), got(M * N);
      ref.matmul(x.data(), M, w, nullptr, want.data());
      cpu.adopt_weight(w);
      ASSERT_EQ(w.layout, BlockLayout::kInterleaved8);
      cpu.matmul(x.data(), M, w, nullptr, got.data());
      std::vector<float> w_row(K);
      for (int64_t n = 0; n < N; ++n) {
        dequantize_row(w, n, w_row.data());
        for (int64_t m = 0; m < M; ++m) {
          const BlockSums sums = block_sums(x, m, K, w_row.data());
          double bound8 = 0, bound16 = 0;
          for (double a : sums.amax_times_w) bound8 += a / 127 * 0.51, bound16 += a / 65534;
          const double product = sums.product;
          const double error = std::fabs(double(got[m * N + n]) - want[m * N + n]);
          ASSERT_LE(error, bound8 + 1e-5 * product)
              << dtype_name(dtype) << " M=" << M << " at " << m << "," << n;
          beyond_16_bit_bound |= error > bound16 + 1e-5 * product;
        }
      }
    }
  }
  EXPECT_TRUE(beyond_16_bit_bound) << "the 8-bit path rounded no more than the 16-bit one";
}

INSTANTIATE_TEST_SUITE_P(Isas, CpuInterleavedBlocks,
                         ::testing::Values(cpu::Isa::kAvx512, cpu::Isa::kAvx2, cpu::Isa::kAvxVnni),
                         [](const auto& info) { return std::string(cpu::isa_name(info.param)); });

}  // namespace
}  // namespace alem
