// bf16 weights with coded exponents (model/bf16_coded.h): the form gives back every bit it was
// made from (zeros of both signs, values below a row's window, subnormals, infinities and NaNs),
// declines matrices it would not pay for, and the CPU backend's kernels on it (AVX-512's and
// AVX2's: the small-batch decode kernels, exact and bf16 dot products, and the rows unpacked for
// every larger M) agree with the same backend on the plain matrix, and with the reference
// backend.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/reference_backend.h"
#include "model/bf16_coded.h"
#include "model/weights.h"

namespace alem {
namespace {

// Normal values of spread `sigma` as bf16 bits, with the cases the form must keep: exact zeros of
// both signs, values far below their row's largest one (exceptions), subnormals, one row of
// zeros, and one row whose values span a single binary order of magnitude.
std::vector<uint16_t> weight_bits(int64_t rows, int64_t cols, uint32_t seed, float sigma = 0.05f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, sigma);
  std::uniform_int_distribution<int64_t> column(0, cols - 1);
  std::vector<uint16_t> bits(static_cast<size_t>(rows * cols));
  for (auto& b : bits) b = f32_to_bf16(normal(rng));
  for (int64_t r = 0; r < rows; ++r) {
    uint16_t* row = bits.data() + r * cols;
    row[column(rng)] = 0x0000;
    row[column(rng)] = 0x8000;
    if (r % 2 == 0) row[column(rng)] = f32_to_bf16(sigma * 1e-6f);  // an exception
    row[column(rng)] = f32_to_bf16(-sigma * 1e-3f);                 // near the window's lower edge
    if (r % 5 == 0) row[column(rng)] = 0x0001;                      // a subnormal
    if (r % 4 == 1) row[column(rng)] = f32_to_bf16(sigma * 40.f);   // an outlier
  }
  if (rows > 2) std::fill_n(bits.begin() + cols, cols, uint16_t{0});
  if (rows > 3) {
    for (int64_t c = 0; c < cols; ++c)
      bits[static_cast<size_t>(2 * cols + c)] = 0x3F80 | (c & 0x7F);
  }
  return bits;
}

std::vector<uint16_t> decoded(const AlignedBuffer& coded, int64_t rows, int64_t cols) {
  const Bf16CodedView view = bf16_coded_view(coded, rows, cols);
  std::vector<uint16_t> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) decode_bf16_row(view, r, out.data() + r * cols);
  return out;
}

WeightMatrix bf16_matrix(const std::vector<uint16_t>& bits, int64_t rows, int64_t cols) {
  WeightMatrix w;
  w.dtype = DType::BF16;
  w.rows = rows;
  w.cols = cols;
  w.data = AlignedBuffer(bits.size() * sizeof(uint16_t));
  std::memcpy(w.data.data(), bits.data(), w.data.size());
  return w;
}

TEST(Bf16Coded, GivesBackEveryBit) {
  for (int64_t cols : {64, 576, 2048}) {
    const int64_t rows = 37;
    const auto bits = weight_bits(rows, cols, static_cast<uint32_t>(cols));
    const AlignedBuffer coded = code_bf16(rows, cols, bits.data(), 1.0);
    ASSERT_FALSE(coded.empty()) << cols;
    EXPECT_EQ(decoded(coded, rows, cols), bits) << cols;
    // 12 bits per weight, the tables, the offsets and the few exceptions.
    const Bf16CodedView view = bf16_coded_view(coded, rows, cols);
    const size_t exceptions = view.exception_begin[rows];
    EXPECT_GE(exceptions, static_cast<size_t>(rows / 2)) << "the rows list their tiny values";
    if (cols >= 576) {
      EXPECT_LE(exceptions, static_cast<size_t>(rows * cols / 100)) << cols;
    }
    EXPECT_EQ(coded.size(), static_cast<size_t>(rows * cols * 3 / 2) + rows * 16 + (rows + 1) * 4 +
                                exceptions * 4);
  }
}

TEST(Bf16Coded, KeepsInfinitiesAndNansWhenAskedAndDeclinesWhatDoesNotPay) {
  const int64_t rows = 4, cols = 128;
  auto bits = weight_bits(rows, cols, 7);
  bits[5] = 0x7F80;             // +inf: row 0's window moves to the top, most become exceptions
  bits[cols + 9] = 0x7FC1;      // a NaN in row 1
  bits[3 * cols + 1] = 0xFF80;  // -inf in row 3
  EXPECT_TRUE(code_bf16(rows, cols, bits.data()).empty()) << "most weights outside the window";
  const AlignedBuffer coded = code_bf16(rows, cols, bits.data(), 1.0);
  ASSERT_FALSE(coded.empty());
  EXPECT_EQ(decoded(coded, rows, cols), bits);
  EXPECT_FALSE(can_code_bf16(4, 96)) << "columns in whole chunks of 64 only";
  EXPECT_FALSE(can_code_bf16(4, 65536 + 64));
  EXPECT_TRUE(can_code_bf16(1, 65536));
}

TEST(Bf16Coded, RejectsABufferThatDisagreesWithItsShape) {
  const auto bits = weight_bits(8, 64, 3);
  const AlignedBuffer coded = code_bf16(8, 64, bits.data(), 1.0);
  ASSERT_FALSE(coded.empty());
  EXPECT_THROW(bf16_coded_view(coded, 9, 64), std::exception);
  EXPECT_THROW(bf16_coded_view(coded, 8, 128), std::exception);
}

// The CPU backend's kernels on the coded form, on AVX-512 (exact and bf16 dot products) and on
// AVX2 (the same bytes in 256-bit registers; AVX-VNNI CPUs run AVX2's). Up to 4 rows of x (8
// with bf16 dot products) take the kernels that unpack in registers (exact: f32 x; bf16 dot: x
// rounded), held against the reference backend on the plain matrix; every larger M unpacks rows
// for the plain kernels, which must give what they give on the plain matrix, bit for bit.
struct CodedKernels {
  cpu::Isa isa;
  bool bf16_dot;
};
void PrintTo(const CodedKernels& k, std::ostream* os) {
  *os << cpu::isa_name(k.isa) << (k.bf16_dot ? " with bf16 dot products" : " exact");
}

class CpuBf16Coded : public ::testing::TestWithParam<CodedKernels> {
 protected:
  // Skips where this CPU lacks the kernels.
  bool supported() const {
    if (!cpu::isa_supported(GetParam().isa)) return false;
    return !GetParam().bf16_dot || cpu::has_avx512_bf16();
  }
};

TEST_P(CpuBf16Coded, MatmulsAndEmbeddingsMatchThePlainMatrix) {
  if (!supported()) GTEST_SKIP() << "this CPU lacks these kernels";
  const bool bf16_dot = GetParam().bf16_dot;
  CpuBackend cpu(GetParam().isa, 2, true, bf16_dot);
  cpu.set_code_bf16(true);
  ASSERT_TRUE(cpu.codes_bf16());
  ReferenceBackend ref;
  uint32_t seed = 40;
  for (auto [N, K] :
       {std::pair<int64_t, int64_t>{200, 576}, {1000, 256}, {48, 2048}, {7, 192}, {24, 5632}}) {
    const auto bits = weight_bits(N, K, seed += 5);
    const WeightMatrix plain = bf16_matrix(bits, N, K);
    WeightMatrix coded = bf16_matrix(bits, N, K);
    cpu.adopt_weight(coded);
    ASSERT_EQ(coded.layout, BlockLayout::kBf16Coded) << N << "x" << K;
    if (K >= 576) {
      EXPECT_LT(coded.bytes(), plain.bytes() * 4 / 5) << "12 bits a weight, not 16";
    }
    std::vector<float> bias(static_cast<size_t>(N));
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(-2.f, 2.f);
    for (float& b : bias) b = uniform(rng);
    for (int64_t M : {1, 2, 3, 7, 13, 40, 130}) {
      std::vector<float> x(static_cast<size_t>(M * K));
      for (float& v : x) v = uniform(rng);
      const std::string what =
          std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
      std::vector<float> got(static_cast<size_t>(M * N), NAN), want(got.size(), NAN);
      cpu.matmul(x.data(), M, coded, bias.data(), got.data());
      if (M > cpu.coded_rows_in_registers(K)) {
        cpu.matmul(x.data(), M, plain, bias.data(), want.data());
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << what;
        continue;
      }
      ref.matmul(x.data(), M, plain, bias.data(), want.data());
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < N; ++n) {
          double magnitude = std::fabs(bias[n]);
          for (int64_t k = 0; k < K; ++k) {
            magnitude += std::fabs(x[m * K + k] * bf16_to_f32(bits[n * K + k]));
          }
          // x rounded to bf16 is 2^-9 off per value; f32 sums in another order, 1e-5.
          const double tol = (bf16_dot ? 4e-3 : 1e-5) * magnitude + 1e-30;
          ASSERT_LE(std::fabs(double(got[m * N + n]) - want[m * N + n]), tol)
              << what << " at " << m << "," << n;
        }
      }
      // The streaming path (forced) unpacks rows for the plain kernel at these M too.
      std::vector<float> forced(got.size());
      cpu.matmul_with_path(x.data(), M, coded, bias.data(), forced.data(), false);
      std::vector<float> forced_plain(got.size());
      cpu.matmul_with_path(x.data(), M, plain, bias.data(), forced_plain.data(), false);
      ASSERT_EQ(0, std::memcmp(forced.data(), forced_plain.data(), got.size() * sizeof(float)))
          << "the streaming path unpacking rows " << what;
    }
    // A tied embedding reads its rows from the coded form.
    const std::vector<int32_t> tokens = {0, static_cast<int32_t>(N - 1), 2, -1,
                                         static_cast<int32_t>(N)};
    std::vector<float> rows(tokens.size() * K), want_rows(rows.size());
    cpu.embedding(coded, 0, tokens.data(), static_cast<int64_t>(tokens.size()), rows.data());
    cpu.embedding(plain, 0, tokens.data(), static_cast<int64_t>(tokens.size()), want_rows.data());
    EXPECT_EQ(0, std::memcmp(rows.data(), want_rows.data(), rows.size() * sizeof(float)));
    EXPECT_EQ(coded.at(N - 1, K - 1), plain.at(N - 1, K - 1));
  }
}

TEST_P(CpuBf16Coded, ExceptionsAreAddedBack) {
  if (!supported()) GTEST_SKIP() << "this CPU lacks these kernels";
  CpuBackend cpu(GetParam().isa, 1, true, GetParam().bf16_dot);
  cpu.set_code_bf16(true);
  // One row: a large value sets the window; a tiny one below it meets a huge x, so the result
  // is the exception's product alone.
  const int64_t K = 128;
  std::vector<uint16_t> bits(K, 0);
  bits[3] = f32_to_bf16(1024.f);
  bits[77] = f32_to_bf16(0.015625f);  // 2^-6: 16 binary orders below 2^10
  WeightMatrix w = bf16_matrix(bits, 1, K);
  cpu.adopt_weight(w);
  ASSERT_EQ(w.layout, BlockLayout::kBf16Coded);
  ASSERT_EQ(bf16_coded_view(w.data, 1, K).exception_begin[1], 1u);
  std::vector<float> x(K, 0.f);
  x[77] = 256.f;
  float y = 0;
  cpu.matmul(x.data(), 1, w, nullptr, &y);
  EXPECT_EQ(y, 4.f);
  std::vector<float> x2(2 * K, 0.f);
  x2[K + 77] = 512.f;
  float y2[2] = {1, 1};
  cpu.matmul(x2.data(), 2, w, nullptr, y2);
  EXPECT_EQ(y2[0], 0.f);
  EXPECT_EQ(y2[1], 8.f);
}

INSTANTIATE_TEST_SUITE_P(Kernels, CpuBf16Coded,
                         ::testing::Values(CodedKernels{cpu::Isa::kAvx512, false},
                                           CodedKernels{cpu::Isa::kAvx512, true},
                                           CodedKernels{cpu::Isa::kAvx2, false},
                                           CodedKernels{cpu::Isa::kAvxVnni, false}),
                         [](const auto& info) {
                           return std::string(cpu::isa_name(info.param.isa)) +
                                  (info.param.bf16_dot ? "_bf16_dot" : "_exact");
                         });

// The portable kernels keep bf16 plain, and refuse a matrix another backend coded rather than
// misread it.
TEST(Bf16Coded, ScalarKernelsKeepThePlainForm) {
  CpuBackend scalar(cpu::Isa::kScalar, 1);
  scalar.set_code_bf16(true);
  EXPECT_FALSE(scalar.codes_bf16());
  const auto bits = weight_bits(16, 576, 9);
  WeightMatrix w = bf16_matrix(bits, 16, 576);
  scalar.adopt_weight(w);
  EXPECT_EQ(w.layout, BlockLayout::kRowMajor);
  if (!cpu::isa_supported(cpu::Isa::kAvx2)) return;
  CpuBackend avx2(cpu::Isa::kAvx2, 1);
  avx2.set_code_bf16(true);
  avx2.adopt_weight(w);
  ASSERT_EQ(w.layout, BlockLayout::kBf16Coded);
  std::vector<float> x(576, 1.f), y(16);
  EXPECT_THROW(scalar.matmul(x.data(), 1, w, nullptr, y.data()), std::exception);
}

// The engine's "cpu" backend codes bf16 weights on AVX-512 and AVX2 by default, so the engine's
// golden tests against transformers (test_engine_golden.cc) run on the coded form;
// ALEM_CPU_BF16_CODED=0 keeps them plain, and any other value is refused.
TEST(Bf16Coded, TheEnginesBackendCodesByDefaultAndTheSettingIsChecked) {
  const char* before = std::getenv("ALEM_CPU_BF16_CODED");
  const std::string saved = before ? before : "";
  unsetenv("ALEM_CPU_BF16_CODED");
  auto backend = make_backend("cpu");
  const auto* cpu = dynamic_cast<const CpuBackend*>(backend.get());
  ASSERT_NE(cpu, nullptr);
  EXPECT_EQ(cpu->codes_bf16(), cpu->isa() != cpu::Isa::kScalar);
  setenv("ALEM_CPU_BF16_CODED", "0", 1);
  EXPECT_FALSE(dynamic_cast<const CpuBackend*>(make_backend("cpu").get())->codes_bf16());
  setenv("ALEM_CPU_BF16_CODED", "yes", 1);
  try {
    make_backend("cpu");
    ADD_FAILURE() << "an invalid ALEM_CPU_BF16_CODED was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ALEM_CPU_BF16_CODED"), std::string::npos) << e.what();
  }
  if (before) {
    setenv("ALEM_CPU_BF16_CODED", saved.c_str(), 1);
  } else {
    unsetenv("ALEM_CPU_BF16_CODED");
  }
}

}  // namespace
}  // namespace alem
