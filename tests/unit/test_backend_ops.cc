// The kernel conformance suite (like ggml's test-backend-ops): every op of KernelBackend, and its
// memory interface, run on every backend this build has (the cpu backend at each instruction
// set this CPU runs, "reference" itself through its memory path, and "cuda"), with inputs put
// into the backend's memory through Tensors exactly as the engine does, and results compared
// with the "reference" backend run on host vectors. Stated tolerances (|got - want| <= tol *
// scale, scale = max(1, |want|) unless said):
//   upload/download/copy_2d/wipe, embedding, add_inplace, kv_cache_write: exact (the f32 and
//     bf16 caches must hold the same bytes as the reference's, bf16 rounded to nearest even);
//   rmsnorm, add_rmsnorm (its sum x + residual exact), rope, silu_mul: 2e-5;
//   matmul: 1e-5 of sum |x*w| (+|bias|) per output; where x is rounded to the weights' format
//     (cuda bf16/f16 with M > 8 for the tensor cores, cpu dot-product kernels) bf16 8e-3, f16
//     2e-3, int8 1e-3;
//   matmul against ggml block weights (every type alem keeps: Q4_0 ... IQ4_XS; the cpu backend
//     quantises x to int16 per 32 values, error <= amax_b / 65534 per value of block b): per output
//     sum_b (amax_b / 65534) * sum_{k in b} |w_k| + 1e-5 * sum |x*w| (the reference dequantises
//     the weights exactly and multiplies in double);
//   paged_attention over an f32 or a bf16 cache: 2e-5 (5e-5 for the long sharp-score and the
//     split-key long decode cases);
//   adopt_weight: the adopted matrix gives the same matmul/embedding results as the host one
//     (matmul tolerance as above), and a device backend releases the host bytes;
//   sampling_candidates: values, indices, max and the NaN/+inf flag exact; sum_exp 1e-9
//     relative (f64 sums in another order); the candidates equal the engine sampler's own
//     (local_candidates, sum_exp 1e-5 relative: its exp is a float polynomial).
// CUDA cases skip (GTEST_SKIP) on a machine without a usable GPU. Backend-specific behaviour
// (matmul path forcing, thread splits, the CUDA weight cache and sampling) stays in
// test_kernels.cc and test_cuda_kernels.cc; the 8-bit activation mode of the interleaved block
// kernels in test_cpu_interleaved_blocks.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/sampler.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/tensor.h"
#include "tests/block_test_values.h"
#include "tests/paged_block_tables.h"
#ifdef ALEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace alem {
namespace {

struct BackendCase {
  std::string label;
  bool needs_gpu = false;
  std::function<std::unique_ptr<KernelBackend>()> make;
};

std::vector<BackendCase> backend_cases() {
  std::vector<BackendCase> cases;
  cases.push_back({"reference", false, [] { return std::make_unique<ReferenceBackend>(); }});
  for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvxVnni, cpu::Isa::kAvx512}) {
    if (!cpu::isa_supported(isa)) continue;
    cases.push_back({std::string("cpu_") + cpu::isa_name(isa), false,
                     [isa] { return std::make_unique<CpuBackend>(isa, 4); }});
  }
#ifdef ALEM_HAVE_CUDA
  cases.push_back({"cuda", true, [] { return std::make_unique<CudaBackend>(0); }});
#endif
  return cases;
}

using test::block_sums;
using test::BlockSums;
using test::random_values;

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

class BackendOps : public ::testing::TestWithParam<BackendCase> {
 protected:
  void SetUp() override {
#ifdef ALEM_HAVE_CUDA
    if (GetParam().needs_gpu && cuda_device_count() == 0) {
      GTEST_SKIP() << "no usable CUDA GPU on this machine";
    }
#endif
    backend_ = GetParam().make();
  }
  bool on_device() const {
    return backend_->memory_space() == MemorySpace::kDevice;
  }

  // Host data -> a tensor in the backend's memory, and back.
  template <typename T>
  Tensor put(const std::vector<T>& host, TensorType type) {
    Tensor t(*backend_, type, static_cast<int64_t>(std::max<size_t>(host.size(), 1)));
    t.upload(*backend_, host.data(), static_cast<int64_t>(host.size()));
    return t;
  }
  Tensor put(const std::vector<float>& host) {
    return put(host, TensorType::kF32);
  }
  Tensor put(const std::vector<int32_t>& host) {
    return put(host, TensorType::kI32);
  }
  Tensor zeros(int64_t n) {
    return Tensor(*backend_, TensorType::kF32, std::max<int64_t>(n, 1));
  }
  std::vector<float> get(const Tensor& t, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    t.download(*backend_, out.data(), n);
    return out;
  }

  std::unique_ptr<KernelBackend> backend_;
  ReferenceBackend ref_;
};

std::string case_name(const ::testing::TestParamInfo<BackendCase>& info) {
  return info.param.label;
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendOps, ::testing::ValuesIn(backend_cases()), case_name);

// ---------------------------------------------------------------------------------------------
// Memory

TEST_P(BackendOps, BuffersAreZeroedAndCopiesRoundTrip) {
  for (BufferKind kind : {BufferKind::kScratch, BufferKind::kSensitive}) {
    Tensor t(*backend_, TensorType::kF32, 1000, kind);
    EXPECT_EQ(t.space(), backend_->memory_space());
    EXPECT_EQ(t.buffer()->kind(), kind);
    EXPECT_EQ(t.bytes(), 4000u);
    EXPECT_EQ(get(t, 1000), std::vector<float>(1000, 0.f));
    const auto values = random_values(1000, 1);
    t.upload(*backend_, values.data(), 600, 400);  // into elements [400, 1000)
    const auto back = get(t, 1000);
    EXPECT_EQ(std::vector<float>(back.begin(), back.begin() + 400), std::vector<float>(400, 0.f));
    EXPECT_EQ(std::vector<float>(back.begin() + 400, back.end()),
              std::vector<float>(values.begin(), values.begin() + 600));
    EXPECT_THROW(t.upload(*backend_, values.data(), 601, 400), Error);
  }
  const bool host_sensitive_expected = backend_->memory_space() == MemorySpace::kHost;
  Tensor kv(*backend_, TensorType::kBF16, 64, BufferKind::kSensitive);
  EXPECT_EQ(kv.buffer()->host_sensitive() != nullptr, host_sensitive_expected);
  EXPECT_EQ(kv.bytes(), 128u);
}

TEST_P(BackendOps, Copy2dAndWipe) {
  const auto src_host = random_values(7 * 10, 2);
  Tensor src = put(src_host);
  Tensor dst = zeros(7 * 4);
  // Columns 3..6 of each 10-wide row into a packed 4-wide tensor (the engine's q/k/v split).
  backend_->copy_2d(dst.data<float>(), 4 * sizeof(float), src.data<float>() + 3, 10 * sizeof(float),
                    4 * sizeof(float), 7);
  const auto got = get(dst, 28);
  for (int r = 0; r < 7; ++r) {
    for (int c = 0; c < 4; ++c) ASSERT_EQ(got[r * 4 + c], src_host[r * 10 + 3 + c]);
  }
  backend_->wipe(src.data<float>() + 20, 30 * sizeof(float));
  const auto wiped = get(src, 70);
  for (int i = 0; i < 70; ++i) {
    ASSERT_EQ(wiped[i], i >= 20 && i < 50 ? 0.f : src_host[i]) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// matmul

void check_matmul(BackendOps& t, KernelBackend& backend, const ReferenceBackend& ref, int64_t M,
                  int64_t N, int64_t K, DType dtype, bool with_bias, uint32_t seed,
                  const std::function<Tensor(const std::vector<float>&)>& put,
                  const std::function<std::vector<float>(const Tensor&, int64_t)>& get) {
  (void)t;
  const auto x = random_values(M * K, seed, -2.f, 2.f);
  const auto values = random_values(N * K, seed + 1);
  const auto bias = random_values(N, seed + 2);
  const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
  std::vector<float> want(M * N), scale(M * N);
  ref.matmul(x.data(), M, w, with_bias ? bias.data() : nullptr, want.data());
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double magnitude = with_bias ? std::fabs(bias[n]) : 0.0;
      for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x[m * K + k] * w.at(n, k));
      scale[m * N + n] = static_cast<float>(magnitude);
    }
  }
  Tensor dx = put(x), db = put(bias), dy = put(std::vector<float>(M * N, NAN));
  backend.matmul(dx.data<float>(), M, w, with_bias ? db.data<float>() : nullptr, dy.data<float>());
  double tol = 1e-5;
  // The cpu dot-product kernels round x to the weights' format (bf16: 2^-8 relative; int8
  // weights: 16 bits per 32-value block), bounded by test_kernels.cc's own error model.
  if (const auto* cpu = dynamic_cast<const CpuBackend*>(&backend);
      cpu != nullptr && cpu->rounds_activations(dtype, M)) {
    tol = dtype == DType::I8 ? 1e-3 : 8e-3;
  }
  if (backend.memory_space() == MemorySpace::kDevice) {
    if (M > 8 && dtype == DType::BF16) tol = 8e-3;
    if (M > 8 && dtype == DType::F16) tol = 2e-3;
  }
  expect_close(get(dy, M * N), want, scale, tol,
               "matmul " + dtype_name(dtype) + " M=" + std::to_string(M) + " N=" +
                   std::to_string(N) + " K=" + std::to_string(K) + (with_bias ? " bias" : ""));
#ifdef ALEM_HAVE_CUDA
  // w dies here and its host address may be reused: drop the device copy keyed by it.
  if (auto* cuda = dynamic_cast<CudaBackend*>(&backend)) cuda->evict(w);
#endif
}

TEST_P(BackendOps, MatmulEveryDtypeOddAndModelShapes) {
  auto put = [this](const std::vector<float>& v) { return this->put(v); };
  auto get = [this](const Tensor& t, int64_t n) { return this->get(t, n); };
  uint32_t seed = 100;
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
    for (int64_t M : {1, 3, 9, 33}) {
      for (int64_t N : {1, 7, 200}) {
        for (int64_t K : {32, 608}) {
          check_matmul(*this, *backend_, ref_, M, N, K, dtype, (M + N) % 2 == 0, seed += 3, put,
                       get);
          if (HasFatalFailure()) return;
        }
      }
    }
    check_matmul(*this, *backend_, ref_, 40, 1536, 576, dtype, false, 200, put, get);
    check_matmul(*this, *backend_, ref_, 2, 576, 1536, dtype, true, 210, put, get);
    if (HasFatalFailure()) return;
  }
}

// ggml block weights, quantised here by alem's quantisers (gguf_quant.h; the 32-value types as
// ggml's reference does, the K-quants by quantize_k_block), at the shapes
// of decode (M = 1), small batches, prefill, and odd N (every thread and row remainder). alem's
// own int8 too: adopted, the CPU backend interleaves it and runs Q8_0's kernel with f32 scales,
// held to the same 16-bit activation bound at every M.
TEST_P(BackendOps, MatmulGgmlBlockTypes) {
  if (on_device()) GTEST_SKIP() << "the CUDA backend has no ggml block kernels yet";
  uint32_t seed = 500;
  std::set<DType> interleaved_dtypes;
  using Shapes = std::vector<std::pair<int64_t, int64_t>>;
  // K = 8192: the CPU backend's interleaved kernels walk the weights in tiles of about 14 rows
  // of x there (kRowTileBytes), so M = 33 and 64 take several tiles.
  const Shapes shapes32 = {{1, 32}, {7, 64}, {200, 608}, {96, 1536}, {48, 96}, {24, 8192}};
  const Shapes shapes256 = {{1, 256}, {7, 512}, {200, 768}, {96, 1536}, {24, 8192}};
  for (DType dtype :
       {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL,
        DType::IQ4_XS, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::I8}) {
    // From 4 rows of x, Q4_0/Q4_1/Q8_0 take two groups of 8 weight rows per 512-bit register
    // (N = 48 and 200: pairs and a lone group after them); M = 5, 7, 33: 1-3 rows left over.
    for (int64_t M : {1, 2, 3, 5, 7, 8, 33, 64}) {
      for (auto [N, K] : dtype_is_super_block(dtype) ? shapes256 : shapes32) {
        if (K == 8192 && M < 33) continue;  // one tile
        const bool with_bias = (M + N) % 2 == 1;
        const auto x = random_values(M * K, seed += 3, -2.f, 2.f);
        const auto values = random_values(N * K, seed + 1);
        const auto bias = random_values(N, seed + 2);
        const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
        std::vector<float> want(M * N), bound(M * N), w_row(K);
        ref_.matmul(x.data(), M, w, with_bias ? bias.data() : nullptr, want.data());
        for (int64_t n = 0; n < N; ++n) {
          dequantize_row(w, n, w_row.data());
          for (int64_t m = 0; m < M; ++m) {
            const BlockSums sums = block_sums(x, m, K, w_row.data());
            double quantisation = 0;
            for (double a : sums.amax_times_w) quantisation += a / 65534;
            const double product = sums.product;
            bound[m * N + n] = static_cast<float>(quantisation + 1e-5 * product);
          }
        }
        Tensor dx = put(x), db = put(bias);
        const auto check = [&](const WeightMatrix& weights, const std::string& what) {
          Tensor dy = put(std::vector<float>(M * N, NAN));
          backend_->matmul(dx.data<float>(), M, weights, with_bias ? db.data<float>() : nullptr,
                           dy.data<float>());
          expect_close(get(dy, M * N), want, bound, 1.0,
                       what + " " + dtype_name(dtype) + " M=" + std::to_string(M) +
                           " N=" + std::to_string(N) + " K=" + std::to_string(K));
        };
        check(w, "matmul");
        if (HasFatalFailure()) return;
        // The same matrix once the backend has adopted it, as the engine hands every weight
        // over: the CPU backend interleaves block types 8 rows at a time where it has AVX2 or
        // AVX512-VNNI (CpuBackend::interleaves).
        WeightMatrix adopted = make_weight_matrix(values.data(), N, K, dtype);
        backend_->adopt_weight(adopted);
        if (adopted.layout == BlockLayout::kInterleaved8) {
          interleaved_dtypes.insert(dtype);
          for (int64_t r : {int64_t{0}, N - 1}) {  // rows read back exactly through the layout
            std::vector<float> got(K), expected(K);
            dequantize_row(adopted, r, got.data());
            dequantize_row(w, r, expected.data());
            ASSERT_EQ(got, expected) << dtype_name(dtype) << " row " << r;
          }
        }
        check(adopted, "adopted matmul");
        if (HasFatalFailure()) return;
      }
    }
  }
  const auto* cpu = dynamic_cast<const CpuBackend*>(backend_.get());
  if (cpu != nullptr && cpu->interleaves_blocks()) {
    // Every block type, and int8 with its dot-product kernels on.
    EXPECT_EQ(interleaved_dtypes.size(), cpu->has_dot_kernel(DType::I8) ? 12u : 11u)
        << cpu->block_kernel_name();
    for (DType dtype : interleaved_dtypes)
      EXPECT_TRUE(cpu->interleaves(dtype)) << dtype_name(dtype);
  }
}

// int8 made from bf16 (or f16) weights has scales that are bf16 (f16) amax values over 127:
// adopted, the CPU backend keeps them as 16-bit codes (BlockLayout::kInterleaved8AmaxScales or
// kInterleaved8F16AmaxScales, Q8_0's 34 bytes per 32 values) and its kernels divide by 127 as
// quantisation did, so every result equals, bit for bit, what the same kernels give with the
// f32 scales (the layout int8 from other sources keeps), and the rows read back exactly.
TEST_P(BackendOps, Int8FromBf16OrF16WeightsKeepsItsScalesInTwoBytes) {
  if (on_device()) GTEST_SKIP() << "the CUDA backend keeps int8 as it is";
  const auto* cpu = dynamic_cast<const CpuBackend*>(backend_.get());
  uint32_t seed = 900;
  for (const BlockLayout want_layout :
       {BlockLayout::kInterleaved8AmaxScales, BlockLayout::kInterleaved8F16AmaxScales}) {
    const bool f16 = want_layout == BlockLayout::kInterleaved8F16AmaxScales;
    for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{48, 96}, {200, 608}, {16, 2048}}) {
      auto values = random_values(N * K, seed += 7);
      for (float& v : values) v = f16 ? f16_to_f32(f32_to_f16(v)) : bf16_to_f32(f32_to_bf16(v));
      values[5] = 0.f;
      for (int64_t k = 0; k < 32; ++k) values[K + k] = 0.f;  // a block of zeros: scale 0
      const WeightMatrix w = make_weight_matrix(values.data(), N, K, DType::I8);
      ASSERT_EQ(int8_interleaved_layout(w.scales.data(), w.scales.size()), want_layout);
      WeightMatrix adopted = make_weight_matrix(values.data(), N, K, DType::I8);
      backend_->adopt_weight(adopted);
      if (cpu == nullptr || !cpu->interleaves(DType::I8) ||
          cpu->uses_amx_int8(DType::I8, BlockLayout::kInterleaved8, 1 << 20)) {
        EXPECT_NE(adopted.layout, want_layout);
        continue;
      }
      const std::string what =
          std::string(f16 ? "f16 " : "bf16 ") + std::to_string(N) + "x" + std::to_string(K);
      ASSERT_EQ(adopted.layout, want_layout) << what;
      EXPECT_EQ(adopted.bytes(), static_cast<size_t>(N * K / 32 * 34)) << what;
      // The f32-scale layout of the same matrix, made by hand.
      WeightMatrix f32_scales;
      f32_scales.dtype = DType::I8;
      f32_scales.rows = N;
      f32_scales.cols = K;
      f32_scales.layout = BlockLayout::kInterleaved8;
      f32_scales.data = AlignedBuffer(static_cast<size_t>(N) * interleaved_row_bytes(DType::I8, K));
      interleave_int8(N, K, w.data.as<int8_t>(), w.scales.data(), f32_scales.data.data());
      for (int64_t r = 0; r < N; ++r) {
        std::vector<float> got(K), want(K);
        dequantize_row(adopted, r, got.data());
        dequantize_row(w, r, want.data());
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), K * sizeof(float)))
            << what << " row " << r;
      }
      EXPECT_EQ(adopted.at(N - 1, K - 1), w.at(N - 1, K - 1));
      for (int64_t M : {1, 2, 3, 5, 8, 33, 64}) {
        const auto x = random_values(M * K, seed + M, -2.f, 2.f);
        std::vector<float> got(M * N, NAN), want(M * N, NAN);
        backend_->matmul(x.data(), M, adopted, nullptr, got.data());
        backend_->matmul(x.data(), M, f32_scales, nullptr, want.data());
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
            << what << " M=" << M;
      }
    }
  }
  // Scales that are neither (int8 from f32 weights) keep 4 bytes.
  const auto values = random_values(48 * 96, 3);
  const WeightMatrix w = make_weight_matrix(values.data(), 48, 96, DType::I8);
  EXPECT_EQ(int8_interleaved_layout(w.scales.data(), w.scales.size()), BlockLayout::kInterleaved8);
  WeightMatrix adopted = make_weight_matrix(values.data(), 48, 96, DType::I8);
  backend_->adopt_weight(adopted);
  EXPECT_TRUE(adopted.layout == BlockLayout::kInterleaved8 ||
              adopted.layout == BlockLayout::kRowMajor);
}

// ---------------------------------------------------------------------------------------------
// Element-wise ops and embedding

RopeTable test_rope_table(int head_dim) {
  RopeTable table;
  table.max_positions = 64;
  table.half_dim = head_dim / 2;
  for (int p = 0; p < table.max_positions; ++p) {
    for (int i = 0; i < table.half_dim; ++i) {
      const double angle = p * std::pow(10000.0, -2.0 * i / head_dim);
      table.cos.push_back(static_cast<float>(std::cos(angle)));
      table.sin.push_back(static_cast<float>(std::sin(angle)));
    }
  }
  return table;
}

TEST_P(BackendOps, RmsnormRopeSiluMulAdd) {
  const int64_t M = 7, D = 576;
  const auto x = random_values(M * D, 30, -3.f, 3.f);
  const auto gamma = random_values(D, 31);
  std::vector<float> want(M * D);
  ref_.rmsnorm(x.data(), gamma.data(), M, D, 1e-5f, want.data());
  Tensor dx = put(x), dg = put(gamma), dy = zeros(M * D);
  backend_->rmsnorm(dx.data<float>(), dg.data<float>(), M, D, 1e-5f, dy.data<float>());
  expect_close(get(dy, M * D), want, 2e-5, "rmsnorm");
  backend_->rmsnorm(dx.data<float>(), dg.data<float>(), M, D, 1e-5f, dx.data<float>());
  expect_close(get(dx, M * D), want, 2e-5, "rmsnorm in place");

  for (int head_dim : {64, 128}) {
    const RopeTable table = test_rope_table(head_dim);
    const int heads = 9, T = 5;
    const std::vector<int32_t> positions = {0, 1, 5, 63, 2};
    auto rotated = random_values(T * heads * head_dim, 32);
    Tensor dr = put(rotated), dp = put(positions);
    ref_.rope(rotated.data(), T, heads, head_dim, positions.data(), table);
    backend_->rope(dr.data<float>(), T, heads, head_dim, dp.data<int32_t>(), table);
    expect_close(get(dr, T * heads * head_dim), rotated, 2e-5,
                 "rope head_dim " + std::to_string(head_dim));
  }

  // Fused residual add + rmsnorm: x exact (one f32 add), y within rmsnorm's tolerance.
  {
    const auto residual = random_values(M * D, 36, -3.f, 3.f);
    std::vector<float> want_x = x, want_y(M * D);
    ref_.add_inplace(want_x.data(), residual.data(), M * D);
    ref_.rmsnorm(want_x.data(), gamma.data(), M, D, 1e-5f, want_y.data());
    Tensor fx = put(x), fr = put(residual), fy = zeros(M * D);
    backend_->add_rmsnorm(fx.data<float>(), fr.data<float>(), dg.data<float>(), M, D, 1e-5f,
                          fy.data<float>());
    expect_close(get(fx, M * D), want_x, 0, "add_rmsnorm x");
    expect_close(get(fy, M * D), want_y, 2e-5, "add_rmsnorm y");
  }

  const int64_t I = 1536;
  const auto gate_up = random_values(3 * 2 * I, 33, -20.f, 20.f);
  std::vector<float> silu(3 * I);
  ref_.silu_mul(gate_up.data(), 3, I, silu.data());
  Tensor dgu = put(gate_up), dout = zeros(3 * I);
  backend_->silu_mul(dgu.data<float>(), 3, I, dout.data<float>());
  expect_close(get(dout, 3 * I), silu, 2e-5, "silu_mul");

  auto sum = random_values(1000, 34);
  const auto addend = random_values(1000, 35);
  Tensor dsum = put(sum), dadd = put(addend);
  ref_.add_inplace(sum.data(), addend.data(), 1000);
  backend_->add_inplace(dsum.data<float>(), dadd.data<float>(), 1000);
  expect_close(get(dsum, 1000), sum, 0, "add_inplace");
}

TEST_P(BackendOps, EmbeddingEveryDtypeWithOutOfRangeTokens) {
  const int64_t rows = 50, cols = 512, row_begin = 100;  // whole K-quant super-blocks
  const auto values = random_values(rows * cols, 40);
  const std::vector<int32_t> tokens = {100, 149, 99, 150, 120, -1, 0, 100};
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8, DType::Q4_0, DType::Q4_1,
                      DType::Q5_0, DType::Q5_1, DType::Q8_0, DType::IQ4_NL, DType::IQ4_XS,
                      DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    if (dtype_is_block(dtype) && on_device()) continue;  // no CUDA block kernels yet
    const WeightMatrix table = make_weight_matrix(values.data(), rows, cols, dtype);
    const auto T = static_cast<int64_t>(tokens.size());
    std::vector<float> want(T * cols);
    ref_.embedding(table, row_begin, tokens.data(), T, want.data());
    Tensor dt = put(tokens), dout = put(std::vector<float>(T * cols, NAN));
    backend_->embedding(table, row_begin, dt.data<int32_t>(), T, dout.data<float>());
    expect_close(get(dout, T * cols), want, 0, "embedding " + dtype_name(dtype));
#ifdef ALEM_HAVE_CUDA
    if (auto* cuda = dynamic_cast<CudaBackend*>(backend_.get())) cuda->evict(table);
#endif
  }
}

// ---------------------------------------------------------------------------------------------
// kv_cache_write + paged_attention, f32 and bf16 caches

// Host cache of either dtype, filled with random values (bf16: rounded), shuffled block tables.
struct HostCache {
  AttentionShape shape;
  DType dtype = DType::F32;
  std::vector<uint8_t> k, v;  // raw bytes of dtype
  std::vector<std::vector<int32_t>> tables;
  KVCacheLayerView view() { return {k.data(), v.data(), dtype}; }
};

std::vector<uint8_t> cache_bytes(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * dtype_size(dtype));
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::BF16) {
      const uint16_t h = f32_to_bf16(values[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    }
  }
  return bytes;
}

HostCache make_cache(const AttentionShape& shape, DType dtype, const std::vector<int>& lengths,
                     uint32_t seed, float key_gain) {
  HostCache c;
  c.shape = shape;
  c.dtype = dtype;
  // Three unused blocks in between.
  test::BlockTables pool = test::shuffled_block_tables(lengths, shape.block_size, 3, seed);
  const size_t block_elements =
      static_cast<size_t>(shape.block_size) * shape.num_kv_heads * shape.head_dim;
  auto keys = random_values(pool.total_blocks * block_elements, seed + 1);
  for (float& k : keys) k *= key_gain;
  c.k = cache_bytes(keys, dtype);
  c.v = cache_bytes(random_values(pool.total_blocks * block_elements, seed + 2), dtype);
  c.tables = std::move(pool.tables);
  return c;
}

// One engine-like step over `layout` ((start_pos, q_count) per sequence): the backend's cache,
// q, k, v and block tables are tensors in its memory; kv_cache_write must leave exactly the
// reference's cache bytes, paged_attention must match within tol.
void check_attention(BackendOps& t, KernelBackend& backend, const ReferenceBackend& ref,
                     const AttentionShape& shape, DType dtype,
                     const std::vector<std::pair<int, int>>& layout, uint32_t seed, float key_gain,
                     double tol, const std::string& what) {
  (void)t;
  std::vector<int> lengths;
  for (auto [start, count] : layout) lengths.push_back(start + count);
  HostCache c = make_cache(shape, dtype, lengths, seed, key_gain);
  std::vector<AttentionSequence> seqs;
  std::vector<int32_t> all_tables;
  std::vector<size_t> table_offsets;
  int rows = 0;
  for (size_t s = 0; s < layout.size(); ++s) {
    seqs.push_back({rows, layout[s].second, layout[s].first, c.tables[s].data()});
    rows += layout[s].second;
    table_offsets.push_back(all_tables.size());
    all_tables.insert(all_tables.end(), c.tables[s].begin(), c.tables[s].end());
  }
  const auto q = random_values(static_cast<size_t>(rows) * shape.num_heads * shape.head_dim,
                               seed + 10, -2.f, 2.f);
  const size_t kv_count = static_cast<size_t>(rows) * shape.num_kv_heads * shape.head_dim;
  const auto k_new = random_values(kv_count, seed + 11);
  const auto v_new = random_values(kv_count, seed + 12);

  const TensorType cache_type = dtype == DType::BF16 ? TensorType::kBF16 : TensorType::kF32;
  const auto cache_count = static_cast<int64_t>(c.k.size() / dtype_size(dtype));
  Tensor dk_cache(backend, cache_type, cache_count, BufferKind::kSensitive);
  Tensor dv_cache(backend, cache_type, cache_count, BufferKind::kSensitive);
  dk_cache.upload(backend, c.k.data(), cache_count);
  dv_cache.upload(backend, c.v.data(), cache_count);
  auto put_f32 = [&](const std::vector<float>& host) {
    Tensor out(backend, TensorType::kF32, static_cast<int64_t>(host.size()));
    out.upload(backend, host.data(), out.count());
    return out;
  };
  Tensor dq = put_f32(q), dk = put_f32(k_new), dv = put_f32(v_new);
  Tensor dout = put_f32(std::vector<float>(q.size(), NAN));
  Tensor dtables(backend, TensorType::kI32, static_cast<int64_t>(all_tables.size()));
  dtables.upload(backend, all_tables.data(), dtables.count());
  std::vector<AttentionSequence> backend_seqs = seqs;
  for (size_t s = 0; s < seqs.size(); ++s) {
    backend_seqs[s].block_table = dtables.data<int32_t>() + table_offsets[s];
  }
  const KVCacheLayerView dview{dk_cache.data<void>(), dv_cache.data<void>(), dtype};
  const int n = static_cast<int>(seqs.size());

  ref.kv_cache_write(shape, seqs.data(), n, k_new.data(), v_new.data(), c.view());
  backend.kv_cache_write(shape, backend_seqs.data(), n, dk.data<float>(), dv.data<float>(), dview);
  std::vector<uint8_t> got_k(c.k.size()), got_v(c.v.size());
  dk_cache.download(backend, got_k.data(), cache_count);
  dv_cache.download(backend, got_v.data(), cache_count);
  ASSERT_TRUE(got_k == c.k) << what << ": k cache bytes differ";
  ASSERT_TRUE(got_v == c.v) << what << ": v cache bytes differ";

  std::vector<float> want(q.size()), got(q.size());
  ref.paged_attention(shape, seqs.data(), n, q.data(), c.view(), want.data());
  backend.paged_attention(shape, backend_seqs.data(), n, dq.data<float>(), dview,
                          dout.data<float>());
  dout.download(backend, got.data(), dout.count());
  expect_close(got, want, tol, what);
}

std::string kv_label(DType dtype) {
  return " kv " + dtype_name(dtype);
}

TEST_P(BackendOps, PagedAttentionMixedBatchGqaAndBlockSizes) {
  // (start_pos, q_count): prefill from 0, a continued chunk, two decode rows.
  const std::vector<std::pair<int, int>> layout = {{0, 37}, {45, 20}, {70, 1}, {5, 1}};
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (int block_size : {16, 32}) {
      for (int group : {1, 2, 3}) {
        const AttentionShape shape{3 * group, 3, 64, block_size, 0.125f};
        check_attention(*this, *backend_, ref_, shape, dtype, layout, 50 + group, 1.f, 2e-5,
                        "bs=" + std::to_string(block_size) + " group=" + std::to_string(group) +
                            kv_label(dtype));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(BackendOps, PagedAttentionHeadDimsAndOddBlockSize) {
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (int head_dim : {64, 128, 80, 256, 24}) {
      const AttentionShape shape{6, 2, head_dim, 5, 1.f / std::sqrt(float(head_dim))};
      check_attention(*this, *backend_, ref_, shape, dtype, {{0, 23}, {31, 2}}, 97, 1.f, 2e-5,
                      "head_dim " + std::to_string(head_dim) + kv_label(dtype));
      if (HasFatalFailure()) return;
    }
  }
}

TEST_P(BackendOps, PagedAttentionLongContextSharpScores) {
  // Decode at the end of a 4096-token context and a late prefill chunk, keys scaled so the
  // online softmax must rescale often.
  const AttentionShape shape{8, 2, 128, 16, 1.f / std::sqrt(128.f)};
  for (DType dtype : {DType::F32, DType::BF16}) {
    check_attention(*this, *backend_, ref_, shape, dtype, {{4095, 1}, {3000, 9}, {1200, 1}}, 70,
                    4.f, 5e-5, "long context" + kv_label(dtype));
    if (HasFatalFailure()) return;
    // A lone long decode row beside a short one: the cpu backend (4 threads) splits its key
    // range across threads and merges the pieces.
    check_attention(*this, *backend_, ref_, shape, dtype, {{5000, 1}, {100, 1}}, 71, 1.f, 2e-5,
                    "split decode" + kv_label(dtype));
    if (HasFatalFailure()) return;
  }
}

TEST_P(BackendOps, PagedAttentionSplitKeysLongDecode) {
  // Few (row, head) pairs over long contexts: the cuda backend splits the keys into ranges
  // (flash-decoding) and merges them; rows of very different lengths leave some ranges empty.
  const AttentionShape shape{4, 1, 128, 16, 1.f / std::sqrt(128.f)};
  for (DType dtype : {DType::F32, DType::BF16}) {
    check_attention(*this, *backend_, ref_, shape, dtype, {{32767, 1}}, 80, 2.f, 5e-5,
                    "32k decode" + kv_label(dtype));
    if (HasFatalFailure()) return;
    check_attention(*this, *backend_, ref_, shape, dtype, {{20000, 1}, {300, 1}, {7000, 3}}, 81,
                    2.f, 5e-5, "uneven split decode" + kv_label(dtype));
    if (HasFatalFailure()) return;
  }
}

TEST_P(BackendOps, RejectsUnsupportedKvCacheDtype) {
  const AttentionShape shape{4, 2, 64, 16, 0.125f};
  KVCacheLayerView view{nullptr, nullptr, DType::I8};
  EXPECT_THROW(backend_->paged_attention(shape, nullptr, 0, nullptr, view, nullptr), Error);
  EXPECT_THROW(backend_->kv_cache_write(shape, nullptr, 0, nullptr, nullptr, view), Error);
}

// ---------------------------------------------------------------------------------------------
// adopt_weight: weights moved into the backend's memory for good

TEST_P(BackendOps, AdoptedWeightsGiveTheSameResults) {
  const int64_t N = 96, K = 64;
  const auto values = random_values(N * K, 60);
  const auto x = random_values(20 * K, 61, -2.f, 2.f);
  const std::vector<int32_t> tokens = {0, 95, 17, 96, -1};
  std::vector<DType> dtypes = {DType::F32, DType::BF16, DType::F16, DType::I8};
  if (!on_device()) {  // the block types the CPU backend interleaves (a tied embedding included)
    dtypes.insert(dtypes.end(), {DType::Q4_0, DType::Q4_1, DType::Q8_0});
  }
  for (DType dtype : dtypes) {
    WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
    const size_t bytes = w.bytes();
    std::vector<float> want_small(3 * N), want_large(20 * N), want_rows(tokens.size() * K);
    ref_.matmul(x.data(), 3, w, nullptr, want_small.data());
    ref_.matmul(x.data(), 20, w, nullptr, want_large.data());
    ref_.embedding(w, 0, tokens.data(), static_cast<int64_t>(tokens.size()), want_rows.data());
    backend_->adopt_weight(w);
    EXPECT_EQ(w.bytes(), bytes) << "adopting keeps the byte count";
    EXPECT_EQ(w.rows, N);
    EXPECT_EQ(w.cols, K);
    if (on_device()) {
      EXPECT_TRUE(w.data.empty()) << "a device backend releases the host bytes";
      EXPECT_TRUE(w.scales.empty());
      EXPECT_NE(w.backend_copy, nullptr);
    } else {
      EXPECT_FALSE(w.data.empty()) << "host backends keep the matrix as it is";
    }
    backend_->adopt_weight(w);  // twice is harmless
    // Per output, sum |x w| scales the tolerance (as in check_matmul): 1e-5, or 8e-3 where x is
    // rounded to the weights' 16-bit format (cpu dot-product kernels, cuda tensor cores).
    const WeightMatrix host_w = make_weight_matrix(values.data(), N, K, dtype);
    std::vector<float> scale(20 * N);
    for (int64_t m = 0; m < 20; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        double magnitude = 0;
        for (int64_t c = 0; c < K; ++c) magnitude += std::fabs(x[m * K + c] * host_w.at(n, c));
        scale[m * N + n] = static_cast<float>(magnitude);
      }
    }
    Tensor dx = put(x), dy = zeros(20 * N);
    for (int64_t M : {3, 20}) {
      backend_->matmul(dx.data<float>(), M, w, nullptr, dy.data<float>());
      const double tol = dtype == DType::F32 ? 1e-5 : 8e-3;
      expect_close(get(dy, M * N), M == 3 ? want_small : want_large,
                   std::vector<float>(scale.begin(), scale.begin() + M * N), tol,
                   "adopted matmul M=" + std::to_string(M) + " " + dtype_name(dtype));
    }
    Tensor dt = put(tokens), drows = zeros(static_cast<int64_t>(tokens.size()) * K);
    backend_->embedding(w, 0, dt.data<int32_t>(), static_cast<int64_t>(tokens.size()),
                        drows.data<float>());
    expect_close(get(drows, static_cast<int64_t>(tokens.size()) * K), want_rows, 0,
                 "adopted embedding " + dtype_name(dtype));
    if (HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------------
// sampling_candidates: the sampler's candidates made where the logits are

// Rows of logits with ties (values on a coarse grid), -inf entries, and special rows: all -inf,
// one NaN, one +inf, a single finite value among -inf.
std::vector<float> sampling_rows(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> grid(-400, 400);
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (float& v : x) v = static_cast<float>(grid(rng)) / 16.f;  // many exact ties
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < vocab; i += 7) x[i] = -inf;  // row 0: some -inf
  if (rows > 1) std::fill_n(x.begin() + vocab, vocab, -inf);
  if (rows > 2) x[2 * vocab + vocab / 2] = std::numeric_limits<float>::quiet_NaN();
  if (rows > 3) x[3 * vocab + vocab - 1] = inf;
  if (rows > 4) {
    std::fill_n(x.begin() + 4 * vocab, vocab, -inf);
    x[4 * vocab + vocab / 3] = 1.5f;
  }
  return x;
}

TEST_P(BackendOps, SamplingCandidatesMatchReferenceAndSampler) {
  for (int64_t vocab : {1, 7, 1000, 49152}) {
    const int64_t rows = 7;
    const auto logits = sampling_rows(rows, vocab, static_cast<uint32_t>(vocab));
    Tensor dl = put(logits);
    for (int k : {1, 5, 64, 1024}) {
      if (k > vocab) continue;
      const std::string what = "vocab " + std::to_string(vocab) + " k " + std::to_string(k);
      SamplingCandidates want, got;
      ref_.sampling_candidates(logits.data(), rows, vocab, k, want);
      backend_->sampling_candidates(dl.data<float>(), rows, vocab, k, got);
      ASSERT_EQ(got.k, k) << what;
      ASSERT_EQ(got.invalid, want.invalid) << what;
      ASSERT_EQ(got.indices, want.indices) << what;
      for (size_t i = 0; i < want.values.size(); ++i) {
        ASSERT_TRUE(got.values[i] == want.values[i] ||
                    (std::isnan(got.values[i]) && std::isnan(want.values[i])))
            << what << " value " << i;
      }
      ASSERT_EQ(got.max_logit, want.max_logit) << what;
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_NEAR(got.sum_exp[r], want.sum_exp[r], 1e-9 * std::max(1.0, want.sum_exp[r]))
            << what << " row " << r;
        // The engine sampler on the same row: NaN/+inf rows are refused, others give the same
        // candidates (greedy: its argmax; top-k: its k best, best first).
        SamplingParams params;
        params.temperature = k == 1 ? 0.f : 1.f;
        params.top_k = k == 1 ? 0 : k;
        const float* row = logits.data() + r * vocab;
        if (got.invalid[r]) {
          EXPECT_THROW(local_candidates(row, 0, vocab, params), Error) << what << " row " << r;
          continue;
        }
        const CandidateSet set = local_candidates(row, 0, vocab, params);
        ASSERT_EQ(static_cast<int>(set.candidates.size()), k) << what << " row " << r;
        for (int j = 0; j < k; ++j) {
          ASSERT_EQ(set.candidates[j].token_id, got.indices[r * k + j]) << what << " row " << r;
          ASSERT_EQ(set.candidates[j].logit, got.values[r * k + j]) << what << " row " << r;
        }
        ASSERT_EQ(set.max_logit, got.max_logit[r]) << what << " row " << r;
        ASSERT_NEAR(set.sum_exp, got.sum_exp[r], 1e-5 * std::max(1.0, set.sum_exp))
            << what << " row " << r;
      }
    }
  }
  SamplingCandidates out;
  Tensor dl = put(std::vector<float>(10, 0.f));
  EXPECT_THROW(backend_->sampling_candidates(dl.data<float>(), 1, 10, 11, out), Error);
  EXPECT_THROW(backend_->sampling_candidates(dl.data<float>(), 1, 10, 0, out), Error);
}

}  // namespace
}  // namespace alem
