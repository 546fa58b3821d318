// Kernel correctness: the "reference" backend against independent math (a double-precision
// triple loop, a hand-computed attention, a naive contiguous attention), then what is specific
// to the "cpu" backend, at every instruction set this machine runs, against "reference": both
// matmul paths, rope's edge cases, long contexts and the thread split of attention. Every op on
// every backend, f32 and bf16 KV caches included, is in the conformance suite
// test_backend_ops.cc. The timing side of the same ops is bench/kernel_bench.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/timed_backend.h"
#include "model/gguf_quant.h"
#include "tests/paged_block_tables.h"

namespace alem {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

const DType kAllDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::I8};

// Every ISA this CPU can run, so AVX2 and scalar kernels are tested on an AVX-512 machine too.
std::vector<cpu::Isa> runnable_isas() {
  std::vector<cpu::Isa> isas;
  for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvxVnni, cpu::Isa::kAvx512}) {
    if (cpu::isa_supported(isa)) isas.push_back(isa);
  }
  return isas;
}

// |got - want| <= tol * scale elementwise, reporting the first failure with its index.
void expect_close(const std::vector<float>& got, const std::vector<float>& want,
                  const std::vector<float>& scale, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = tol * std::max<double>(scale[i], 1e-30);
    ASSERT_LE(std::fabs(double(got[i]) - want[i]), bound)
        << what << " at " << i << ": got " << got[i] << " want " << want[i];
  }
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const std::string& what) {
  std::vector<float> scale(want.size());
  for (size_t i = 0; i < want.size(); ++i) scale[i] = std::max(1.f, std::fabs(want[i]));
  expect_close(got, want, scale, tol, what);
}

// ---------------------------------------------------------------------------------------------
// The reference backend against independent math.

TEST(ReferenceKernels, MatmulMatchesDoubleTripleLoop) {
  ReferenceBackend ref;
  const int64_t M = 5, N = 7, K = 64;
  const auto x = random_values(M * K, 1);
  const auto values = random_values(N * K, 2);
  const auto bias = random_values(N, 3);
  for (DType dtype : kAllDtypes) {
    const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
    std::vector<float> y(M * N), want(M * N), scale(M * N);
    ref.matmul(x.data(), M, w, bias.data(), y.data());
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        long double acc = bias[n], magnitude = std::fabs(bias[n]);
        for (int64_t k = 0; k < K; ++k) {
          acc += static_cast<long double>(x[m * K + k]) * w.at(n, k);
          magnitude += std::fabs(static_cast<long double>(x[m * K + k]) * w.at(n, k));
        }
        want[m * N + n] = static_cast<float>(acc);
        scale[m * N + n] = static_cast<float>(magnitude);
      }
    }
    expect_close(y, want, scale, 1e-7, "reference matmul " + dtype_name(dtype));
  }
}

TEST(ReferenceKernels, Int8QuantisationIsWithinHalfAQuantum) {
  const int64_t rows = 9, cols = 96;
  auto values = random_values(rows * cols, 4, -3.f, 3.f);
  values[5] = 0.f;
  for (int k = 0; k < kInt8GroupSize; ++k) values[cols + k] = 0.f;  // an all-zero group
  const WeightMatrix w = make_weight_matrix(values.data(), rows, cols, DType::I8);
  ASSERT_EQ(w.scales.size(), static_cast<size_t>(rows * cols / kInt8GroupSize));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const float scale = w.scales[r * w.groups_per_row() + c / kInt8GroupSize];
      const float v = values[r * cols + c];
      EXPECT_LE(std::fabs(w.at(r, c) - v), 0.5f * scale * (1.f + 1e-5f) + 1e-30f)
          << "row " << r << " col " << c;
    }
  }
  EXPECT_EQ(w.scales[1 * w.groups_per_row()], 0.f);
  EXPECT_EQ(w.at(1, 3), 0.f);
  EXPECT_THROW(make_weight_matrix(values.data(), 1, 33, DType::I8), Error);
}

TEST(ReferenceKernels, AttentionMatchesHandComputedExample) {
  // One head, head_dim 2, three cached keys; the query at position 1 sees keys 0 and 1 only.
  ReferenceBackend ref;
  AttentionShape shape{1, 1, 2, 4, 1.f};
  std::vector<float> k_cache = {1, 0, 0, 1, 5, 5, 0, 0};  // block 0: positions 0..3
  std::vector<float> v_cache = {1, 2, 3, 4, 100, 100, 0, 0};
  const int32_t table[] = {0};
  AttentionSequence seq{0, 1, 1, table};
  const float q[] = {std::log(3.f), 0.f};  // scores: log 3 (key 0), 0 (key 1) -> weights 3/4, 1/4
  float out[2];
  ref.paged_attention(shape, &seq, 1, q, {k_cache.data(), v_cache.data()}, out);
  EXPECT_NEAR(out[0], 0.75 * 1 + 0.25 * 3, 1e-6);
  EXPECT_NEAR(out[1], 0.75 * 2 + 0.25 * 4, 1e-6);
}

// Attention written differently from the reference: contiguous per-sequence K/V, one softmax
// over a full score row, float arithmetic.
std::vector<float> naive_attention(const AttentionShape& s, int q_count, int start_pos,
                                   const std::vector<float>& q, const std::vector<float>& keys,
                                   const std::vector<float>& values) {
  const int group = s.num_heads / s.num_kv_heads;
  std::vector<float> out(static_cast<size_t>(q_count) * s.num_heads * s.head_dim);
  for (int i = 0; i < q_count; ++i) {
    for (int h = 0; h < s.num_heads; ++h) {
      const int n = start_pos + i + 1;
      std::vector<float> p(n);
      for (int t = 0; t < n; ++t) {
        float dot = 0;
        for (int d = 0; d < s.head_dim; ++d) {
          dot += q[(i * s.num_heads + h) * s.head_dim + d] *
                 keys[(t * s.num_kv_heads + h / group) * s.head_dim + d];
        }
        p[t] = dot * s.scale;
      }
      const float mx = *std::max_element(p.begin(), p.end());
      float sum = 0;
      for (float& e : p) sum += (e = std::exp(e - mx));
      for (int d = 0; d < s.head_dim; ++d) {
        float acc = 0;
        for (int t = 0; t < n; ++t) {
          acc += p[t] * values[(t * s.num_kv_heads + h / group) * s.head_dim + d];
        }
        out[(i * s.num_heads + h) * s.head_dim + d] = acc / sum;
      }
    }
  }
  return out;
}

// A paged cache holding given sequences' keys and values in shuffled physical blocks.
struct PagedCache {
  AttentionShape shape;
  std::vector<float> k, v;
  std::vector<std::vector<int32_t>> tables;
  KVCacheLayerView view() { return {k.data(), v.data()}; }
};

PagedCache make_paged_cache(const AttentionShape& shape, const std::vector<int>& lengths,
                            uint32_t seed) {
  PagedCache c;
  c.shape = shape;
  // Three unused blocks in between.
  test::BlockTables pool = test::shuffled_block_tables(lengths, shape.block_size, 3, seed);
  const size_t block_floats =
      static_cast<size_t>(shape.block_size) * shape.num_kv_heads * shape.head_dim;
  c.k = random_values(pool.total_blocks * block_floats, seed + 1);
  c.v = random_values(pool.total_blocks * block_floats, seed + 2);
  c.tables = std::move(pool.tables);
  return c;
}

// Keys (or values) of positions [0, len) of one sequence, gathered contiguously.
std::vector<float> gather(const PagedCache& c, const std::vector<float>& cache, int seq, int len) {
  const int64_t width = static_cast<int64_t>(c.shape.num_kv_heads) * c.shape.head_dim;
  std::vector<float> out(static_cast<size_t>(len) * width);
  for (int t = 0; t < len; ++t) {
    const int64_t slot =
        static_cast<int64_t>(c.tables[seq][t / c.shape.block_size]) * c.shape.block_size +
        t % c.shape.block_size;
    std::copy_n(cache.begin() + slot * width, width, out.begin() + t * width);
  }
  return out;
}

TEST(ReferenceKernels, PagedAttentionMatchesNaiveContiguousAttention) {
  ReferenceBackend ref;
  for (int block_size : {4, 16}) {
    AttentionShape shape{6, 2, 8, block_size, 0.35f};
    const int q_count = 5, start_pos = 9, len = start_pos + q_count;
    PagedCache c = make_paged_cache(shape, {len}, 11);
    const auto q = random_values(q_count * shape.num_heads * shape.head_dim, 12, -2.f, 2.f);
    AttentionSequence seq{0, q_count, start_pos, c.tables[0].data()};
    std::vector<float> out(q.size());
    ref.paged_attention(shape, &seq, 1, q.data(), c.view(), out.data());
    const auto want = naive_attention(shape, q_count, start_pos, q, gather(c, c.k, 0, len),
                                      gather(c, c.v, 0, len));
    expect_close(out, want, 1e-5, "block size " + std::to_string(block_size));
  }
}

// ---------------------------------------------------------------------------------------------
// The cpu backend, at every runnable ISA, against the reference.

class CpuVsReference : public ::testing::TestWithParam<cpu::Isa> {
 protected:
  CpuBackend cpu_{GetParam()};
  ReferenceBackend ref_;
};

std::string isa_test_name(const ::testing::TestParamInfo<cpu::Isa>& info) {
  return cpu::isa_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Isa, CpuVsReference, ::testing::ValuesIn(runnable_isas()), isa_test_name);

// One cpu backend per runnable ISA (matmul tests share one reference result between them).
std::vector<std::unique_ptr<CpuBackend>> cpu_backends() {
  std::vector<std::unique_ptr<CpuBackend>> backends;
  for (cpu::Isa isa : runnable_isas()) backends.push_back(std::make_unique<CpuBackend>(isa));
  // The bf16 dot-product kernels are off by default; check them too where the CPU has them.
  if (cpu::has_avx512_bf16()) {
    backends.push_back(std::make_unique<CpuBackend>(cpu::Isa::kAvx512, 0, true, true));
  }
  return backends;
}

// Checks the streaming and the packed matmul paths of every ISA for one shape and dtype.
void check_matmul(int64_t M, int64_t N, int64_t K, DType dtype, bool with_bias, uint32_t seed) {
  static const ReferenceBackend ref;
  static const auto backends = cpu_backends();
  const auto x = random_values(M * K, seed, -2.f, 2.f);
  const auto values = random_values(N * K, seed + 1);
  const auto bias = random_values(N, seed + 2);
  const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
  const float* b = with_bias ? bias.data() : nullptr;
  std::vector<float> want(M * N), scale(M * N), dequantised(N * K);
  ref.matmul(x.data(), M, w, b, want.data());
  for (int64_t i = 0; i < N * K; ++i) dequantised[i] = w.at(i / K, i % K);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float magnitude = b ? std::fabs(b[n]) : 0.f;
      const float* x_row = x.data() + m * K;
      const float* w_row = dequantised.data() + n * K;
#pragma omp simd reduction(+ : magnitude)
      for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x_row[k] * w_row[k]);
      scale[m * N + n] = magnitude;
    }
  }
  // Error bound of the dot-product kernels, from how they round x: bf16 rounds each value to
  // nearest (relative error <= 2^-8); int8 quantises each 32 values to 16 bits with d = amax /
  // 32767 (error
  // <= d / 2 per value). Plus the f32 summation allowance of the exact kernels.
  std::vector<float> dot_bound(M * N, 0.f);
  for (int64_t m = 0; m < M; ++m) {
    const float* x_row = x.data() + m * K;
    std::vector<double> x_error(K);
    for (int64_t k = 0; k < K; ++k) {
      if (dtype == DType::I8) {
        const int64_t g0 = k / kInt8GroupSize * kInt8GroupSize;
        float amax = 0.f;
        for (int64_t j = g0; j < std::min<int64_t>(K, g0 + kInt8GroupSize); ++j)
          amax = std::max(amax, std::fabs(x_row[j]));
        x_error[k] = amax / 32767.0 / 2.0 * 1.001;
      } else {
        x_error[k] = std::fabs(x_row[k]) * std::ldexp(1.0, -8);
      }
    }
    for (int64_t n = 0; n < N; ++n) {
      double bound = 0;
      const float* w_row = dequantised.data() + n * K;
      for (int64_t k = 0; k < K; ++k) bound += x_error[k] * std::fabs(w_row[k]);
      dot_bound[m * N + n] = static_cast<float>(bound + 1e-5 * scale[m * N + n]);
    }
  }
  const std::string shape = dtype_name(dtype) + " M=" + std::to_string(M) +
                            " N=" + std::to_string(N) + " K=" + std::to_string(K);
  for (const auto& cpu : backends) {
    const std::string isa = cpu::isa_name(cpu->isa());
    for (bool packed : {false, true}) {
      std::vector<float> y(M * N, NAN);
      cpu->matmul_with_path(x.data(), M, w, b, y.data(), packed);
      expect_close(y, want, scale, 1e-5, isa + (packed ? " packed " : " stream ") + shape);
    }
    // The dot-product kernels round x to the weights' format: within the bound that rounding
    // allows (dot_bound), checked directly and on the default path where it takes them.
    std::vector<float> y(M * N, NAN);
    const bool dot = cpu->matmul_dot(x.data(), M, w, b, y.data());
    EXPECT_EQ(dot, cpu->rounds_activations(dtype, M)) << isa << " " << shape;
    if (dot) expect_close(y, want, dot_bound, 1.0, isa + " dot " + shape);
    std::fill(y.begin(), y.end(), NAN);
    cpu->matmul(x.data(), M, w, b, y.data());
    if (dot) {
      expect_close(y, want, dot_bound, 1.0, isa + " default path (dot) " + shape);
    } else {
      expect_close(y, want, scale, 1e-5, isa + " default path " + shape);
    }
  }
}

// AMX GEMM (prefill): bf16 weights with x split into 3 bf16 parts it must equal the f32 matmul up
// to summation order, far inside the bf16 rounding bound; with one part within that bound. Shapes
// cover every tail: rows of x not a multiple of 16, weight rows not a multiple of 16 or 48.
TEST(CpuMatmul, AmxBf16GemmMatchesF32) {
  if (!cpu::amx::usable()) GTEST_SKIP() << "this CPU or kernel offers no AMX-BF16 tiles";
  const ReferenceBackend ref;
  const CpuBackend exact(cpu::Isa::kAvx512, 0, true, false, true);
  const CpuBackend rounded(cpu::Isa::kAvx512, 0, true, true, true);
  uint32_t seed = 900;
  for (int64_t M : {8, 16, 17, 40, 130}) {
    for (int64_t N : {1, 15, 16, 48, 61, 200}) {
      for (int64_t K : {32, 64, 608}) {
        ASSERT_TRUE(exact.uses_amx(DType::BF16, M, K));
        const auto x = random_values(M * K, seed++, -2.f, 2.f);
        const auto values = random_values(N * K, seed++);
        const auto bias = random_values(N, seed++);
        const WeightMatrix w = make_weight_matrix(values.data(), N, K, DType::BF16);
        std::vector<float> want(M * N), scale(M * N), rounding(M * N);
        ref.matmul(x.data(), M, w, bias.data(), want.data());
        for (int64_t m = 0; m < M; ++m) {
          for (int64_t n = 0; n < N; ++n) {
            double magnitude = std::fabs(bias[n]);
            for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x[m * K + k] * w.at(n, k));
            scale[m * N + n] = static_cast<float>(magnitude);
            rounding[m * N + n] = static_cast<float>(magnitude * std::ldexp(1.0, -8));
          }
        }
        const std::string shape =
            " M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
        std::vector<float> y(M * N, NAN);
        exact.matmul(x.data(), M, w, bias.data(), y.data());
        expect_close(y, want, scale, 2e-6, "amx 3 parts" + shape);
        std::fill(y.begin(), y.end(), NAN);
        rounded.matmul(x.data(), M, w, bias.data(), y.data());
        expect_close(y, want, rounding, 1.0, "amx 1 part" + shape);
        if (HasFatalFailure()) return;
      }
    }
  }
  // ggml block weights, expanded per 48-row panel to two bf16 parts, x in two parts: both
  // carry 16 significant bits, so the result is within 2^-15 of the magnitude.
  for (DType dtype :
       {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL,
        DType::IQ4_XS, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    const int64_t block = dtype_block_elements(dtype);
    for (int64_t M : {16, 17, 40}) {
      for (int64_t N : {1, 15, 48, 61}) {
        for (int64_t K : {block, 10 * block}) {
          ASSERT_TRUE(exact.uses_amx(dtype, M, K));
          const auto x = random_values(M * K, seed++, -2.f, 2.f);
          const auto values = random_values(N * K, seed++);
          const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
          std::vector<float> want(M * N), scale(M * N), y(M * N, NAN);
          ref.matmul(x.data(), M, w, nullptr, want.data());
          for (int64_t m = 0; m < M; ++m) {
            for (int64_t n = 0; n < N; ++n) {
              double magnitude = 0;
              for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x[m * K + k] * w.at(n, k));
              scale[m * N + n] = static_cast<float>(magnitude);
            }
          }
          exact.matmul(x.data(), M, w, nullptr, y.data());
          expect_close(y, want, scale, std::ldexp(1.0, -15),
                       "amx " + dtype_name(dtype) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K));
          if (HasFatalFailure()) return;
        }
      }
    }
  }
  EXPECT_FALSE(exact.uses_amx(DType::Q4_0, CpuBackend::kAmxMinRowsBlocks - 1, 64));
  // Below kAmxMinRows, or with K not a multiple of 32, the other kernels take the matmul.
  EXPECT_FALSE(exact.uses_amx(DType::BF16, CpuBackend::kAmxMinRows - 1, 64));
  EXPECT_FALSE(exact.uses_amx(DType::BF16, 64, 48));
  EXPECT_FALSE(exact.uses_amx(DType::F32, 64, 64));
  const CpuBackend off(cpu::Isa::kAvx512, 0, true, false, false);
  EXPECT_FALSE(off.uses_amx(DType::BF16, 64, 64));
}

// The x packer of the vdpbf16ps and AMX GEMMs (avx512_dot::pack_x_pairs): each element at its
// place in the tile layout (16 rows of x per vector, pairs of k, zeros past M and K), each part
// the bf16 nearest to what the earlier ones left (checked against f32_to_bf16, round to nearest
// even), and three parts summing back to x exactly. Runs wherever AVX512-BF16 does, so the AMX
// kernel's packer is checked on CPUs without AMX too.
TEST(CpuMatmul, PackXPairsLayoutAndExactSplit) {
  if (!cpu::has_avx512_bf16()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  uint32_t seed = 7000;
  for (int64_t M : {1, 16, 17, 40}) {
    for (int64_t K : {1, 2, 31, 32, 33, 96, 101}) {
      for (int parts : {1, 2, 3}) {
        auto x = random_values(M * K, seed++, -3.f, 3.f);
        // Values whose parts matter: tiny, huge, exactly representable, with low bits set.
        x[0] = 1.f + std::ldexp(1.f, -20);
        if (M * K > 1) x[1] = -std::ldexp(1.f, -30) * 1.2345f;
        if (M * K > 2) x[2] = 0.f;
        const int64_t size = cpu::avx512_dot::packed_pairs_size(M, K, parts);
        std::vector<uint32_t> storage(static_cast<size_t>(size) + 16, 0xDEADBEEFu);
        uint32_t* packed =
            storage.data() + (16 - reinterpret_cast<uintptr_t>(storage.data()) % 64 / 4) % 16;
        cpu::avx512_dot::pack_x_pairs(x.data(), M, K, parts, packed);
        const int64_t m_blocks = (M + 15) / 16, k_steps = (K + 31) / 32;
        const int64_t part_stride = m_blocks * k_steps * 256;
        ASSERT_EQ(size, part_stride * parts);
        const std::string shape = "M=" + std::to_string(M) + " K=" + std::to_string(K) +
                                  " parts=" + std::to_string(parts);
        int bad = 0;
        for (int64_t m = 0; m < m_blocks * 16; ++m) {
          for (int64_t k = 0; k < k_steps * 32; ++k) {
            const bool inside = m < M && k < K;
            float rest = inside ? x[m * K + k] : 0.f;
            float sum = 0.f;
            for (int p = 0; p < parts; ++p) {
              const uint32_t unit = packed[p * part_stride + (m / 16 * k_steps + k / 32) * 256 +
                                           (k % 32 / 2) * 16 + m % 16];
              const uint16_t got = static_cast<uint16_t>(k % 2 == 0 ? unit : unit >> 16);
              const uint16_t want = f32_to_bf16(rest);
              if (got != want && bad++ < 5) {
                ADD_FAILURE() << shape << " part " << p << " x[" << m << "][" << k << "]: packed "
                              << got << ", want " << want;
              }
              const float value = bf16_to_f32(got);
              sum += value;
              rest -= value;
            }
            if (parts == 3 && sum != (inside ? x[m * K + k] : 0.f) && bad++ < 5) {
              ADD_FAILURE() << shape << " x[" << m << "][" << k << "] = " << x[m * K + k]
                            << ": three parts sum to " << sum;
            }
          }
        }
        ASSERT_EQ(bad, 0) << shape;
      }
    }
  }
}

// The AVX-512 panel expansion of block weights (AMX prefill) must give dequantize_ggml's values
// bit for bit, on random bytes: every nibble and int8 value, f16 scales of every magnitude
// (subnormal, large, negative), and the types it hands on to dequantize_ggml.
TEST(CpuMatmul, BlockExpansionIsBitExact) {
  if (!cpu::isa_supported(cpu::Isa::kAvx512)) GTEST_SKIP() << "this CPU has no AVX-512";
  std::mt19937 rng(77);
  for (DType dtype : {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0,
                      DType::IQ4_NL, DType::IQ4_XS, DType::Q3_K, DType::Q4_K, DType::Q6_K}) {
    const int64_t K = 2 * dtype_block_elements(dtype) * (dtype_block_elements(dtype) == 32 ? 5 : 1);
    const int rows = 7;
    const size_t row_bytes = dtype_row_bytes(dtype, K);
    std::vector<uint8_t> bytes(row_bytes * (rows + 3));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    if (dtype_block_elements(dtype) == 32) {  // f16 scales: finite, some subnormal
      const size_t block_bytes = row_bytes / (K / 32);
      for (size_t at = 0; at + block_bytes <= bytes.size(); at += block_bytes) {
        for (int f = 0; f < (dtype == DType::Q4_1 || dtype == DType::Q5_1 ? 2 : 1); ++f) {
          uint16_t h = static_cast<uint16_t>(rng()) & 0xBBFF;  // exponent below all-ones
          if (rng() % 8 == 0) h &= 0x83FF;                     // subnormal
          std::memcpy(&bytes[at + 2 * f], &h, 2);
        }
      }
    }
    cpu::WeightView w;
    w.dtype = dtype;
    w.rows = rows + 3;
    w.cols = K;
    w.data = bytes.data();
    std::vector<float> got(rows * K), want(rows * K);
    cpu::avx512::dequantize_block_rows(w, 3, rows, got.data());
    for (int r = 0; r < rows; ++r) {
      dequantize_ggml(ggml_type_of(dtype), bytes.data() + (3 + r) * row_bytes, row_bytes,
                      want.data() + r * K, K);
    }
    for (size_t i = 0; i < got.size(); ++i) {
      if (std::isnan(want[i])) continue;
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << dtype_name(dtype) << " value " << i << ": " << got[i] << " vs " << want[i];
    }
  }
}

TEST(CpuMatmul, EveryDtypeAndOddShapes) {
  uint32_t seed = 100;
  for (DType dtype : kAllDtypes) {
    for (int64_t M : {1, 2, 3, 4, 5, 8, 9, 17, 64}) {
      for (int64_t N : {1, 7, 47, 64, 200}) {
        for (int64_t K : {32, 96, 608}) {
          check_matmul(M, N, K, dtype, (M + N) % 2 == 0, seed++);
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST(CpuMatmul, KNotAMultipleOfTheVectorWidth) {
  uint32_t seed = 900;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t K : {1, 7, 15, 17, 33, 300}) {
      for (int64_t M : {1, 4, 20, 30}) {
        check_matmul(M, 53, K, dtype, true, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST(CpuMatmul, ModelShapes) {
  // SmolLM2-135M: k/v 576->192, down 1536->576, gate+up 576->3072.
  uint32_t seed = 2000;
  for (DType dtype : kAllDtypes) {
    check_matmul(3, 192, 576, dtype, false, seed++);
    check_matmul(37, 576, 1536, dtype, false, seed++);
    check_matmul(130, 3072, 576, dtype, false, seed++);
    // TinyLlama-1.1B's down (K = 5632) and rows just past 2048: the small-batch bf16 kernel
    // cuts rows this long into tiles of k from 8 rows of x.
    check_matmul(19, 24, 5632, dtype, true, seed++);
    check_matmul(8, 13, 2080, dtype, false, seed++);
    // 2-4 rows of x too large for the L1 beside one weight row: 4 weight rows side by side.
    check_matmul(2, 24, 5632, dtype, false, seed++);
    check_matmul(4, 13, 2048, dtype, true, seed++);
    if (HasFatalFailure()) return;
  }
}

TEST_P(CpuVsReference, RmsnormRopeSiluAdd) {
  const int64_t M = 7, D = 576;
  const auto x = random_values(M * D, 30, -3.f, 3.f);
  const auto gamma = random_values(D, 31);
  std::vector<float> want(M * D), got(M * D);
  ref_.rmsnorm(x.data(), gamma.data(), M, D, 1e-5f, want.data());
  cpu_.rmsnorm(x.data(), gamma.data(), M, D, 1e-5f, got.data());
  expect_close(got, want, 1e-5, "rmsnorm");
  got = x;  // in place
  cpu_.rmsnorm(got.data(), gamma.data(), M, D, 1e-5f, got.data());
  expect_close(got, want, 1e-5, "rmsnorm in place");

  RopeTable table;
  table.max_positions = 64;
  table.half_dim = 32;
  for (int p = 0; p < table.max_positions; ++p) {
    for (int i = 0; i < table.half_dim; ++i) {
      const double angle = p * std::pow(10000.0, -2.0 * i / 64);
      table.cos.push_back(static_cast<float>(std::cos(angle)));
      table.sin.push_back(static_cast<float>(std::sin(angle)));
    }
  }
  const int heads = 9;
  const int32_t positions[] = {0, 1, 5, 63, 2};
  auto rope_ref = random_values(5 * heads * 64, 32);
  auto rope_cpu = rope_ref;
  const float first = rope_ref[0], partner = rope_ref[32];
  ref_.rope(rope_ref.data(), 5, heads, 64, positions, table);
  cpu_.rope(rope_cpu.data(), 5, heads, 64, positions, table);
  expect_close(rope_cpu, rope_ref, 1e-6, "rope");
  EXPECT_FLOAT_EQ(rope_ref[0], first);  // position 0 is the identity
  EXPECT_FLOAT_EQ(rope_ref[32], partner);
  const int32_t bad_position[] = {64};
  EXPECT_THROW(cpu_.rope(rope_cpu.data(), 1, heads, 64, bad_position, table), Error);

  const int64_t I = 1536;
  const auto gate_up = random_values(3 * 2 * I, 33, -20.f, 20.f);
  std::vector<float> silu_want(3 * I), silu_got(3 * I);
  ref_.silu_mul(gate_up.data(), 3, I, silu_want.data());
  cpu_.silu_mul(gate_up.data(), 3, I, silu_got.data());
  expect_close(silu_got, silu_want, 1e-5, "silu_mul");

  auto sum_ref = random_values(1000, 34);
  auto sum_cpu = sum_ref;
  const auto addend = random_values(1000, 35);
  ref_.add_inplace(sum_ref.data(), addend.data(), 1000);
  cpu_.add_inplace(sum_cpu.data(), addend.data(), 1000);
  expect_close(sum_cpu, sum_ref, 0, "add_inplace");
}

// A step mixing sequences: a prefill chunk from position 0, a prefill chunk continuing at
// start_pos > 0, and decode rows, over a shuffled paged cache.
struct MixedStep {
  std::vector<AttentionSequence> seqs;
  std::vector<float> q, k_new, v_new;
  int rows = 0;
};

MixedStep make_mixed_step(PagedCache& c, const std::vector<std::pair<int, int>>& starts_counts,
                          uint32_t seed) {
  MixedStep step;
  for (size_t s = 0; s < starts_counts.size(); ++s) {
    const auto [start, count] = starts_counts[s];
    step.seqs.push_back({step.rows, count, start, c.tables[s].data()});
    step.rows += count;
  }
  const AttentionShape& sh = c.shape;
  step.q = random_values(step.rows * sh.num_heads * sh.head_dim, seed, -2.f, 2.f);
  step.k_new = random_values(step.rows * sh.num_kv_heads * sh.head_dim, seed + 1);
  step.v_new = random_values(step.rows * sh.num_kv_heads * sh.head_dim, seed + 2);
  return step;
}

TEST_P(CpuVsReference, PagedAttentionLongContext) {
  // Decode rows at the end of an 8192-token context and a prefill chunk late in one, with sharp
  // scores so the online softmax must rescale often.
  AttentionShape shape{9, 3, 64, 16, 0.125f};
  const std::vector<std::pair<int, int>> layout = {{8191, 1}, {6000, 9}, {2500, 1}};
  std::vector<int> lengths;
  for (auto [start, count] : layout) lengths.push_back(start + count);
  PagedCache cache = make_paged_cache(shape, lengths, 70);
  for (float& k : cache.k) k *= 4.f;
  MixedStep step = make_mixed_step(cache, layout, 80);
  std::vector<float> want(step.q.size()), got(step.q.size(), NAN);
  ref_.paged_attention(shape, step.seqs.data(), 3, step.q.data(), cache.view(), want.data());
  cpu_.paged_attention(shape, step.seqs.data(), 3, step.q.data(), cache.view(), got.data());
  expect_close(got, want, 2e-5, "long context attention");
}

TEST_P(CpuVsReference, PagedAttentionSplitsLongDecodeAcrossThreads) {
  // A lone long decode row is split over its key range (flash-decoding) and merged; a short
  // sequence beside it is not. Four threads so the split happens on any machine.
  const CpuBackend four_threads(GetParam(), 4);
  for (int head_dim : {64, 128, 80}) {  // 80: the portable kernel inside every ISA
    AttentionShape shape{6, 2, head_dim, 16, 1.f / std::sqrt(float(head_dim))};
    for (const auto& layout : std::vector<std::vector<std::pair<int, int>>>{
             {{5000, 1}}, {{3000, 1}, {100, 1}}, {{1500, 3}}}) {
      std::vector<int> lengths;
      for (auto [start, count] : layout) lengths.push_back(start + count);
      PagedCache cache = make_paged_cache(shape, lengths, 95);
      MixedStep step = make_mixed_step(cache, layout, 96);
      const int n = static_cast<int>(layout.size());
      std::vector<float> want(step.q.size()), got(step.q.size(), NAN);
      ref_.paged_attention(shape, step.seqs.data(), n, step.q.data(), cache.view(), want.data());
      four_threads.paged_attention(shape, step.seqs.data(), n, step.q.data(), cache.view(),
                                   got.data());
      expect_close(got, want, 2e-5, "split attention head_dim " + std::to_string(head_dim));
    }
  }
}

TEST_P(CpuVsReference, RejectsBadShapes) {
  const auto values = random_values(64, 90);
  WeightMatrix w = make_weight_matrix(values.data(), 2, 32, DType::I8);
  w.scales.pop_back();
  std::vector<float> x(32), y(2);
  EXPECT_THROW(cpu_.matmul(x.data(), 1, w, nullptr, y.data()), Error);
  AttentionShape shape{4, 3, 64, 16, 0.125f};
  EXPECT_THROW(cpu_.paged_attention(shape, nullptr, 0, nullptr, {}, nullptr), Error);
  const CpuBackend four_threads(GetParam(), 4);  // an empty step is fine, on any thread count
  AttentionShape valid{6, 3, 64, 16, 0.125f};
  EXPECT_NO_THROW(four_threads.paged_attention(valid, nullptr, 0, nullptr, {}, nullptr));
}

TEST(KernelRegistry, NamesBackends) {
  const auto names = available_backends();
  EXPECT_NE(std::find(names.begin(), names.end(), "reference"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "cpu"), names.end());
  EXPECT_EQ(make_backend("reference")->name(), "reference");
  EXPECT_EQ(make_backend("cpu")->name(), "cpu");
  EXPECT_THROW(make_backend("tpu"), Error);
}

// ALEM_CPU_PREFETCH: every stream, the heavy ones, none, the CPU's rule (light streams off on
// AMD's Zen 4 but where x takes more than half the L1), or that rule with light streams tuned
// (the default), and a clear error otherwise.
TEST(KernelRegistry, StreamPrefetchSetting) {
  bool valid = false;
  constexpr size_t l1 = 48 << 10;
  const auto expect = [&](const char* value, bool amd, bool light, bool heavy, size_t wide_x,
                          bool tuned) {
    const cpu::StreamPrefetch got = cpu::stream_prefetch_setting(value, amd, l1, &valid);
    EXPECT_TRUE(valid) << (value ? value : "(unset)");
    EXPECT_EQ(got.light, light) << (value ? value : "(unset)") << " amd " << amd;
    EXPECT_EQ(got.heavy, heavy) << (value ? value : "(unset)") << " amd " << amd;
    EXPECT_EQ(got.light_x_bytes, wide_x) << (value ? value : "(unset)") << " amd " << amd;
    EXPECT_EQ(got.tuned, tuned) << (value ? value : "(unset)") << " amd " << amd;
  };
  for (bool amd : {false, true}) {
    expect("all", amd, true, true, SIZE_MAX, false);
    expect("heavy", amd, false, true, SIZE_MAX, false);
    expect("none", amd, false, false, SIZE_MAX, false);
    expect("static", amd, !amd, true, amd ? l1 / 2 : SIZE_MAX, false);
    for (const char* unset : {static_cast<const char*>(nullptr), "", "auto"}) {
      expect(unset, amd, !amd, true, amd ? l1 / 2 : SIZE_MAX, true);
    }
  }
  // CPUID leaf 1's eax as these CPUs report it: Zen 4 (EPYC 9004), Zen 5 (EPYC 9005), Zen 3
  // (EPYC 7003), Zen 4 (Ryzen 7000), an Intel Xeon (Emerald Rapids).
  EXPECT_EQ(cpu::cpuid_display_family(0x00A10F11), 0x19u);
  EXPECT_EQ(cpu::cpuid_display_family(0x00B00F21), 0x1Au);
  EXPECT_EQ(cpu::cpuid_display_family(0x00A00F11), 0x19u);
  EXPECT_EQ(cpu::cpuid_display_family(0x000C06F2), 6u);
  EXPECT_EQ(cpu::cpuid_display_model(0x00A10F11), 0x11u);
  EXPECT_EQ(cpu::cpuid_display_model(0x00B00F21), 0x02u);
  EXPECT_EQ(cpu::cpuid_display_model(0x00A00F11), 0x01u);
  EXPECT_EQ(cpu::cpuid_display_model(0x00A60F12), 0x61u);
  EXPECT_EQ(cpu::cpuid_display_model(0x000C06F2), 0xCFu);
  EXPECT_TRUE(cpu::amd_zen4_model(0x19, 0x11));   // Genoa
  EXPECT_TRUE(cpu::amd_zen4_model(0x19, 0x61));   // Raphael
  EXPECT_TRUE(cpu::amd_zen4_model(0x19, 0xA0));   // Bergamo
  EXPECT_FALSE(cpu::amd_zen4_model(0x19, 0x01));  // Milan (Zen 3)
  EXPECT_FALSE(cpu::amd_zen4_model(0x19, 0x21));  // Vermeer (Zen 3)
  EXPECT_FALSE(cpu::amd_zen4_model(0x1A, 0x02));  // Zen 5
  EXPECT_FALSE(cpu::amd_zen4_model(0x17, 0x31));  // Rome (Zen 2)
  EXPECT_EQ(cpu::stream_prefetch_name({true, true}), "all");
  EXPECT_EQ(cpu::stream_prefetch_name({false, true}), "heavy");
  EXPECT_EQ(cpu::stream_prefetch_name({false, true, 16 << 10}), "heavy+wide-x");
  EXPECT_EQ(cpu::stream_prefetch_name({false, true, 16 << 10, true}), "heavy+wide-x, light tuned");
  EXPECT_EQ(cpu::stream_prefetch_name({false, false}), "none");
  EXPECT_GE(cpu::l1_data_bytes(), size_t{4} << 10);
  for (const char* bad : {"1", "yes", "ALL", "packed"}) {
    cpu::stream_prefetch_setting(bad, false, l1, &valid);
    EXPECT_FALSE(valid) << bad;
  }
  const char* before = std::getenv("ALEM_CPU_PREFETCH");
  const std::string saved = before ? before : "";
  setenv("ALEM_CPU_PREFETCH", "sometimes", 1);
  try {
    make_backend("cpu");
    ADD_FAILURE() << "an invalid ALEM_CPU_PREFETCH was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ALEM_CPU_PREFETCH"), std::string::npos) << e.what();
  }
  if (before) {
    setenv("ALEM_CPU_PREFETCH", saved.c_str(), 1);
  } else {
    unsetenv("ALEM_CPU_PREFETCH");
  }
  EXPECT_NO_THROW(make_backend("cpu"));
}

// The bench's TimedBackend gives the inner backend's results and files each call under
// single-row (decode) or many-row (prefill) by its row count.
TEST(TimedBackend, ForwardsAndClassifiesByRows) {
  ReferenceBackend inner;
  TimedBackend timed(inner, /*width=*/64);
  const int64_t N = 24, K = 64;
  const auto values = random_values(N * K, 7);
  const WeightMatrix w = make_weight_matrix(values.data(), N, K, DType::F32);
  for (int64_t M : {1, 5}) {
    const auto x = random_values(M * K, 8 + M);
    std::vector<float> want(M * N), got(M * N);
    inner.matmul(x.data(), M, w, nullptr, want.data());
    timed.matmul(x.data(), M, w, nullptr, got.data());
    EXPECT_EQ(got, want) << "M=" << M;
  }
  std::vector<float> a(2 * K, 1.f), b(2 * K, 2.f);
  timed.add_inplace(a.data(), b.data(), K);      // one row of the model's width
  timed.add_inplace(a.data(), b.data(), 2 * K);  // two rows
  EXPECT_EQ(a[0], 5.f);
  const auto matmul = static_cast<int>(OpKind::kMatmul);
  const auto elementwise = static_cast<int>(OpKind::kNormRopeActivation);
  EXPECT_EQ(timed.single_row().calls[matmul], 1);
  EXPECT_EQ(timed.many_rows().calls[matmul], 1);
  EXPECT_EQ(timed.single_row().calls[elementwise], 1);
  EXPECT_EQ(timed.many_rows().calls[elementwise], 1);
  EXPECT_GT(timed.single_row().seconds[matmul], 0.0);
  EXPECT_GT(timed.many_rows().total(), 0.0);
  timed.reset();
  EXPECT_EQ(timed.single_row().total(), 0.0);
  EXPECT_EQ(timed.many_rows().calls[matmul], 0);
}

}  // namespace
}  // namespace alem
