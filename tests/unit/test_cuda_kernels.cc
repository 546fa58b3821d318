// What only the CUDA backend has: the weight cache (prepare/evict), host as well as device
// metadata pointers (positions, block tables), argument checks, and the greedy/top-k sampling
// kernel. Every op against the reference backend, f32 and bf16 KV caches included, is in the
// conformance suite test_backend_ops.cc, which runs the cuda backend with the others. Every test
// skips when the build has no CUDA or the machine has no usable GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "tests/block_test_values.h"
#include "tests/paged_block_tables.h"
#ifdef ALEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_common.h"
#endif

namespace alem {
namespace {

#ifndef ALEM_HAVE_CUDA

TEST(CudaKernels, SkippedWithoutCuda) {
  GTEST_SKIP() << "built without CUDA";
}

#else

// Host-side choice of the attention's key splits (flash-decoding): no GPU needed.
TEST(CudaAttentionSplits, SplitOnlyFewRowsOverLongContexts) {
  const int sms = 132;  // H100/H200 SXM
  EXPECT_EQ(cuda::attention_splits(64, 32, 32768, sms), 1) << "enough blocks already";
  EXPECT_EQ(cuda::attention_splits(1, 32, 400, sms), 1) << "short context";
  const int one_row = cuda::attention_splits(1, 32, 32768, sms);
  EXPECT_GT(one_row, 1);
  EXPECT_LE(one_row, cuda::kMaxAttentionSplits);
  EXPECT_GE(1 * 32 * one_row, 2 * sms) << "the splits fill the GPU";
  EXPECT_EQ(cuda::attention_splits(1, 4, 1024, sms), 1024 / cuda::kKeysPerSplitMin)
      << "each split keeps at least kKeysPerSplitMin keys";
  EXPECT_EQ(cuda::attention_splits(1, 1, 1 << 20, sms), cuda::kMaxAttentionSplits);
  EXPECT_EQ(cuda::attention_partial_bytes(3, 4, 128, 1), 0u);
  EXPECT_EQ(cuda::attention_partial_bytes(3, 4, 128, 8), 3u * 4 * 8 * (2 + 128) * sizeof(float));
}

using test::random_values;

// |got - want| <= tol * max(scale, 1e-30) elementwise, reporting the first failure.
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

// Device memory owned by a test, freed through the backend.
class DeviceBuffer {
 public:
  DeviceBuffer(const CudaBackend& b, size_t bytes) : b_(&b), p_(b.allocate(bytes)) {}
  ~DeviceBuffer() { b_->free(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  const CudaBackend* b_;
  void* p_;
};

class CudaVsReference : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU on this machine";
    cuda_ = std::make_unique<CudaBackend>(0);
  }

  template <typename T>
  std::unique_ptr<DeviceBuffer> to_device(const std::vector<T>& host) {
    std::unique_ptr<DeviceBuffer> buf =
        std::make_unique<DeviceBuffer>(*cuda_, std::max<size_t>(1, host.size()) * sizeof(T));
    cuda_->upload(buf->as<void>(), host.data(), host.size() * sizeof(T));
    return buf;
  }
  std::unique_ptr<DeviceBuffer> zeros(size_t n) {
    return std::make_unique<DeviceBuffer>(*cuda_, std::max<size_t>(1, n) * sizeof(float));
  }
  std::vector<float> to_host(const DeviceBuffer& buf, size_t n) {
    std::vector<float> out(n);
    cuda_->download(out.data(), buf.as<void>(), n * sizeof(float));
    return out;
  }

  std::unique_ptr<CudaBackend> cuda_;
  ReferenceBackend ref_;
};

// ---------------------------------------------------------------------------------------------
// matmul

TEST_F(CudaVsReference, WeightCachePrepareReuseAndEvict) {
  const int64_t M = 3, N = 64, K = 96;
  const auto values = random_values(N * K, 300);
  const auto x = random_values(M * K, 301);
  const WeightMatrix w = make_weight_matrix(values.data(), N, K, DType::I8);
  EXPECT_EQ(cuda_->prepared_bytes(), 0u);
  cuda_->prepare(w);
  const size_t prepared = cuda_->prepared_bytes();
  EXPECT_GE(prepared, w.bytes());
  auto dx = to_device(x);
  auto dy = zeros(M * N);
  std::vector<float> want(M * N);
  ref_.matmul(x.data(), M, w, nullptr, want.data());
  for (int i = 0; i < 2; ++i) {
    cuda_->matmul(dx->as<float>(), M, w, nullptr, dy->as<float>());
    expect_close(to_host(*dy, M * N), want, 1e-4, "cached int8 matmul");
  }
  EXPECT_EQ(cuda_->prepared_bytes(), prepared);  // used the cached copy, no second upload
  cuda_->evict(w);
  EXPECT_EQ(cuda_->prepared_bytes(), 0u);
}

// ---------------------------------------------------------------------------------------------
// rmsnorm, rope, silu_mul, add_inplace, embedding

RopeTable test_rope_table() {
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
  return table;
}

// The 16-bit GEMMs of more than 8 rows: cuBLASLt (bias in its epilogue) and the cublasGemmEx
// fallback both within the conformance suite's tolerance of the reference (8e-3 bf16, 2e-3 f16
// of sum |x w| + |bias| per output), and cuBLASLt really runs them on a Hopper GPU.
TEST_F(CudaVsReference, CublasLtAndFallbackGemms) {
  for (DType dtype : {DType::BF16, DType::F16}) {
    for (bool with_bias : {false, true}) {
      const int64_t M = 33, N = 200, K = 608;
      const auto x = random_values(M * K, 320, -2.f, 2.f);
      const auto values = random_values(N * K, 321);
      const auto bias = random_values(N, 322);
      const WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
      std::vector<float> want(M * N), scale(M * N);
      ref_.matmul(x.data(), M, w, with_bias ? bias.data() : nullptr, want.data());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double magnitude = with_bias ? std::fabs(bias[n]) : 0.0;
          for (int64_t k = 0; k < K; ++k) magnitude += std::fabs(x[m * K + k] * w.at(n, k));
          scale[m * N + n] = static_cast<float>(magnitude);
        }
      }
      const double tol = dtype == DType::BF16 ? 8e-3 : 2e-3;
      auto dx = to_device(x);
      auto db = to_device(bias);
      auto dy = zeros(M * N);
      for (auto library :
           {CudaBackend::GemmLibrary::kCublasLt, CudaBackend::GemmLibrary::kCublas}) {
        cuda_->set_gemm_library(library);
        const uint64_t lt_before = cuda_->cublaslt_gemms();
        const uint64_t fallback_before = cuda_->fallback_gemms();
        cuda_->matmul(dx->as<float>(), M, w, with_bias ? db->as<float>() : nullptr,
                      dy->as<float>());
        const bool lt = library == CudaBackend::GemmLibrary::kCublasLt;
        EXPECT_EQ(cuda_->cublaslt_gemms() - lt_before, lt ? 1u : 0u) << dtype_name(dtype);
        EXPECT_EQ(cuda_->fallback_gemms() - fallback_before, lt ? 0u : 1u) << dtype_name(dtype);
        expect_close(to_host(*dy, M * N), want, scale, tol,
                     std::string(lt ? "cublaslt " : "cublas ") + dtype_name(dtype) +
                         (with_bias ? " bias" : ""));
      }
      cuda_->set_gemm_library(CudaBackend::GemmLibrary::kCublasLt);
      cuda_->evict(w);
    }
  }
}

TEST_F(CudaVsReference, RopeHostAndDevicePositions) {
  const RopeTable table = test_rope_table();
  const int heads = 9, T = 5;
  const std::vector<int32_t> positions = {0, 1, 5, 63, 2};
  auto want = random_values(T * heads * 64, 32);
  const auto input = want;
  ref_.rope(want.data(), T, heads, 64, positions.data(), table);
  auto dx = to_device(input);
  cuda_->rope(dx->as<float>(), T, heads, 64, positions.data(), table);  // host positions
  expect_close(to_host(*dx, want.size()), want, 1e-6, "rope, host positions");
  auto dx2 = to_device(input);
  auto dpos = to_device(positions);
  cuda_->rope(dx2->as<float>(), T, heads, 64, dpos->as<int32_t>(), table);  // device positions
  const auto got = to_host(*dx2, want.size());
  expect_close(got, want, 1e-6, "rope, device positions");
  EXPECT_FLOAT_EQ(got[0], input[0]);  // position 0 is the identity

  const std::vector<int32_t> bad = {64};
  EXPECT_THROW(cuda_->rope(dx->as<float>(), 1, heads, 64, bad.data(), table), Error);
  auto dbad = to_device(bad);
  EXPECT_THROW(cuda_->rope(dx->as<float>(), 1, heads, 64, dbad->as<int32_t>(), table), Error);
  // The error flag is cleared: the next good call succeeds.
  cuda_->rope(dx2->as<float>(), T, heads, 64, dpos->as<int32_t>(), table);
}

// ---------------------------------------------------------------------------------------------
// kv_cache_write + paged_attention

struct PagedCache {
  AttentionShape shape;
  std::vector<float> k, v;
  std::vector<std::vector<int32_t> > tables;
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

// One step over `layout` ((start_pos, q_count) per sequence): kv_cache_write then
// paged_attention on both backends, comparing the caches exactly and the outputs within tol.
// device_tables: pass block tables as device pointers instead of host pointers.
void check_attention_step(CudaBackend& cuda, const ReferenceBackend& ref,
                          const AttentionShape& shape,
                          const std::vector<std::pair<int, int> >& layout, uint32_t seed,
                          bool device_tables, float key_gain, double tol, const std::string& what) {
  std::vector<int> lengths;
  for (auto [start, count] : layout) lengths.push_back(start + count);
  PagedCache c = make_paged_cache(shape, lengths, seed);
  for (float& k : c.k) k *= key_gain;
  std::vector<AttentionSequence> seqs;
  int rows = 0;
  for (size_t s = 0; s < layout.size(); ++s) {
    seqs.push_back({rows, layout[s].second, layout[s].first, c.tables[s].data()});
    rows += layout[s].second;
  }
  const auto q = random_values(static_cast<size_t>(rows) * shape.num_heads * shape.head_dim,
                               seed + 10, -2.f, 2.f);
  const auto k_new =
      random_values(static_cast<size_t>(rows) * shape.num_kv_heads * shape.head_dim, seed + 11);
  const auto v_new =
      random_values(static_cast<size_t>(rows) * shape.num_kv_heads * shape.head_dim, seed + 12);

  auto upload = [&](const auto& host) {
    using T = typename std::decay_t<decltype(host)>::value_type;
    auto buf = std::make_unique<DeviceBuffer>(cuda, std::max<size_t>(1, host.size()) * sizeof(T));
    cuda.upload(buf->template as<void>(), host.data(), host.size() * sizeof(T));
    return buf;
  };
  auto dk_cache = upload(c.k), dv_cache = upload(c.v), dq = upload(q), dk = upload(k_new),
       dv = upload(v_new);
  std::vector<std::unique_ptr<DeviceBuffer> > dtables;
  std::vector<AttentionSequence> cuda_seqs = seqs;
  if (device_tables) {
    for (size_t s = 0; s < seqs.size(); ++s) {
      dtables.push_back(upload(c.tables[s]));
      cuda_seqs[s].block_table = dtables.back()->as<int32_t>();
    }
  }
  const KVCacheLayerView dview{dk_cache->as<float>(), dv_cache->as<float>()};
  const int n = static_cast<int>(seqs.size());

  ref.kv_cache_write(shape, seqs.data(), n, k_new.data(), v_new.data(), {c.k.data(), c.v.data()});
  cuda.kv_cache_write(shape, cuda_seqs.data(), n, dk->as<float>(), dv->as<float>(), dview);
  std::vector<float> got_k(c.k.size()), got_v(c.v.size());
  cuda.download(got_k.data(), dk_cache->as<void>(), got_k.size() * sizeof(float));
  cuda.download(got_v.data(), dv_cache->as<void>(), got_v.size() * sizeof(float));
  ASSERT_EQ(got_k, c.k) << what << ": k cache";
  ASSERT_EQ(got_v, c.v) << what << ": v cache";

  std::vector<float> want(q.size()), got(q.size());
  ref.paged_attention(shape, seqs.data(), n, q.data(), {c.k.data(), c.v.data()}, want.data());
  auto dout = upload(std::vector<float>(q.size(), NAN));
  cuda.paged_attention(shape, cuda_seqs.data(), n, dq->as<float>(), dview, dout->as<float>());
  cuda.download(got.data(), dout->as<void>(), got.size() * sizeof(float));
  expect_close(got, want, tol, what);
}

TEST_F(CudaVsReference, PagedAttentionHostAndDeviceBlockTables) {
  const std::vector<std::pair<int, int> > layout = {{0, 37}, {45, 20}, {70, 1}, {5, 1}};
  for (int block_size : {16, 32}) {
    for (int group : {1, 2, 3}) {
      for (bool device_tables : {false, true}) {
        const AttentionShape shape{3 * group, 3, 64, block_size, 0.125f};
        check_attention_step(*cuda_, ref_, shape, layout, 50 + group, device_tables, 1.f, 2e-5,
                             "bs=" + std::to_string(block_size) + " group=" +
                                 std::to_string(group) + (device_tables ? " device tables" : ""));
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_F(CudaVsReference, RejectsBadShapes) {
  const auto values = random_values(64, 90);
  WeightMatrix w = make_weight_matrix(values.data(), 2, 32, DType::I8);
  w.scales.pop_back();
  auto dx = zeros(32), dy = zeros(2);
  EXPECT_THROW(cuda_->matmul(dx->as<float>(), 1, w, nullptr, dy->as<float>()), Error);
  const AttentionShape shape{4, 3, 64, 16, 0.125f};
  EXPECT_THROW(cuda_->paged_attention(shape, nullptr, 0, nullptr, {}, nullptr), Error);
  const AttentionShape too_wide{4, 4, 512, 16, 0.125f};
  EXPECT_THROW(cuda_->paged_attention(too_wide, nullptr, 0, nullptr, {}, nullptr), Error);
}

// ---------------------------------------------------------------------------------------------
// Sampling

TEST_F(CudaVsReference, ArgmaxAndTopKMatchHostSort) {
  const int64_t rows = 5, vocab = 49152 + 7;
  auto logits = random_values(rows * vocab, 400, -10.f, 10.f);
  logits[1 * vocab + 3] = logits[1 * vocab + 9000] = 50.f;  // tie: lower index wins
  logits[2 * vocab + 17] = NAN;                             // never chosen
  logits[2 * vocab + 18] = 1e30f;
  auto dlogits = to_device(logits);
  for (int k : {1, 5, 64}) {
    std::vector<float> values(rows * k);
    std::vector<int32_t> indices(rows * k);
    cuda_->top_k(dlogits->as<float>(), rows, vocab, k, values.data(), indices.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<int32_t> order;
      for (int32_t i = 0; i < vocab; ++i) {
        if (!std::isnan(logits[r * vocab + i])) order.push_back(i);
      }
      std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
        const float va = logits[r * vocab + a], vb = logits[r * vocab + b];
        return va > vb || (va == vb && a < b);
      });
      for (int j = 0; j < k; ++j) {
        ASSERT_EQ(indices[r * k + j], order[j]) << "row " << r << " rank " << j << " k " << k;
        ASSERT_EQ(values[r * k + j], logits[r * vocab + order[j]]);
      }
    }
  }
  std::vector<int32_t> greedy(rows);
  cuda_->argmax(dlogits->as<float>(), rows, vocab, greedy.data());
  EXPECT_EQ(greedy[1], 3);
  EXPECT_EQ(greedy[2], 18);
  EXPECT_THROW(cuda_->top_k(dlogits->as<float>(), rows, vocab, 0, nullptr, greedy.data()), Error);
}

TEST(CudaRegistry, WithoutAGpuMakeBackendThrows) {
  if (cuda_device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_THROW(make_backend("cuda"), Error);
  EXPECT_THROW(CudaBackend(0), Error);
}

TEST(CudaRegistry, MakeBackendNamesCuda) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no usable CUDA GPU on this machine";
  const auto names = available_backends();
  EXPECT_NE(std::find(names.begin(), names.end(), "cuda"), names.end());
  EXPECT_EQ(make_backend("cuda")->name(), "cuda");
}

#endif  // ALEM_HAVE_CUDA

}  // namespace
}  // namespace alem
