// Fuzzes the HDF5 model store reader (src/model/model_store): every rank opens the store and
// trusts nothing in it. The first byte picks the mode:
//   0  the rest is a whole file, opened as a store (corrupt HDF5 metadata must be an error);
//   1  the rest rewrites attributes of a valid store first: records separated by 0x1e, each
//      "object 0x1f attribute 0x1f value" (object "/", "/tokenizer" or "/tensors/<name>"; a value
//      "i:<n>" is written as an integer), which reaches the store's own metadata parsing
//      (format, version, config_json, tokenizer ids, dtype attributes) past HDF5.
// The opened store is then read as a rank would: config, tokenizer, every tensor, the digest.
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/h5_util.h"
#include "model/hf_tokenizer_json.h"
#include "model/model_store.h"
#include "model/model_store_writer.h"
#include "model/tokenizer.h"

namespace {

// The files this run made (the template store and the input), removed when the fuzzer exits:
// every run of the test labels made two.
std::vector<std::string>& made_files() {
  static auto* files = new std::vector<std::string>;
  return *files;
}

void remove_made_files() {
  for (const std::string& path : made_files()) std::remove(path.c_str());
}

std::string temp_path(const char* what) {
  std::string path = (std::filesystem::temp_directory_path() /
                      ("alem-fuzz-" + std::to_string(getpid()) + "-" + what + ".h5"))
                         .string();
  if (made_files().empty()) std::atexit(remove_made_files);
  made_files().push_back(path);
  return path;
}

// A small valid store: one layer of every kind of tensor the reader distinguishes.
std::string make_template_store(const std::string& path) {
  alem::ModelConfig c;
  c.name = "fuzz";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_layers = 1;
  c.num_heads = 1;
  c.num_kv_heads = 1;
  c.head_dim = 32;
  c.intermediate_size = 32;
  c.max_position_embeddings = 128;
  c.eos_token_ids = {1};
  alem::TokenizerData t;
  for (int i = 0; i < 62; ++i) {
    t.tokens.push_back(std::string(1, static_cast<char>('A' + i)));
    t.token_kinds.push_back(1);
  }
  t.tokens.push_back("<|im_start|>");
  t.tokens.push_back("<|im_end|>");
  t.token_kinds.push_back(3);
  t.token_kinds.push_back(3);
  t.merges = {"A B"};
  t.pre_tokenizer = "gpt2";
  t.eos_token_id = 63;
  t.chat_template = "<|im_start|>{{ message }}<|im_end|>";
  std::vector<float> values(64 * 32);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i % 17) - 8.f;
  {
    alem::ModelStoreWriter w(path, c, t, "fuzz");
    w.add_matrix("model.embed_tokens.weight", values.data(), 64, 32, alem::DType::BF16);
    w.add_matrix("model.layers.0.self_attn.q_proj.weight", values.data(), 32, 32, alem::DType::I8);
    w.add_matrix("model.layers.0.mlp.up_proj.weight", values.data(), 32, 32, alem::DType::F32);
    w.add_vector("model.norm.weight", values.data(), 32);
    w.finish();
  }
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

const std::string& template_bytes() {
  static const std::string bytes = make_template_store(temp_path("template"));
  return bytes;
}

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Mode 1: rewrite attributes of the template store as the input says.
void rewrite_attributes(const std::string& path, std::string_view records) {
  namespace h5 = alem::h5;
  std::lock_guard<std::recursive_mutex> lock(h5::library_mutex());
  h5::silence_errors();
  h5::Handle file = h5::own_file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), "open");
  for (std::string_view record : alem::fuzz::split(records, '\x1e')) {
    const auto f = alem::fuzz::split(record, '\x1f');
    if (f.size() != 3 || f[0].empty() || f[1].empty()) continue;
    const std::string object(f[0]), name(f[1]), value(f[2]);
    if (object.find('\0') != std::string::npos || name.find('\0') != std::string::npos) continue;
    if (H5Lexists(file.get(), object.c_str(), H5P_DEFAULT) <= 0 && object != "/") continue;
    const hid_t id = H5Oopen(file.get(), object.c_str(), H5P_DEFAULT);
    if (id < 0) continue;
    h5::Handle obj{id, H5Oclose};
    if (value.rfind("i:", 0) == 0) {
      h5::write_int_attribute(obj.get(), name, std::strtoll(value.c_str() + 2, nullptr, 10),
                              object);
    } else if (value.find('\0') == std::string::npos) {
      h5::write_string_attribute(obj.get(), name, value, object);
    }
  }
}

void read_store(const std::string& path) {
  alem::ModelStoreReader store(path);
  (void)store.config();
  (void)store.model_digest();
  try {
    alem::Tokenizer tokenizer(store.tokenizer());
    (void)tokenizer.encode("ABC<|im_start|>", true);
  } catch (const alem::Error&) {
  }
  for (const alem::TensorInfo& t : store.list_tensors()) {
    try {
      if (t.shape.size() == 2) {
        if (t.shape[0] * t.shape[1] <= (1 << 16)) (void)store.read_matrix(t.name, 0, t.shape[0]);
      } else if (t.shape.size() == 1 && t.shape[0] <= (1 << 16)) {
        (void)store.read_vector(t.name);
      }
    } catch (const alem::Error&) {
    }
  }
  (void)store.verify();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const std::string dir = alem::fuzz::seed_dir(); !dir.empty()) {
    alem::fuzz::write_seed(dir, "valid-store", std::string(1, '\0') + template_bytes());
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string path = temp_path("input");
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] == 0) {
      write_file(path, rest);
    } else {
      write_file(path, template_bytes());
      rewrite_attributes(path, rest);
    }
    read_store(path);
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("model_store", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("model_store", e.what());
  }
  return 0;
}
