// StackedRows (model/weights.h) and matmul_stacked (kernels/stacked_matmul.h): matrices the
// engine multiplies as one are fused where they share a dtype and kept as parts where a GGUF
// mixture gives them different ones (a Q4_K_M file's Q6_K v beside Q4_K q and k). Both forms
// must give every part's rows in its own columns, with its own slice of the bias, on every
// backend here, against the reference backend multiplying each part alone.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/stacked_matmul.h"
#include "kernels/tensor.h"
#include "model/weights.h"

namespace alem {
namespace {

std::vector<float> random_values(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

struct Part {
  DType dtype;
  int64_t rows;
};

// The parts of one stacked matrix, with K columns, and what each case expects stack_rows to do.
struct Case {
  std::string name;
  int64_t K;
  std::vector<Part> parts;
  bool fused;
  bool host_only;  // block types: the CUDA backend has no kernels for them yet
};

void check_case(const std::string& backend_name, const Case& c) {
  SCOPED_TRACE(backend_name + " " + c.name);
  std::unique_ptr<KernelBackend> backend;
  try {
    backend = make_backend(backend_name);
  } catch (const Error& e) {  // built with CUDA on a machine without a usable GPU
    ASSERT_NE(backend_name, "cpu") << e.message();
    ASSERT_NE(backend_name, "reference") << e.message();
    return;
  }
  auto reference = make_backend("reference");
  const bool device = backend->memory_space() == MemorySpace::kDevice;
  if (device && c.host_only) return;
  uint32_t seed = 40;
  std::vector<WeightMatrix> parts, host_parts;
  int64_t N = 0;
  for (const Part& p : c.parts) {
    const auto values = random_values(static_cast<size_t>(p.rows * c.K), seed += 7, -1.f, 1.f);
    parts.push_back(make_weight_matrix(values.data(), p.rows, c.K, p.dtype));
    host_parts.push_back(make_weight_matrix(values.data(), p.rows, c.K, p.dtype));
    N += p.rows;
  }
  StackedRows stacked = stack_rows(std::move(parts));
  ASSERT_EQ(stacked.is_fused(), c.fused);
  ASSERT_EQ(stacked.rows(), N);
  adopt_stacked(*backend, stacked);

  for (int64_t M : {1, 5, 33}) {
    const auto x = random_values(static_cast<size_t>(M * c.K), seed += 3, -2.f, 2.f);
    const auto bias = random_values(static_cast<size_t>(N), seed += 5, -1.f, 1.f);
    // Expected: every part alone on the reference backend, in its columns, with its bias slice.
    std::vector<float> want(static_cast<size_t>(M * N)), scale(want.size());
    int64_t offset = 0;
    for (const WeightMatrix& p : host_parts) {
      std::vector<float> y(static_cast<size_t>(M * p.rows));
      reference->matmul(x.data(), M, p, bias.data() + offset, y.data());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < p.rows; ++n) {
          want[m * N + offset + n] = y[m * p.rows + n];
          double magnitude = std::fabs(bias[offset + n]);
          for (int64_t k = 0; k < c.K; ++k) magnitude += std::fabs(x[m * c.K + k] * p.at(n, k));
          scale[m * N + offset + n] = static_cast<float>(magnitude);
        }
      }
      offset += p.rows;
    }
    Tensor dx(*backend, TensorType::kF32, M * c.K), db(*backend, TensorType::kF32, N),
        dy(*backend, TensorType::kF32, M * N), scratch;
    dx.upload(*backend, x.data(), M * c.K);
    db.upload(*backend, bias.data(), N);
    matmul_stacked(*backend, dx.data<float>(), M, stacked, db.data<float>(), dy.data<float>(),
                   scratch);
    std::vector<float> got(static_cast<size_t>(M * N));
    dy.download(*backend, got.data(), M * N);
    // 16-bit activations (block kernels) or bf16 rounding (device tensor cores): 8e-3 of
    // sum |x w| covers both; a part in the wrong columns or with the wrong bias is off by O(1).
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_LE(std::fabs(double(got[i]) - want[i]), 8e-3 * scale[i] + 1e-6)
          << "M=" << M << " output " << i << ": got " << got[i] << " want " << want[i];
    }
  }
}

TEST(StackedMatmul, FusedAndPartsMatchEachPartAlone) {
  const std::vector<Case> cases = {
      {"q/k/v all bf16 (fused)",
       64,
       {{DType::BF16, 48}, {DType::BF16, 16}, {DType::BF16, 16}},
       true,
       false},
      {"q/k bf16, v int8",
       64,
       {{DType::BF16, 48}, {DType::BF16, 16}, {DType::I8, 16}},
       false,
       false},
      {"Q4_K_M-like q/k Q4_K, v Q6_K",
       256,
       {{DType::Q4_K, 64}, {DType::Q4_K, 16}, {DType::Q6_K, 16}},
       false,
       true},
      {"gate Q8_0, up Q4_0", 96, {{DType::Q8_0, 40}, {DType::Q4_0, 40}}, false, true},
      {"gate/up Q4_0 (fused)", 96, {{DType::Q4_0, 40}, {DType::Q4_0, 40}}, true, true},
  };
  for (const std::string& name : available_backends()) {
    for (const Case& c : cases) {
      check_case(name, c);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(StackedMatmul, PartsNeedMatchingColumns) {
  std::vector<float> values(64 * 64, 0.5f);
  std::vector<WeightMatrix> parts;
  parts.push_back(make_weight_matrix(values.data(), 8, 64, DType::BF16));
  parts.push_back(make_weight_matrix(values.data(), 16, 32, DType::I8));
  EXPECT_THROW(stack_rows(std::move(parts)), Error);
  EXPECT_THROW(stack_rows({}), Error);
}

}  // namespace
}  // namespace alem
