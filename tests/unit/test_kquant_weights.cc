// ggml's K-quant super-blocks (Q4_K, Q5_K, Q6_K) kept as they are: alem's dequantisation bit
// for bit against the `gguf` package's on random super-blocks, alem's quantiser byte for byte
// against the numpy quantiser of scripts/reference/make_kquant_reference.py (which writes
// tests/data/kquant_reference.json), the model store keeping the blocks with tensor-parallel
// shards cut only between 256-value super-blocks, and `alem convert --dtype q4_k` storing matrices
// whose rows are not whole super-blocks as q8_0.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "model/convert.h"
#include "model/gguf_quant.h"
#include "model/model_store.h"
#include "model/model_store_writer.h"
#include "tests/block_store_fixture.h"
#include "tests/test_env.h"

namespace alem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string temp_path(const std::string& name) {
  return test::temp_path("kquant", name);
}

std::vector<uint8_t> from_hex(const std::string& s) {
  std::vector<uint8_t> out(s.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<uint8_t>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

json reference() {
  std::ifstream in(test::data_dir() + "/kquant_reference.json");
  EXPECT_TRUE(in.good()) << "tests/data/kquant_reference.json missing";
  return in.good() ? json::parse(in) : json();
}

TEST(KQuantWeights, GeometryAndNames) {
  EXPECT_EQ(dtype_block_elements(DType::Q4_K), 256);
  EXPECT_EQ(dtype_block_bytes(DType::Q4_K), 144);
  EXPECT_EQ(dtype_block_bytes(DType::Q5_K), 176);
  EXPECT_EQ(dtype_block_bytes(DType::Q6_K), 210);
  EXPECT_EQ(dtype_row_bytes(DType::Q6_K, 512), 420u);
  EXPECT_NE(error_of([] { dtype_row_bytes(DType::Q4_K, 576); }).find("256-element blocks"),
            std::string::npos);
  for (DType t : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    EXPECT_TRUE(dtype_is_block(t) && dtype_is_k_quant(t));
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
    DType back = DType::F32;
    ASSERT_TRUE(ggml_type_as_dtype(ggml_type_of(t), &back));
    EXPECT_EQ(back, t);
    const GgmlBlockGeometry g = ggml_block_geometry(ggml_type_of(t));
    EXPECT_EQ(g.elements_per_block, dtype_block_elements(t));
    EXPECT_EQ(g.bytes_per_block, dtype_block_bytes(t));
  }
  EXPECT_FALSE(dtype_is_k_quant(DType::Q4_0));
}

TEST(KQuantWeights, DequantisationMatchesTheGgufPackageBitForBit) {
  const json ref = reference();
  ASSERT_FALSE(ref.is_null());
  int cases = 0;
  for (const json& c : ref.at("cases")) {
    const std::string type = c.at("ggml_type");
    SCOPED_TRACE(type);
    const DType dtype = parse_dtype(type);
    const int64_t rows = c.at("rows"), cols = c.at("cols");
    const std::vector<uint8_t> blocks = from_hex(c.at("blocks_hex"));
    const auto want = c.at("values").get<std::vector<float>>();
    ASSERT_EQ(blocks.size(), static_cast<size_t>(rows) * dtype_row_bytes(dtype, cols));
    std::vector<float> got(static_cast<size_t>(rows * cols));
    dequantize_ggml(ggml_type_of(dtype), blocks.data(), blocks.size(), got.data(), rows * cols);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
          << "value " << i << ": " << got[i] << " vs gguf " << want[i];
    }
    // The same blocks as a WeightMatrix: rows and single elements read alike.
    WeightMatrix m;
    m.dtype = dtype;
    m.rows = rows;
    m.cols = cols;
    m.data.resize(blocks.size());
    std::memcpy(m.data.data(), blocks.data(), blocks.size());
    std::vector<float> row(static_cast<size_t>(cols));
    dequantize_row(m, 1, row.data());
    EXPECT_EQ(std::memcmp(row.data(), want.data() + cols, row.size() * 4), 0);
    EXPECT_EQ(m.at(1, 300), want[static_cast<size_t>(cols + 300)]);
    ++cases;
  }
  EXPECT_EQ(cases, 3);
}

TEST(KQuantWeights, QuantiserMatchesTheNumpyReference) {
  const json ref = reference();
  ASSERT_FALSE(ref.is_null());
  const auto rows = ref.at("quantiser_rows").get<std::vector<std::vector<float>>>();
  for (DType dtype : {DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
    std::string type = dtype_name(dtype);
    for (char& ch : type) ch = static_cast<char>(std::toupper(ch));
    SCOPED_TRACE(type);
    const auto want = ref.at("quantized").at(type).at("rows_hex").get<std::vector<std::string>>();
    ASSERT_EQ(want.size(), rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto cols = static_cast<int64_t>(rows[r].size());
      const WeightMatrix w = make_weight_matrix(rows[r].data(), 1, cols, dtype);
      const std::vector<uint8_t> expected = from_hex(want[r]);
      ASSERT_EQ(w.data.size(), expected.size());
      for (size_t i = 0; i < expected.size(); ++i) {
        ASSERT_EQ(int{w.data.data()[i]}, int{expected[i]}) << "row " << r << " byte " << i;
      }
      // And the blocks hold the values: every value within 3/4 of a quantisation step of its
      // sub-block (its range over the levels) plus the rounding of the sub-block scales, which
      // are steps of the super-block's largest (3% of its largest magnitude covers that).
      std::vector<float> back(static_cast<size_t>(cols));
      dequantize_row(w, 0, back.data());
      const int group = dtype == DType::Q6_K ? 16 : 32;
      const double levels = dtype == DType::Q4_K ? 15 : (dtype == DType::Q5_K ? 31 : 63);
      for (int64_t sb = 0; sb < cols / 256; ++sb) {
        double super_max = 0;
        for (int64_t k = sb * 256; k < sb * 256 + 256; ++k) {
          super_max = std::max(super_max, std::fabs(double(rows[r][k])));
        }
        for (int64_t g = sb * 256 / group; g < (sb + 1) * 256 / group; ++g) {
          double lo = 0, hi = 0;
          for (int k = 0; k < group; ++k) {
            lo = std::min(lo, double(rows[r][g * group + k]));
            hi = std::max(hi, double(rows[r][g * group + k]));
          }
          const double bound = 0.75 * (hi - lo) / levels + 0.03 * super_max + 1e-6;
          for (int k = 0; k < group; ++k) {
            const size_t i = static_cast<size_t>(g * group + k);
            EXPECT_LE(std::fabs(back[i] - rows[r][i]), bound) << "row " << r << " value " << i;
          }
        }
      }
    }
  }
}

TEST(KQuantWeights, StoreKeepsSuperBlocksAndCutsShardsBetweenThem) {
  constexpr int64_t kRows = 70, kCols = 768;
  const test::BlockStore fx(
      temp_path("store.h5"), kRows, kCols, {DType::Q4_K, DType::Q5_K, DType::Q6_K},
      [rng = std::mt19937(9), dist = std::normal_distribution<float>(0.f, 1.f)]() mutable {
        return dist(rng);
      },
      [](ModelStoreWriter& w) {
        std::vector<float> narrow(4 * 96, 0.5f);
        EXPECT_NE(error_of([&] { w.add_matrix("narrow", narrow.data(), 4, 96, DType::Q4_K); }), "");
      });
  const std::string& path = fx.path;
  const std::map<DType, WeightMatrix>& matrices = fx.matrices;
  {
    ModelStoreReader r(path);
    EXPECT_EQ(r.verify(), "");
    for (const auto& [dtype, m] : matrices) {
      const std::string name = "m." + dtype_name(dtype);
      SCOPED_TRACE(name);
      EXPECT_EQ(r.tensor_info(name).dtype, dtype);
      EXPECT_EQ(r.tensor_info(name).shape, (std::vector<int64_t>{kRows, kCols}));
      const WeightMatrix whole = r.read_matrix(name, 0, kRows);
      ASSERT_EQ(whole.data.size(), m.data.size());
      EXPECT_EQ(std::memcmp(whole.data.data(), m.data.data(), m.data.size()), 0);
      // tp 3 over the columns: 256 each, whole super-blocks.
      const WeightMatrix shard = r.read_matrix(name, 5, 40, 256, 256);
      const size_t bb = static_cast<size_t>(dtype_block_bytes(dtype));
      for (int64_t i = 0; i < 40; ++i) {
        ASSERT_EQ(std::memcmp(shard.data.data() + i * shard.row_bytes(),
                              m.data.data() + (5 + i) * m.row_bytes() + bb, bb),
                  0)
            << "row " << i;
      }
      // tp 2 would cut a super-block in half (384 columns): refused, naming the reason.
      const std::string refused = error_of([&] { r.read_matrix(name, 0, 4, 384, 384); });
      EXPECT_NE(refused.find("does not fall on its 256-element block boundaries"),
                std::string::npos)
          << refused;
    }
  }
}

// Q3_K's quantiser (alem's rule, as Q6_K's: no independent reference quantises the same way)
// holds its values: every value within 3/4 of a step of its 16-value sub-block (its range over 7
// levels) plus the rounding of the sub-block scales to steps of the super-block's largest (1/32
// of the largest magnitude, half a step of it per level), and the block layout is ggml's: the
// gguf package-checked dequantisation reads it back.
TEST(KQuantWeights, Q3KQuantiserHoldsItsValues) {
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> row(1024);
  for (size_t i = 0; i < row.size(); ++i) row[i] = normal(rng) * (i < 512 ? 1.f : 0.01f);
  std::fill(row.begin() + 256, row.begin() + 272, 0.f);  // an all-zero sub-block
  const WeightMatrix w = make_weight_matrix(row.data(), 1, 1024, DType::Q3_K);
  ASSERT_EQ(w.data.size(), 4u * 110u);
  std::vector<float> back(row.size());
  dequantize_row(w, 0, back.data());
  for (int sb = 0; sb < 4; ++sb) {
    double super_max = 0;
    for (int k = 256 * sb; k < 256 * sb + 256; ++k)
      super_max = std::max(super_max, std::fabs(double(row[k])));
    for (int g = 16 * sb; g < 16 * sb + 16; ++g) {
      double lo = 0, hi = 0;
      for (int k = 0; k < 16; ++k) {
        lo = std::min(lo, double(row[16 * g + k]));
        hi = std::max(hi, double(row[16 * g + k]));
      }
      const double bound = 0.75 * (hi - lo) / 7 + 4.5 * super_max / 128 + 1e-6;
      for (int k = 0; k < 16; ++k) {
        EXPECT_LE(std::fabs(back[16 * g + k] - row[16 * g + k]), bound)
            << "value " << 16 * g + k << ": " << row[16 * g + k] << " -> " << back[16 * g + k];
      }
    }
  }
}

TEST(KQuantWeights, ConvertToQ4KFallsBackToQ8_0ForRowsOfPartBlocks) {
  // tests/data/tiny-llama: hidden 128, intermediate 384, so no matrix has rows of whole
  // super-blocks and all of them are stored as q8_0; the store still loads and verifies.
  const std::string out = temp_path("tiny-q4k.h5");
  ConvertOptions options;
  options.dtype = DType::Q4_K;
  convert_safetensors(test::data_dir() + "/tiny-llama", out, options);
  {
    ModelStoreReader store(out);
    EXPECT_EQ(store.tensor_info("model.layers.0.mlp.down_proj.weight").dtype, DType::Q8_0);
    EXPECT_EQ(store.tensor_info("model.layers.0.self_attn.q_proj.weight").dtype, DType::Q8_0);
    EXPECT_EQ(store.tensor_info("model.layers.0.input_layernorm.weight").dtype, DType::F32);
  }
  EXPECT_EQ(verify_store(out), "");
  fs::remove(out);
}

}  // namespace
}  // namespace alem
