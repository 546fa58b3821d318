// GGUF import: metadata and config of the real SmolLM2 file, exact dequantisation compared with
// llama.cpp's own Python package (tests/data/gguf_reference.json, made by
// scripts/reference/make_gguf_reference.py), the q/k un-permutation, and robustness: every
// truncation and many byte flips of a GGUF file must give alem::Error, never a crash.
#include <gtest/gtest.h>

#include <set>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "model/gguf_quant.h"
#include "model/gguf_reader.h"
#include "model/weights.h"
#include "tests/test_env.h"

namespace alem {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json load_reference(const std::string& file = "gguf_reference.json") {
  std::ifstream in(test::data_dir() + "/" + file);
  EXPECT_TRUE(in.good()) << "missing tests/data/" << file;
  return json::parse(in);
}

std::vector<uint8_t> read_bytes(const std::string& path, size_t limit = SIZE_MAX) {
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes;
  char buf[1 << 16];
  while (in && bytes.size() < limit) {
    in.read(buf, static_cast<std::streamsize>(std::min(sizeof(buf), limit - bytes.size())));
    bytes.insert(bytes.end(), buf, buf + in.gcount());
  }
  return bytes;
}

void write_bytes(const std::string& path, const uint8_t* data, size_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n));
}

std::string temp_path(const std::string& name) {
  return test::temp_path("gguf", name);
}

// Opens a GGUF file and exercises every accessor; returns true if it parsed. Anything other
// than alem::Error escaping is a test failure.
bool parse_everything(const std::string& path) {
  try {
    GgufFile f(path);
    try {
      f.model_config();
    } catch (const Error&) {
    }
    try {
      f.tokenizer_data();
    } catch (const Error&) {
    }
    for (const GgufTensorInfo& t : f.tensors()) {
      try {
        f.dequantize(t.name);
      } catch (const Error&) {
      }
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

// A tiny GGUF writer written from the format spec, used to build malformed files on purpose.
struct GgufBuilder {
  std::vector<uint8_t> bytes;
  void u32(uint32_t v) { append(&v, 4); }
  void u64(uint64_t v) { append(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    append(s.data(), s.size());
  }
  void append(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void header(uint32_t version, uint64_t tensors, uint64_t kvs) {
    u32(0x46554747);
    u32(version);
    u64(tensors);
    u64(kvs);
  }
  void kv_string(const std::string& key, const std::string& value) {
    str(key);
    u32(8);
    str(value);
  }
  void kv_u32(const std::string& key, uint32_t value) {
    str(key);
    u32(4);
    u32(value);
  }
  std::string save(const std::string& name) {
    const std::string p = temp_path(name);
    write_bytes(p, bytes.data(), bytes.size());
    return p;
  }
};

std::string error_of(const std::string& path) {
  try {
    GgufFile f(path);
    f.model_config();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

TEST(Gguf, RealFileHeaderAndConfig) {
  const json ref = load_reference();
  GgufFile f(test::gguf_path());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.architecture(), "llama");
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), ref["metadata"]["data_offset"].get<uint64_t>());
  EXPECT_EQ(f.tensors().size(), ref["metadata"]["tensor_count"].get<size_t>());
  const ModelConfig c = f.model_config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.f);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.bos_token_id, 1);
  ASSERT_EQ(c.eos_token_ids.size(), 1u);
  EXPECT_EQ(c.eos_token_ids[0], 2);
  // The parameter count implied by the config equals the element count of the file's tensors.
  int64_t elements = 0;
  for (const GgufTensorInfo& t : f.tensors()) elements += t.element_count();
  EXPECT_EQ(c.parameter_count(), elements);
  // Tensor types as recorded by the gguf package.
  for (const auto& [name, type] : ref["metadata"]["tensor_types"].items()) {
    const GgufTensorInfo* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(ggml_type_name(t->type), type.get<std::string>()) << name;
  }
  EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
  const GgufTensorInfo* q = f.find_tensor("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->name, "blk.0.attn_q.weight");
  EXPECT_EQ(q->hf_shape(), (std::vector<int64_t>{576, 576}));
  const GgufTensorInfo* k = f.find_tensor("blk.0.attn_k.weight");
  EXPECT_EQ(k->hf_shape(), (std::vector<int64_t>{192, 576}));
}

TEST(Gguf, RealFileTokenizer) {
  const json meta = load_reference()["metadata"];
  GgufFile f(test::gguf_path());
  const TokenizerData t = f.tokenizer_data();
  EXPECT_EQ(t.model, "gpt2");
  EXPECT_EQ(t.pre_tokenizer, "smollm");
  ASSERT_EQ(t.tokens.size(), meta["vocab_tokens"].get<size_t>());
  ASSERT_EQ(t.token_kinds.size(), t.tokens.size());
  ASSERT_EQ(t.merges.size(), meta["merges"].get<size_t>());
  const auto first_tokens = meta["first_tokens"].get<std::vector<std::string>>();
  const auto first_types = meta["first_token_types"].get<std::vector<int>>();
  for (size_t i = 0; i < first_tokens.size(); ++i) {
    EXPECT_EQ(t.tokens[i], first_tokens[i]) << i;
    EXPECT_EQ(t.token_kinds[i], first_types[i]) << i;
  }
  EXPECT_EQ(t.tokens.back(), meta["last_token"].get<std::string>());
  const auto first_merges = meta["first_merges"].get<std::vector<std::string>>();
  for (size_t i = 0; i < first_merges.size(); ++i) EXPECT_EQ(t.merges[i], first_merges[i]);
  EXPECT_EQ(t.bos_token_id, meta["special_ids"]["bos_token_id"].get<int>());
  EXPECT_EQ(t.eos_token_id, meta["special_ids"]["eos_token_id"].get<int>());
  EXPECT_EQ(t.unknown_token_id, meta["special_ids"]["unknown_token_id"].get<int>());
  EXPECT_EQ(t.padding_token_id, meta["special_ids"]["padding_token_id"].get<int>());
  EXPECT_FALSE(t.add_bos_token);
  EXPECT_EQ(t.chat_template, meta["chat_template"].get<std::string>());
}

// Q8_0, Q4_1 and F32 tensors, with attn_q/attn_k un-permuted, against the gguf package.
TEST(Gguf, DequantizeMatchesGgufPackage) {
  const json ref = load_reference();
  GgufFile f(test::gguf_path());
  for (const json& r : ref["tensors"]) {
    const std::string name = r["gguf_name"];
    SCOPED_TRACE(name);
    const std::vector<float> values = f.dequantize(name);
    const auto shape = r["hf_shape"].get<std::vector<int64_t>>();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    ASSERT_EQ(static_cast<int64_t>(values.size()), n);
    EXPECT_EQ(f.find_tensor(name)->hf_shape(), shape);
    EXPECT_EQ(f.find_tensor(name)->hf_name, r["hf_name"].get<std::string>());
    const auto indices = r["indices"].get<std::vector<int64_t>>();
    const auto expected = r["values"].get<std::vector<float>>();
    for (size_t i = 0; i < indices.size(); ++i) {
      EXPECT_EQ(values[indices[i]], expected[i]) << "flat index " << indices[i];
    }
    double sum = 0, sum_squares = 0;
    for (float v : values) {
      sum += v;
      sum_squares += static_cast<double>(v) * v;
    }
    const double want_sum = r["sum"].get<double>();
    const double want_squares = r["sum_squares"].get<double>();
    EXPECT_NEAR(sum, want_sum, 1e-9 * want_squares + 1e-9);
    EXPECT_NEAR(sum_squares, want_squares, 1e-9 * want_squares);
    // The HF name gives the same tensor.
    if (!r["hf_name"].get<std::string>().empty()) {
      EXPECT_EQ(f.dequantize(r["hf_name"].get<std::string>()), values);
    }
  }
}

// Without un-permutation the q rows would be interleaved: check the inverse mapping directly.
TEST(Gguf, QkUnpermutationInvertsLlamaCppPermute) {
  const int n_head = 3, head_dim = 8, cols = 2;
  const int rows = n_head * head_dim;
  // Forward permutation as in llama.cpp's convert_hf_to_gguf.py:
  //   w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)
  std::vector<float> hf(rows * cols);
  for (int i = 0; i < rows * cols; ++i) hf[i] = static_cast<float>(i);
  std::vector<float> gguf(rows * cols);
  for (int h = 0; h < n_head; ++h)
    for (int j = 0; j < head_dim / 2; ++j)
      for (int i = 0; i < 2; ++i)
        for (int c = 0; c < cols; ++c)
          gguf[((h * (head_dim / 2) + j) * 2 + i) * cols + c] =
              hf[((h * 2 + i) * (head_dim / 2) + j) * cols + c];
  std::vector<float> back = gguf;
  unpermute_llama_qk_rows(back, rows, cols, n_head);
  EXPECT_EQ(back, hf);
  EXPECT_THROW(unpermute_llama_qk_rows(back, rows, cols, 5), Error);
}

// Every case of a fixture (scripts/reference/make_gguf_reference.py) dequantised exactly as the
// `gguf` package's dequantize does, but `refused`, which must fail with an error naming its type.
void expect_fixture_values(const std::string& path, const json& cases, const std::string& refused) {
  GgufFile f(path);
  for (const json& c : cases) {
    const std::string name = c["name"];
    const std::string type = c["ggml_type"];
    SCOPED_TRACE(name);
    const GgufTensorInfo* t = f.find_tensor(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(ggml_type_name(t->type), type);
    EXPECT_EQ(t->rows(), c["rows"].get<int64_t>());
    EXPECT_EQ(t->cols(), c["cols"].get<int64_t>());
    if (type == refused) {
      EXPECT_FALSE(ggml_dequantize_supported(t->type));
      try {
        f.dequantize(name);
        ADD_FAILURE() << type << " dequantized without error";
      } catch (const Error& e) {
        EXPECT_NE(e.message().find(type), std::string::npos) << e.message();
      }
      continue;
    }
    EXPECT_TRUE(ggml_dequantize_supported(t->type));
    const std::vector<float> values = f.dequantize(name);
    const auto expected = c["values"].get<std::vector<float>>();
    ASSERT_EQ(values.size(), expected.size());
    int mismatches = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      if (values[i] != expected[i] && mismatches++ < 5) {
        ADD_FAILURE() << type << " element " << i << ": got " << values[i] << ", expected "
                      << expected[i];
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(Gguf, QuantTypesFixture) {
  const json ref = load_reference();
  expect_fixture_values(test::data_dir() + "/" + ref["quant_fixture"].get<std::string>(),
                        ref["quant_cases"], "");
}

// Q2_K, Q3_K, IQ4_NL and IQ4_XS dequantised as the `gguf` package does; IQ2_XXS refused.
TEST(Gguf, LowBitTypesFixture) {
  const json ref = load_reference("gguf_lowbit_reference.json");
  ASSERT_EQ(ref["cases"].size(), 5u);
  expect_fixture_values(test::data_dir() + "/" + ref["fixture"].get<std::string>(), ref["cases"],
                        "IQ2_XXS");
}

// Checks every case of a fixture whose type alem keeps as it is (ggml_type_as_dtype): the file's
// blocks as a WeightMatrix of that type, read back as the engine reads them (dequantize_row),
// give the gguf package's values; returns the types it checked.
std::set<std::string> expect_kept_values(const std::string& path, const json& cases) {
  GgufFile f(path);
  std::set<std::string> checked;
  for (const json& c : cases) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    const GgufTensorInfo* t = f.find_tensor(name);
    if (t == nullptr) {
      ADD_FAILURE() << "missing tensor";
      continue;
    }
    DType dtype = DType::F32;
    if (!ggml_type_as_dtype(t->type, &dtype)) continue;
    WeightMatrix m;
    m.dtype = dtype;
    m.rows = t->rows();
    m.cols = t->cols();
    if (m.rows * m.row_bytes() != t->bytes) {
      ADD_FAILURE() << "byte count";
      continue;
    }
    m.data.resize(t->bytes);
    std::memcpy(m.data.data(), f.tensor_data(*t), t->bytes);
    const auto expected = c["values"].get<std::vector<float>>();
    std::vector<float> row(static_cast<size_t>(m.cols));
    int mismatches = 0;
    for (int64_t r = 0; r < m.rows; ++r) {
      dequantize_row(m, r, row.data());
      for (int64_t i = 0; i < m.cols; ++i) {
        const float want = expected[static_cast<size_t>(r * m.cols + i)];
        if (row[i] != want && mismatches++ < 5) {
          ADD_FAILURE() << dtype_name(dtype) << " row " << r << " col " << i << ": got " << row[i]
                        << ", expected " << want;
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
    checked.insert(c["ggml_type"].get<std::string>());
  }
  return checked;
}

// The low-bit types alem keeps as they are (Q3_K, IQ4_NL, IQ4_XS; Q5_0 and Q5_1 in the first
// fixture) read back exactly as the gguf package dequantises them; Q2_K and IQ2_XXS are not kept.
TEST(Gguf, LowBitTypesKeptAsTheyAre) {
  const json ref = load_reference("gguf_lowbit_reference.json");
  EXPECT_EQ(
      expect_kept_values(test::data_dir() + "/" + ref["fixture"].get<std::string>(), ref["cases"]),
      (std::set<std::string>{"Q3_K", "IQ4_NL", "IQ4_XS"}));
  const json first = load_reference();
  const std::set<std::string> kept = expect_kept_values(
      test::data_dir() + "/" + first["quant_fixture"].get<std::string>(), first["quant_cases"]);
  EXPECT_EQ(kept.count("Q5_0"), 1u);
  EXPECT_EQ(kept.count("Q5_1"), 1u);
  DType dtype;
  EXPECT_FALSE(ggml_type_as_dtype(static_cast<uint32_t>(GgmlType::Q2_K), &dtype));
  EXPECT_FALSE(ggml_type_as_dtype(static_cast<uint32_t>(GgmlType::IQ2_XXS), &dtype));
}

TEST(Gguf, MetadataValueTypes) {
  const json ref = load_reference();
  GgufFile f(test::data_dir() + "/" + ref["quant_fixture"].get<std::string>());
  EXPECT_EQ(f.get_int("test.u8"), 200);
  EXPECT_EQ(f.get_int("test.i8"), -100);
  EXPECT_EQ(f.get_int("test.u16"), 60000);
  EXPECT_EQ(f.get_int("test.i16"), -30000);
  EXPECT_EQ(f.get_int("test.u32"), 4000000000LL);
  EXPECT_EQ(f.get_int("test.i32"), -2000000000LL);
  EXPECT_EQ(f.get_int("test.u64"), int64_t{1} << 40);
  EXPECT_EQ(f.get_int("test.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(f.get_float("test.f32", 0), 0.15625);
  EXPECT_EQ(f.get_float("test.f64", 0), -2.5e-300);
  EXPECT_TRUE(f.get_bool("test.bool", false));
  EXPECT_EQ(f.get_string("test.string"), "h\xc3\xa9llo");
  EXPECT_EQ(f.value("test.int_array").integers, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.value("test.string_array").strings, (std::vector<std::string>{"a", "bc", ""}));
  const GgufValue& nested = f.value("test.nested_array");
  ASSERT_EQ(nested.nested.size(), 2u);
  EXPECT_EQ(nested.nested[0].integers, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested.nested[1].integers, (std::vector<int64_t>{3}));
  EXPECT_THROW(f.get_string("test.u8"), Error);
  EXPECT_THROW(f.get_int("no.such.key"), Error);
  // The fixture says "llama" but has none of the llama.* keys: a clear error naming one.
  try {
    f.model_config();
    ADD_FAILURE() << "model_config() accepted a file without llama.* keys";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("llama."), std::string::npos) << e.message();
  }
}

TEST(Gguf, MalformedFilesGiveClearErrors) {
  std::vector<std::string> created;
  auto expect_error = [&](GgufBuilder& b, const std::string& name, const std::string& needle) {
    const std::string p = b.save(name);
    created.push_back(p);
    const std::string msg = error_of(p);
    EXPECT_NE(msg.find(needle), std::string::npos) << name << ": '" << msg << "'";
  };
  {
    GgufBuilder b;
    b.append("GGML", 4);
    b.u32(3);
    expect_error(b, "magic", "not a GGUF file");
  }
  {
    GgufBuilder b;
    b.header(1, 0, 0);
    expect_error(b, "v1", "version 1");
  }
  {
    GgufBuilder b;
    b.header(0x03000000, 0, 0);  // a big-endian v3 file read little-endian
    expect_error(b, "bigendian", "unsupported version");
  }
  {
    GgufBuilder b;
    b.header(3, 0, 1);
    b.kv_string("general.architecture", "gpt2");
    expect_error(b, "arch", "architecture 'gpt2'");
  }
  {
    GgufBuilder b;
    b.header(3, 0, 1);
    b.str("general.name");
    b.u32(8);
    b.u64(uint64_t{1} << 60);  // string length far beyond the file
    expect_error(b, "longstring", "truncated or corrupt");
  }
  {
    GgufBuilder b;
    b.header(3, 0, 1);
    b.str("tokenizer.ggml.tokens");
    b.u32(9);
    b.u32(8);
    b.u64(uint64_t{1} << 58);  // array count far beyond the file
    expect_error(b, "longarray", "array elements");
  }
  {
    GgufBuilder b;
    b.header(3, 0, 1);
    b.kv_u32("general.alignment", 24);
    expect_error(b, "alignment", "power of two");
  }
  {
    GgufBuilder b;
    b.header(3, 0, 1);
    b.str("x");
    b.u32(77);  // unknown value type
    expect_error(b, "valuetype", "unknown value type");
  }
  {
    GgufBuilder b;
    b.header(3, 1, 0);
    b.str("token_embd.weight");
    b.u32(2);
    b.u64(64);
    b.u64(8);
    b.u32(0);  // F32: 2 KiB of data that the file does not have
    b.u64(0);
    expect_error(b, "tensor_past_end", "extends past the end");
  }
  {
    GgufBuilder b;
    b.header(3, 1, 0);
    b.str("token_embd.weight");
    b.u32(2);
    b.u64(33);  // not a multiple of the Q8_0 block
    b.u64(1);
    b.u32(8);
    b.u64(0);
    expect_error(b, "block", "block size");
  }
  {
    GgufBuilder b;
    b.header(3, 1, 0);
    b.str("w");
    b.u32(1);
    b.u64(32);
    b.u32(99);  // unknown ggml type
    b.u64(0);
    expect_error(b, "ggmltype", "unknown ggml type");
  }
  EXPECT_THROW(GgufFile("/nonexistent/file.gguf"), Error);
  for (const std::string& p : created) fs::remove(p);
}

// Two F32 tensors of 32 elements (128 bytes each) at the given data offsets, followed by enough
// data for both to lie inside the file.
std::vector<uint8_t> two_tensor_gguf(uint64_t offset_a, uint64_t offset_b) {
  GgufBuilder b;
  b.header(3, 2, 0);
  const std::pair<const char*, uint64_t> tensors[2] = {{"blk.0.attn_norm.weight", offset_a},
                                                       {"blk.0.ffn_norm.weight", offset_b}};
  for (const auto& [name, offset] : tensors) {
    b.str(name);
    b.u32(1);
    b.u64(32);
    b.u32(0);  // F32
    b.u64(offset);
  }
  while (b.bytes.size() % 32 != 0) b.bytes.push_back(0);
  b.bytes.resize(b.bytes.size() + 512, 0);
  return b.bytes;
}

// Overlapping tensor data (a crafted offset) used to import as garbage weights that then
// "verified" and produced NaN; it must be refused, naming both tensors.
TEST(Gguf, OverlappingOrMisalignedTensorDataIsRefused) {
  const std::string p = temp_path("overlap.gguf");
  auto message_for = [&](uint64_t a, uint64_t b) {
    const std::vector<uint8_t> bytes = two_tensor_gguf(a, b);
    write_bytes(p, bytes.data(), bytes.size());
    try {
      GgufFile f(p);
      return std::string();
    } catch (const Error& e) {
      return e.message();
    }
  };
  EXPECT_EQ(message_for(0, 128), "");  // adjacent, not overlapping
  EXPECT_EQ(message_for(256, 0), "");  // any order
  for (const auto& [a, b] :
       std::vector<std::pair<uint64_t, uint64_t>>{{0, 0}, {0, 96}, {96, 0}, {128, 32}}) {
    const std::string msg = message_for(a, b);
    EXPECT_NE(msg.find("overlaps tensor"), std::string::npos) << a << "," << b << ": " << msg;
    EXPECT_NE(msg.find("blk.0.attn_norm.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("blk.0.ffn_norm.weight"), std::string::npos) << msg;
  }
  EXPECT_NE(message_for(0, 136).find("not aligned to 32"), std::string::npos);
  fs::remove(p);
}

// Truncating the fixture at every byte offset before its end must give alem::Error.
TEST(Gguf, EveryTruncationOfFixtureIsAnError) {
  const json ref = load_reference();
  const std::string src = test::data_dir() + "/" + ref["quant_fixture"].get<std::string>();
  const std::vector<uint8_t> bytes = read_bytes(src);
  uint64_t needed = 0;
  {
    GgufFile f(src);
    for (const GgufTensorInfo& t : f.tensors()) {
      needed = std::max(needed, f.data_offset() + t.offset + t.bytes);
    }
  }
  ASSERT_LE(needed, bytes.size());
  const std::string p = temp_path("trunc.gguf");
  write_bytes(p, bytes.data(), bytes.size());
  for (size_t n = needed; n-- > 0;) {
    fs::resize_file(p, n);  // shrink in place: cheaper than rewriting thousands of files
    try {
      GgufFile f(p);
      ADD_FAILURE() << "truncated at " << n << " of " << needed << " bytes parsed without error";
    } catch (const Error&) {
    }
  }
  fs::remove(p);
}

// The real file truncated inside its metadata (tokens, merges), its tensor directory and its data.
TEST(Gguf, TruncatedRealFileIsAnError) {
  GgufFile full(test::gguf_path());
  const uint64_t header = full.data_offset();
  const std::vector<uint8_t> bytes = read_bytes(test::gguf_path(), header + 4096);
  const std::string p = temp_path("trunc_real.gguf");
  std::mt19937_64 rng(7);
  std::vector<uint64_t> cuts = {0, 3, 4, 8, 23, 24, header - 1, header, header + 100};
  for (int i = 0; i < 60; ++i) cuts.push_back(rng() % header);
  for (uint64_t n : cuts) {
    write_bytes(p, bytes.data(), static_cast<size_t>(n));
    try {
      GgufFile f(p);
      ADD_FAILURE() << "real file truncated at " << n << " parsed without error";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find(p), std::string::npos) << e.message();
    }
  }
  fs::remove(p);
}

// Flipping any single byte of the fixture's header must parse or give alem::Error, never crash
// or throw anything else.
TEST(Gguf, ByteFlipsInHeaderNeverCrash) {
  const json ref = load_reference();
  const std::string src = test::data_dir() + "/" + ref["quant_fixture"].get<std::string>();
  std::vector<uint8_t> bytes = read_bytes(src);
  const uint64_t header = GgufFile(src).data_offset();
  const std::string p = temp_path("flip.gguf");
  int errors = 0;
  write_bytes(p, bytes.data(), bytes.size());
  std::fstream file(p, std::ios::binary | std::ios::in | std::ios::out);
  auto put = [&](uint64_t pos, uint8_t value) {
    file.seekp(static_cast<std::streamoff>(pos));
    file.put(static_cast<char>(value));
    file.flush();
  };
  for (uint64_t pos = 0; pos < header; ++pos) {
    for (uint8_t mask : {uint8_t{0xff}, uint8_t{0x80}, uint8_t{0x01}}) {
      put(pos, bytes[pos] ^ mask);
      try {
        if (!parse_everything(p)) ++errors;
      } catch (const std::exception& e) {
        ADD_FAILURE() << "flip at " << pos << " threw a non-alem exception: " << e.what();
      }
      put(pos, bytes[pos]);
    }
  }
  file.close();
  EXPECT_GT(errors, 0);
  fs::remove(p);
}

}  // namespace
}  // namespace alem
