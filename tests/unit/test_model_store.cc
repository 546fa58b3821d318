// The HDF5 model store: write/read round trips for f32, bf16 and int8 including row and column
// hyperslabs, the documented chunk layout, bytes_read accounting, the config/tokenizer groups,
// the hash tree and digest (recomputed here from their documented definition with OpenSSL),
// reads that refuse a flipped weight byte, a tampered hash tree and a corrupt tokenizer (never a
// crash), clear errors for missing, foreign, truncated and old files, and what verification
// costs on the real model.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <openssl/evp.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include "core/error.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/model_store.h"
#include "model/model_store_writer.h"
#include "mpi/fake_process_group.h"
#include "tests/test_env.h"

namespace alem {
namespace {

namespace fs = std::filesystem;

std::string temp_path(const std::string& name) {
  return test::temp_path("store", name);
}

ModelConfig small_config() {
  ModelConfig c;
  c.name = "store-test";
  c.vocab_size = 200;
  c.hidden_size = 160;
  c.num_layers = 1;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 40;
  c.intermediate_size = 96;
  c.max_position_embeddings = 128;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  return c;
}

TokenizerData small_tokenizer() {
  TokenizerData t;
  t.pre_tokenizer = "llama3";
  t.tokens = {"<s>", "</s>", "<|im_end|>", "\xc4\xa0the", "h\xc3\xa9", "a", "b", "ab"};
  t.token_kinds = {3, 3, 3, 1, 1, 1, 1, 4};
  t.merges = {"a b", "\xc4\xa0 t"};
  t.bos_token_id = 0;
  t.eos_token_id = 2;
  t.unknown_token_id = -1;
  t.padding_token_id = 1;
  t.add_bos_token = true;
  t.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
  return t;
}

std::vector<float> random_values(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 0.5f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// bf16 rounding written independently of core/dtype.h: round-to-nearest-even on the top 16 bits.
uint16_t reference_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t lower = bits & 0xffffu;
  uint32_t upper = bits >> 16;
  if (lower > 0x8000u || (lower == 0x8000u && (upper & 1u))) ++upper;
  return static_cast<uint16_t>(upper);
}
float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Fixture {
  static constexpr int64_t kRows = 200, kCols = 160;  // not multiples of 64: clipped edge tiles
  std::string path;
  std::vector<float> f32 = random_values(kRows * kCols, 1);
  std::vector<float> bf16 = random_values(kRows * kCols, 2);
  std::vector<float> int8 = random_values(kRows * kCols, 3);
  std::vector<float> norm = random_values(kCols, 4);
  std::string digest;

  explicit Fixture(const std::string& name) : path(temp_path(name)) {
    ModelStoreWriter w(path, small_config(), small_tokenizer(), "test:fixture");
    w.add_matrix("m.f32", f32.data(), kRows, kCols, DType::F32);
    w.add_matrix("m.bf16", bf16.data(), kRows, kCols, DType::BF16);
    w.add_matrix("m.int8", int8.data(), kRows, kCols, DType::I8);
    w.add_vector("norm", norm.data(), kCols);
    EXPECT_EQ(w.tensor_count(), 4);
    digest = w.finish();
  }
  ~Fixture() { fs::remove(path); }
};

TEST(ModelStore, RoundTripWholeTensors) {
  Fixture fx("roundtrip.h5");
  ModelStoreReader r(fx.path);
  EXPECT_EQ(r.model_digest(), fx.digest);
  const auto tensors = r.list_tensors();
  ASSERT_EQ(tensors.size(), 4u);  // the .scales dataset is not listed as a tensor
  EXPECT_EQ(tensors[0].name, "m.bf16");
  EXPECT_EQ(tensors[1].name, "m.f32");
  EXPECT_EQ(tensors[2].name, "m.int8");
  EXPECT_EQ(tensors[3].name, "norm");
  EXPECT_EQ(r.tensor_info("m.int8").dtype, DType::I8);
  EXPECT_EQ(r.tensor_info("m.bf16").dtype, DType::BF16);
  EXPECT_EQ(r.tensor_info("m.f32").shape, (std::vector<int64_t>{200, 160}));
  EXPECT_EQ(r.tensor_info("norm").shape, (std::vector<int64_t>{160}));
  EXPECT_FALSE(r.has_tensor("m.int8.scales"));

  const WeightMatrix a = r.read_matrix("m.f32", 0, Fixture::kRows);
  ASSERT_EQ(a.dtype, DType::F32);
  for (int64_t i = 0; i < Fixture::kRows * Fixture::kCols; ++i)
    ASSERT_EQ(a.data.as<float>()[i], fx.f32[i]);

  const WeightMatrix b = r.read_matrix("m.bf16", 0, Fixture::kRows);
  ASSERT_EQ(b.dtype, DType::BF16);
  for (int64_t i = 0; i < Fixture::kRows * Fixture::kCols; ++i) {
    ASSERT_EQ(b.data.as<uint16_t>()[i], reference_bf16(fx.bf16[i])) << i;
  }

  const WeightMatrix q = r.read_matrix("m.int8", 0, Fixture::kRows);
  ASSERT_EQ(q.dtype, DType::I8);
  ASSERT_EQ(q.scales.size(), static_cast<size_t>(Fixture::kRows * Fixture::kCols / 32));
  for (int64_t row = 0; row < Fixture::kRows; ++row) {
    for (int64_t g = 0; g < Fixture::kCols / 32; ++g) {
      float amax = 0;
      for (int k = 0; k < 32; ++k)
        amax = std::max(amax, std::fabs(fx.int8[row * Fixture::kCols + g * 32 + k]));
      const float scale = q.scales[row * (Fixture::kCols / 32) + g];
      ASSERT_NEAR(scale, amax / 127.f, 1e-7f);
      for (int k = 0; k < 32; ++k) {
        const int64_t c = g * 32 + k;
        ASSERT_NEAR(q.at(row, c), fx.int8[row * Fixture::kCols + c], scale * 0.5f + 1e-7f);
      }
    }
  }
  EXPECT_EQ(r.read_vector("norm"), fx.norm);
}

TEST(ModelStore, RowAndColumnHyperslabs) {
  Fixture fx("slabs.h5");
  ModelStoreReader r(fx.path);
  const int64_t C = Fixture::kCols;
  struct Slab {
    int64_t r0, nr, c0, nc;
  };
  for (const Slab s : {Slab{37, 70, 64, 96}, Slab{0, 1, 0, C}, Slab{199, 1, 32, 32},
                       Slab{64, 64, 128, 32}, Slab{5, 190, 0, 64}}) {
    SCOPED_TRACE(std::to_string(s.r0) + "+" + std::to_string(s.nr) + " x " + std::to_string(s.c0) +
                 "+" + std::to_string(s.nc));
    const WeightMatrix a = r.read_matrix("m.f32", s.r0, s.nr, s.c0, s.nc);
    const WeightMatrix b = r.read_matrix("m.bf16", s.r0, s.nr, s.c0, s.nc);
    const WeightMatrix q = r.read_matrix("m.int8", s.r0, s.nr, s.c0, s.nc);
    const WeightMatrix q_full = r.read_matrix("m.int8", 0, Fixture::kRows);
    ASSERT_EQ(a.rows, s.nr);
    ASSERT_EQ(a.cols, s.nc);
    ASSERT_EQ(q.scales.size(), static_cast<size_t>(s.nr * s.nc / 32));
    for (int64_t i = 0; i < s.nr; ++i) {
      for (int64_t j = 0; j < s.nc; ++j) {
        const int64_t src = (s.r0 + i) * C + s.c0 + j;
        ASSERT_EQ(a.at(i, j), fx.f32[src]);
        ASSERT_EQ(b.at(i, j), from_bf16(reference_bf16(fx.bf16[src])));
        ASSERT_EQ(q.at(i, j), q_full.at(s.r0 + i, s.c0 + j));
      }
    }
  }
  const std::vector<float> part = r.read_vector("norm", 10, 20);
  EXPECT_EQ(part, std::vector<float>(fx.norm.begin() + 10, fx.norm.begin() + 30));
  // col_count = -1 reads to the end.
  EXPECT_EQ(r.read_matrix("m.f32", 3, 2, 96).cols, C - 96);
}

TEST(ModelStore, BytesReadCountsOnlyTheShard) {
  Fixture fx("bytes.h5");
  ModelStoreReader r(fx.path);
  EXPECT_EQ(r.bytes_read(), 0u);
  r.read_matrix("m.bf16", 100, 50);  // half of a tensor-parallel split of rows
  EXPECT_EQ(r.bytes_read(), 50u * 160u * 2u);
  r.read_matrix("m.int8", 0, 200, 64, 64);  // a column shard: int8 payload plus its scales
  EXPECT_EQ(r.bytes_read(), 50u * 160u * 2u + 200u * 64u + 200u * 2u * 4u);
  r.read_vector("norm", 0, 80);
  EXPECT_EQ(r.bytes_read(), 50u * 160u * 2u + 200u * 64u + 200u * 2u * 4u + 80u * 4u);
}

TEST(ModelStore, ChunkLayoutIsTiles) {
  Fixture fx("chunks.h5");
  hid_t file = H5Fopen(fx.path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  for (const char* name : {"tensors/m.f32", "tensors/m.bf16", "tensors/m.int8"}) {
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    hid_t dcpl = H5Dget_create_plist(ds);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED) << name;
    hsize_t chunk[2] = {0, 0};
    EXPECT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
    EXPECT_EQ(chunk[0], 64u);
    EXPECT_EQ(chunk[1], 64u);
    EXPECT_EQ(H5Pget_nfilters(dcpl), 0) << "no compression";
    H5Pclose(dcpl);
    H5Dclose(ds);
  }
  hid_t ds = H5Dopen2(file, "tensors/m.int8.scales", H5P_DEFAULT);
  hid_t dcpl = H5Dget_create_plist(ds);
  hsize_t chunk[2] = {0, 0};
  H5Pget_chunk(dcpl, 2, chunk);
  EXPECT_EQ(chunk[0], 64u);
  EXPECT_EQ(chunk[1], 5u);  // 160/32 groups: clipped
  H5Pclose(dcpl);
  H5Dclose(ds);
  H5Fclose(file);
}

TEST(ModelStore, ConfigAndTokenizerRoundTrip) {
  Fixture fx("meta.h5");
  ModelStoreReader r(fx.path);
  EXPECT_EQ(r.config().to_json(), small_config().to_json());
  EXPECT_EQ(r.config().eos_token_ids, (std::vector<int>{2, 3}));
  const TokenizerData want = small_tokenizer();
  const TokenizerData& got = r.tokenizer();
  EXPECT_EQ(got.model, want.model);
  EXPECT_EQ(got.pre_tokenizer, want.pre_tokenizer);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.token_kinds, want.token_kinds);
  EXPECT_EQ(got.merges, want.merges);
  EXPECT_EQ(got.bos_token_id, want.bos_token_id);
  EXPECT_EQ(got.eos_token_id, want.eos_token_id);
  EXPECT_EQ(got.unknown_token_id, want.unknown_token_id);
  EXPECT_EQ(got.padding_token_id, want.padding_token_id);
  EXPECT_EQ(got.add_bos_token, want.add_bos_token);
  EXPECT_EQ(got.chat_template, want.chat_template);
}

// The hash tree and digest, rebuilt here from the definition in docs/model-store.md.
class Sha256 {
 public:
  Sha256() { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  void raw(const void* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  void raw(const std::string& s) { raw(s.data(), s.size()); }
  void u64(uint64_t v) { raw(&v, 8); }
  void text(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  std::string bin() {
    unsigned char out[32];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, out, &len);
    return std::string(reinterpret_cast<char*>(out), 32);
  }
  std::string hex() {
    const std::string b = bin();
    char buf[65];
    for (int i = 0; i < 32; ++i) std::snprintf(buf + 2 * i, 3, "%02x", static_cast<uint8_t>(b[i]));
    return std::string(buf, 64);
  }

 private:
  EVP_MD_CTX* ctx_ = EVP_MD_CTX_new();
};

// SHA-256 of 64 x 64 tiles (1-D: 4096 elements), row-major over the tile grid; every tile's
// bytes row by row. Written from the definition in docs/model-store.md.
std::vector<std::string> reference_leaves(const void* data, int64_t rows, int64_t cols,
                                          size_t element, bool one_d) {
  const int64_t tr = one_d ? 1 : 64, tc = one_d ? 4096 : 64;
  std::vector<std::string> leaves;
  const auto* bytes = static_cast<const uint8_t*>(data);
  for (int64_t r0 = 0; r0 < rows; r0 += tr) {
    for (int64_t c0 = 0; c0 < cols; c0 += tc) {
      Sha256 h;
      for (int64_t r = r0; r < std::min(rows, r0 + tr); ++r) {
        h.raw(bytes + (r * cols + c0) * element, (std::min(cols, c0 + tc) - c0) * element);
      }
      leaves.push_back(h.bin());
    }
  }
  return leaves;
}

std::string reference_root(const std::string& name, const std::string& dtype,
                           const std::vector<int64_t>& shape,
                           const std::vector<std::string>& leaves,
                           const std::vector<std::string>* scale_leaves) {
  Sha256 h;
  h.text("alem-tensor-root-v2");
  h.text(name);
  h.text(dtype);
  h.u64(shape.size());
  for (int64_t d : shape) h.u64(static_cast<uint64_t>(d));
  h.u64(shape.size() == 1 ? 1 : 64);
  h.u64(shape.size() == 1 ? 4096 : 64);
  h.u64(leaves.size());
  for (const std::string& l : leaves) h.raw(l.data(), l.size());
  if (scale_leaves) {
    h.u64(scale_leaves->size());
    for (const std::string& l : *scale_leaves) h.raw(l.data(), l.size());
  }
  return h.bin();
}

TEST(ModelStore, DigestFollowsDocumentedDefinition) {
  Fixture fx("digest_def.h5");
  const TokenizerData t = small_tokenizer();
  Sha256 h;
  h.text("alem-model-digest-v2");
  h.text(small_config().to_json());
  h.text(t.model);
  h.text(t.pre_tokenizer);
  h.u64(t.tokens.size());
  for (const auto& s : t.tokens) h.text(s);
  h.u64(t.token_kinds.size());
  h.raw(t.token_kinds.data(), 4 * t.token_kinds.size());
  h.u64(t.merges.size());
  for (const auto& s : t.merges) h.text(s);
  for (int64_t v : {int64_t{t.bos_token_id}, int64_t{t.eos_token_id}, int64_t{t.unknown_token_id},
                    int64_t{t.padding_token_id}, int64_t{t.add_bos_token}}) {
    h.u64(static_cast<uint64_t>(v));
  }
  h.text(t.chat_template);
  h.u64(4);  // tensors, sorted by name: m.bf16, m.f32, m.int8, norm; each name and its root
  const int64_t R = Fixture::kRows, C = Fixture::kCols;
  std::vector<uint16_t> bits(R * C);
  for (int64_t i = 0; i < R * C; ++i) bits[i] = reference_bf16(fx.bf16[i]);
  h.text("m.bf16");
  h.raw(reference_root("m.bf16", "bf16", {R, C}, reference_leaves(bits.data(), R, C, 2, false),
                       nullptr));
  h.text("m.f32");
  h.raw(reference_root("m.f32", "f32", {R, C}, reference_leaves(fx.f32.data(), R, C, 4, false),
                       nullptr));
  // int8: quantise independently (absmax / 127 per group of 32, round to nearest).
  std::vector<int8_t> q(R * C);
  std::vector<float> scales(R * C / 32);
  for (int64_t g = 0; g < R * C / 32; ++g) {
    float amax = 0;
    for (int k = 0; k < 32; ++k) amax = std::max(amax, std::fabs(fx.int8[g * 32 + k]));
    scales[g] = amax / 127.f;
    for (int k = 0; k < 32; ++k) {
      q[g * 32 + k] = static_cast<int8_t>(std::lrintf(fx.int8[g * 32 + k] * (1.f / scales[g])));
    }
  }
  const std::vector<std::string> scale_leaves =
      reference_leaves(scales.data(), R, C / 32, 4, false);
  h.text("m.int8");
  h.raw(reference_root("m.int8", "int8", {R, C}, reference_leaves(q.data(), R, C, 1, false),
                       &scale_leaves));
  h.text("norm");
  h.raw(
      reference_root("norm", "f32", {C}, reference_leaves(fx.norm.data(), 1, C, 4, true), nullptr));
  EXPECT_EQ(fx.digest, h.hex());
  EXPECT_EQ(compute_model_store_digest(fx.path), fx.digest);
}

// File offset of a dataset's first chunk (or contiguous storage), to corrupt payload bytes.
haddr_t payload_address(const std::string& path, const std::string& dataset) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(file, dataset.c_str(), H5P_DEFAULT);
  haddr_t addr = H5Dget_offset(ds);  // contiguous datasets
  if (addr == HADDR_UNDEF) {
    hid_t space = H5Dget_space(ds);
    hsize_t offset[2];
    unsigned mask = 0;
    hsize_t size = 0;
    H5Dget_chunk_info(ds, space, 0, offset, &mask, &addr, &size);
    H5Sclose(space);
  }
  H5Dclose(ds);
  H5Fclose(file);
  return addr;
}

void flip_byte(const std::string& path, uint64_t offset) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x10));
}

TEST(ModelStore, VerifyDetectsAFlippedPayloadByte) {
  for (const char* dataset : {"norm", "m.bf16", "m.int8.scales"}) {
    SCOPED_TRACE(dataset);
    Fixture fx("flip.h5");
    {
      ModelStoreReader r(fx.path);
      EXPECT_EQ(r.verify(), "");
    }
    const haddr_t addr = payload_address(fx.path, std::string("tensors/") + dataset);
    ASSERT_NE(addr, HADDR_UNDEF);
    flip_byte(fx.path, addr + 5);
    ModelStoreReader r(fx.path);  // metadata and hash tree intact: opens fine
    const std::string problem = r.verify();
    EXPECT_NE(problem.find("digest mismatch"), std::string::npos) << problem;
    EXPECT_NE(problem.find(std::string("tensor '") + dataset + "' rows [0, "), std::string::npos)
        << problem;
  }
}

std::string open_error(const std::string& path);

std::string read_error(const std::function<void()>& read) {
  try {
    read();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// One flipped weight byte used to be served (and attested under the original digest): every
// read must now hash the tiles it covers and refuse, naming the tensor, while reads of other
// tiles (another rank's shard) still succeed.
TEST(ModelStore, ReadsRefuseAFlippedWeightByte) {
  Fixture fx("served_flip.h5");
  for (const char* dataset : {"tensors/m.bf16", "tensors/m.int8.scales", "tensors/norm"}) {
    flip_byte(fx.path, payload_address(fx.path, dataset) + 5);  // tile (0, 0)
  }
  ModelStoreReader r(fx.path);
  const std::string bf16 = read_error([&] { r.read_matrix("m.bf16", 10, 20, 0, 32); });
  EXPECT_NE(bf16.find("tensor 'm.bf16' rows [0, 64) cols [0, 64) do not match the hash"),
            std::string::npos)
      << bf16;
  EXPECT_NE(bf16.find(r.model_digest()), std::string::npos) << bf16;
  EXPECT_NE(read_error([&] { r.read_matrix("m.bf16", 0, 200); }), "");
  EXPECT_NE(read_error([&] { r.read_matrix("m.bf16", 0, 200, 0, 64); }), "");   // column shard
  EXPECT_EQ(read_error([&] { r.read_matrix("m.bf16", 64, 136); }), "");         // other rows
  EXPECT_EQ(read_error([&] { r.read_matrix("m.bf16", 0, 200, 64, 96); }), "");  // other cols
  EXPECT_NE(read_error([&] { r.read_matrix("m.int8", 0, 8); }).find("'m.int8.scales'"),
            std::string::npos);
  EXPECT_NE(read_error([&] { r.read_vector("norm", 100, 4); }).find("'norm'"), std::string::npos);
  EXPECT_EQ(read_error([&] { r.read_matrix("m.f32", 0, 200); }), "");
  // Without the check the flipped byte is returned as data: the check is what refuses it.
  ModelStoreReader unchecked(fx.path, ModelStoreReadOptions{.verify_reads = false});
  const WeightMatrix m = unchecked.read_matrix("m.bf16", 0, 64, 0, 64);
  int differing = 0;
  for (int64_t i = 0; i < 64 * 64; ++i) {
    differing +=
        m.data.as<uint16_t>()[i] != reference_bf16(fx.bf16[i / 64 * Fixture::kCols + i % 64]);
  }
  EXPECT_EQ(differing, 1);
}

// Offset and size of a dataset's contiguous storage.
std::pair<haddr_t, hsize_t> contiguous_extent(const std::string& path, const std::string& name) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  const std::pair<haddr_t, hsize_t> out{H5Dget_offset(ds), H5Dget_storage_size(ds)};
  H5Dclose(ds);
  H5Fclose(file);
  return out;
}

// The hash tree itself is data on untrusted storage: changing a recorded root fails at open
// (the roots no longer fold to the digest), changing a recorded leaf fails at the first read
// of that tensor (the leaves no longer fold to its root).
TEST(ModelStore, TamperedHashTreeIsRefused) {
  Fixture fx("tree.h5");
  const std::string copy = temp_path("tree_copy.h5");
  fs::copy_file(fx.path, copy, fs::copy_options::overwrite_existing);
  const auto [roots, roots_size] = contiguous_extent(copy, "integrity/tensor_roots");
  ASSERT_NE(roots, HADDR_UNDEF);
  EXPECT_EQ(roots_size, 4u * 32u);
  flip_byte(copy, roots + 40);  // m.f32's root
  EXPECT_NE(open_error(copy).find("model digest mismatch"), std::string::npos) << open_error(copy);

  fs::copy_file(fx.path, copy, fs::copy_options::overwrite_existing);
  const auto [leaves, leaves_size] = contiguous_extent(copy, "integrity/leaves/m.f32");
  EXPECT_EQ(leaves_size, 4u * 3u * 32u);  // 200 x 160: 4 x 3 tiles
  flip_byte(copy, leaves + 100);
  ModelStoreReader r(copy);
  EXPECT_EQ(read_error([&] { r.read_matrix("m.bf16", 0, 1); }), "");
  const std::string msg = read_error([&] { r.read_matrix("m.f32", 0, 1); });
  EXPECT_NE(msg.find("tensor 'm.f32' do not fold to its recorded root"), std::string::npos) << msg;
  fs::remove(copy);
}

// The tokenizer used to be variable-length strings in HDF5's global heap, and one flipped byte
// there crashed libhdf5 (info, generate, even convert --verify). Now it is fixed-size byte
// datasets checked for bounds and covered by the digest: every flip is a clean error at open.
TEST(ModelStore, CorruptTokenizerIsAnErrorNeverACrash) {
  Fixture fx("tok.h5");
  const std::string copy = temp_path("tok_copy.h5");
  int flips = 0;
  for (const char* name : {"tokens_bytes", "tokens_offsets", "token_kinds", "merges_bytes",
                           "merges_offsets", "chat_template"}) {
    const auto [addr, size] = contiguous_extent(fx.path, std::string("tokenizer/") + name);
    ASSERT_NE(addr, HADDR_UNDEF) << name;
    ASSERT_GT(size, 0u) << name;
    for (hsize_t at = 0; at < size; ++at) {
      for (uint8_t mask : {uint8_t{0x01}, uint8_t{0x80}}) {
        fs::copy_file(fx.path, copy, fs::copy_options::overwrite_existing);
        std::fstream f(copy, std::ios::binary | std::ios::in | std::ios::out);
        f.seekg(static_cast<std::streamoff>(addr + at));
        char c = 0;
        f.get(c);
        f.seekp(static_cast<std::streamoff>(addr + at));
        f.put(static_cast<char>(c ^ mask));
        f.close();
        const std::string msg = open_error(copy);
        EXPECT_NE(msg, "") << name << " byte " << at;
        EXPECT_NE(msg.find(copy), std::string::npos) << msg;
        ++flips;
      }
    }
  }
  EXPECT_GT(flips, 300);
  fs::remove(copy);
}

// Flips anywhere in the file (HDF5 metadata, which format 2 checksums, the hash tree, the
// payload): opening, reading every tensor and verifying may fail, but only with alem::Error.
TEST(ModelStore, ByteFlipsAnywhereNeverCrash) {
  Fixture fx("anywhere.h5");
  const std::string copy = temp_path("anywhere_copy.h5");
  const uintmax_t size = fs::file_size(fx.path);
  std::mt19937 rng(7);
  int refused = 0;
  const int kFlips = 300;
  for (int i = 0; i < kFlips; ++i) {
    const uint64_t at = std::uniform_int_distribution<uint64_t>(0, size - 1)(rng);
    fs::copy_file(fx.path, copy, fs::copy_options::overwrite_existing);
    flip_byte(copy, at);
    try {
      ModelStoreReader r(copy);
      for (const TensorInfo& t : r.list_tensors()) {
        if (t.shape.size() == 2) {
          r.read_matrix(t.name, 0, t.shape[0]);
        } else {
          r.read_vector(t.name);
        }
      }
      if (!r.verify().empty()) ++refused;
    } catch (const Error&) {
      ++refused;
    }
  }
  EXPECT_GT(refused, kFlips / 2);  // most bytes are payload or checksummed metadata
  fs::remove(copy);
}

TEST(ModelStore, OldFormatVersionAsksToReconvert) {
  const std::string old = temp_path("v1.h5");
  {
    hid_t f = H5Fcreate(old.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 10);
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "format", type, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, type, "alem-model");
    H5Aclose(a);
    const int64_t one = 1;
    a = H5Acreate2(f, "format_version", H5T_STD_I64LE, scalar, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT64, &one);
    H5Aclose(a);
    H5Sclose(scalar);
    H5Tclose(type);
    H5Fclose(f);
  }
  const std::string msg = open_error(old);
  EXPECT_NE(msg.find("format_version 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("reconvert it with `alem convert"), std::string::npos) << msg;
  fs::remove(old);
}

// What checking every read costs on the real model: reader open plus every rank's weight load
// (ShardedTransformer), with and without verification, 1 rank and each rank of tp 3; wall time
// of the slowest rank and CPU time (all threads) of the busiest, best of 3. Printed for
// docs/model-store.md; the test itself only checks that both load.
TEST(ModelStore, VerificationCostOnRealModel) {
  const std::string path = test::model_path();
  if (!fs::exists(path)) GTEST_SKIP() << "no model store at " << path;
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.max_model_len = 256;
  using Clock = std::chrono::steady_clock;
  auto cpu_seconds = [] {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
  };
  struct Cost {
    double wall = 1e9, cpu = 1e9;
  };
  auto load = [&](bool verify, int tp) {
    Cost worst{0, 0};
    std::vector<ParallelContext> contexts = make_fake_contexts(ParallelLayout(tp, 1, 1));
    for (ParallelContext& ctx : contexts) {
      const auto t0 = Clock::now();
      const double c0 = cpu_seconds();
      ModelStoreReader store(path, ModelStoreReadOptions{.verify_reads = verify});
      ShardedTransformer model(store, ctx, *backend, options);
      worst.wall = std::max(worst.wall, std::chrono::duration<double>(Clock::now() - t0).count());
      worst.cpu = std::max(worst.cpu, cpu_seconds() - c0);
    }
    return worst;
  };
  for (int tp : {1, 3}) {
    Cost best[2];
    for (int rep = 0; rep < 3; ++rep) {
      for (bool verify : {false, true}) {
        const Cost c = load(verify, tp);
        best[verify].wall = std::min(best[verify].wall, c.wall);
        best[verify].cpu = std::min(best[verify].cpu, c.cpu);
      }
    }
    std::printf(
        "load (open + weights), tp %d, per rank, best of 3: wall %.3f s unverified, %.3f s "
        "verified (%+.1f%%); cpu %.3f s unverified, %.3f s verified (%+.1f%%)\n",
        tp, best[0].wall, best[1].wall, 100.0 * (best[1].wall / best[0].wall - 1), best[0].cpu,
        best[1].cpu, 100.0 * (best[1].cpu / best[0].cpu - 1));
  }
}

std::string open_error(const std::string& path) {
  try {
    ModelStoreReader r(path);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(ModelStore, BadFilesGiveClearErrors) {
  EXPECT_NE(open_error("/nonexistent/model.h5").find("does not exist"), std::string::npos);

  const std::string text = temp_path("text.h5");
  std::ofstream(text) << "this is not an HDF5 file\n";
  EXPECT_NE(open_error(text).find("not an HDF5 file"), std::string::npos) << open_error(text);
  fs::remove(text);

  const std::string foreign = temp_path("foreign.h5");
  {
    hid_t f = H5Fcreate(foreign.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[1] = {4};
    hid_t s = H5Screate_simple(1, dims, nullptr);
    hid_t d = H5Dcreate2(f, "data", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
  }
  EXPECT_NE(open_error(foreign).find("not an alem model store"), std::string::npos)
      << open_error(foreign);
  fs::remove(foreign);

  Fixture fx("truncate.h5");
  const std::string cut = temp_path("cut.h5");
  for (double fraction : {0.1, 0.5, 0.9, 0.999}) {
    fs::copy_file(fx.path, cut, fs::copy_options::overwrite_existing);
    fs::resize_file(cut, static_cast<uintmax_t>(fs::file_size(fx.path) * fraction));
    const std::string msg = open_error(cut);
    EXPECT_NE(msg.find(cut), std::string::npos) << fraction << ": '" << msg << "'";
  }
  fs::remove(cut);
}

TEST(ModelStore, BadReadsGiveClearErrors) {
  Fixture fx("badreads.h5");
  ModelStoreReader r(fx.path);
  EXPECT_THROW(r.read_matrix("nope", 0, 1), Error);
  EXPECT_THROW(r.read_matrix("m.f32", 190, 20), Error);
  EXPECT_THROW(r.read_matrix("m.f32", 0, 1, 100, 100), Error);
  EXPECT_THROW(r.read_matrix("m.int8", 0, 1, 16, 32), Error);  // not group-aligned
  EXPECT_THROW(r.read_matrix("norm", 0, 1), Error);
  EXPECT_THROW(r.read_vector("m.f32"), Error);
  EXPECT_THROW(r.read_vector("norm", 150, 20), Error);
  try {
    r.read_matrix("m.f32", 190, 20);
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("m.f32"), std::string::npos);
    EXPECT_NE(e.message().find("[190, 210)"), std::string::npos) << e.message();
  }
}

TEST(ModelStore, WriterRejectsBadInput) {
  const std::string p = temp_path("writer.h5");
  ModelStoreWriter w(p, small_config(), small_tokenizer(), "test");
  std::vector<float> v(40 * 40, 1.f);
  EXPECT_THROW(w.add_matrix("odd.int8", v.data(), 40, 40, DType::I8), Error);  // 40 % 32 != 0
  w.add_matrix("x", v.data(), 40, 40, DType::F32);
  EXPECT_THROW(w.add_matrix("x", v.data(), 40, 40, DType::F32), Error);  // duplicate
  EXPECT_THROW(w.add_vector("a/b", v.data(), 4), Error);
  EXPECT_THROW(w.add_vector("y.scales", v.data(), 4), Error);
  w.finish();
  EXPECT_THROW(w.add_vector("late", v.data(), 4), Error);
  ModelConfig bad = small_config();
  bad.num_kv_heads = 3;
  EXPECT_THROW(ModelStoreWriter(temp_path("bad.h5"), bad, small_tokenizer(), "test"), Error);
  fs::remove(p);
}

}  // namespace
}  // namespace alem
