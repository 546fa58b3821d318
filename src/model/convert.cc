// GGUF / safetensors -> HDF5 model store. Both importers first check that the source holds
// exactly the tensors the config implies (HF names, shapes), so a store that converts is one
// the engine can load; then they stream tensor by tensor into a ModelStoreWriter writing
// "<out>.part", and rename it into place after the digest is recorded.
#include "model/convert.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "model/gguf_moe.h"
#include "model/gguf_quant.h"
#include "model/gguf_reader.h"
#include "model/hf_tokenizer_json.h"
#include "model/model_config.h"
#include "model/model_store.h"
#include "model/model_store_writer.h"
#include "model/safetensors_reader.h"

namespace alem {
namespace {

namespace fs = std::filesystem;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::map<std::string, std::vector<int64_t>> expected_shape_map(const ModelConfig& config) {
  std::map<std::string, std::vector<int64_t>> m;
  for (const ExpectedTensor& t : expected_tensors(config)) m[t.name] = t.shape;
  return m;
}

// Checks that `present` (name -> shape) is exactly the expected tensor set; throws otherwise.
void check_tensor_set(const ModelConfig& config,
                      const std::map<std::string, std::vector<int64_t>>& present,
                      const std::string& source) {
  const auto expected = expected_shape_map(config);
  for (const auto& [name, shape] : expected) {
    auto it = present.find(name);
    ALEM_CHECK(it != present.end(), source + " lacks tensor " + name + " " + shape_text(shape) +
                                        " required by its config");
    ALEM_CHECK(it->second == shape, source + ": tensor " + name + " has shape " +
                                        shape_text(it->second) + ", expected " + shape_text(shape));
  }
  for (const auto& [name, shape] : present) {
    ALEM_CHECK(expected.count(name), source + " has tensor " + name + " " + shape_text(shape) +
                                         " that a " + config.architecture +
                                         " model of this config does not use");
  }
}

void report_progress(const ConvertOptions& options, int64_t done, int64_t total) {
  if (options.progress) options.progress(done, total);
}

// Runs `write` against a writer on "<out>.part", then renames; removes the part file on failure.
template <typename WriteTensors>
ConvertReport write_store(const std::string& out_h5, const ModelConfig& config,
                          const TokenizerData& tokenizer, const std::string& source,
                          WriteTensors write) {
  const auto start = std::chrono::steady_clock::now();
  const std::string part = out_h5 + ".part";
  std::error_code ec;
  fs::remove(part, ec);
  ConvertReport report;
  try {
    ModelStoreWriter writer(part, config, tokenizer, source);
    write(writer);
    report.tensor_count = writer.tensor_count();
    report.parameter_count = writer.element_count();
    report.digest = writer.finish();
  } catch (...) {
    fs::remove(part, ec);
    throw;
  }
  fs::rename(part, out_h5, ec);
  if (ec) {
    fs::remove(part, ec);
    ALEM_FAIL("cannot move " + part + " to " + out_h5 + ": " + ec.message());
  }
  report.output_path = out_h5;
  report.source = source;
  report.bytes_written = fs::file_size(out_h5);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Tensors the engine stacks into one matrix share a key (q/k/v, gate/up of one layer or expert;
// GGUF's stacked gate/up experts of one layer, which have no HF name).
std::string fusion_group(const std::string& hf_name) {
  std::string key = hf_name;
  for (const char* part : {"ffn_gate_exps", "ffn_up_exps"}) {
    const size_t at = key.find(part);
    if (at != std::string::npos) return key.replace(at, std::string(part).size(), "ffn_exps");
  }
  for (const char* part : {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}) {
    const size_t at = key.find(part);
    if (at != std::string::npos) {
      key.replace(at, std::string(part).size(), part[0] == 'g' || part[0] == 'u' ? "ffn" : "qkv");
      return key;
    }
  }
  return key;
}

// A layer's attention q/k/v and dense gate/up may keep different types (a Q4_K_M file's Q6_K v
// beside Q4_K q and k): the engine multiplies such a group part by part (StackedRows). Expert
// groups are stacked as one matrix per expert, so a mixture there falls back to one type.
bool may_mix_types(const std::string& group_key) {
  const auto ends_with = [&](const std::string& suffix) {
    return group_key.size() > suffix.size() &&
           group_key.compare(group_key.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".self_attn.qkv.weight") || ends_with(".mlp.ffn.weight");
}

// The key of a GGUF tensor's stored type: its HF name, or its GGUF name for the expert tensors
// and routers (gguf_moe.h), which have none.
std::string stored_type_key(const GgufTensorInfo& t) {
  return t.hf_name.empty() ? t.name : t.hf_name;
}

// Routers stay f32 when the other matrices are quantised, as llama.cpp's quantiser keeps
// ffn_gate_inp: a rounded router logit would change which experts a token goes to.
DType router_dtype(DType dtype) {
  return dtype_is_block(dtype) || dtype == DType::I8 ? DType::F32 : dtype;
}

bool is_gguf_router(const std::string& gguf_name) {
  const std::string suffix = ".ffn_gate_inp.weight";
  return gguf_name.size() > suffix.size() &&
         gguf_name.compare(gguf_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The stored type of each 2-D tensor (and stacked 3-D expert tensor) when GGUF types are kept
// (convert.h).
std::map<std::string, DType> kept_types(const GgufFile& gguf, DType fallback) {
  std::map<std::string, DType> chosen;
  std::map<std::string, std::vector<std::string>> groups;
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (t.dims.size() != 2 && t.dims.size() != 3) continue;  // 3-D: stacked experts
    DType dtype = fallback;
    if (!ggml_type_as_dtype(t.type, &dtype)) {
      switch (static_cast<GgmlType>(t.type)) {
        case GgmlType::F32:
          dtype = DType::F32;
          break;
        case GgmlType::F16:
          dtype = DType::F16;
          break;
        case GgmlType::BF16:
          dtype = DType::BF16;
          break;
        default:
          dtype = fallback;
      }
    }
    const std::string key = stored_type_key(t);
    chosen[key] = dtype;
    groups[fusion_group(key)].push_back(key);
  }
  for (const auto& [key, members] : groups) {
    bool mixed = false;
    for (const std::string& m : members) mixed |= chosen[m] != chosen[members[0]];
    if (mixed && !may_mix_types(key)) {
      for (const std::string& m : members) chosen[m] = fallback;
    }
  }
  return chosen;
}

// The K-quants and IQ4_XS need rows of whole 256-value super-blocks; a matrix whose rows are not
// (SmolLM2's 576-wide projections) is stored in a 32-value block type instead, as llama.cpp falls
// back for such tensors: IQ4_NL for IQ4_XS (the same values per 32), Q8_0 for the K-quants.
// Members of a fusion group share their column count, so they fall back together.
DType stored_matrix_dtype(DType wanted, int64_t cols) {
  if (dtype_is_super_block(wanted) && cols % dtype_block_elements(wanted) != 0) {
    if (cols % 32 != 0) return DType::BF16;
    return wanted == DType::IQ4_XS ? DType::IQ4_NL : DType::Q8_0;
  }
  return wanted;
}

bool is_ignorable_hf_tensor(const std::string& name) {
  // Non-persistent buffers some older checkpoints carry; recomputed by the engine.
  return name.size() > 20 && name.compare(name.size() - 20, 20, "rotary_emb.inv_freq") == 0;
}

}  // namespace

ConvertReport convert_gguf(const std::string& gguf_path, const std::string& out_h5,
                           const ConvertOptions& options) {
  GgufFile gguf(gguf_path);
  ModelConfig config = gguf.model_config();
  if (!options.model_name.empty()) config.name = options.model_name;
  const TokenizerData tokenizer = gguf.tokenizer_data();
  std::map<std::string, std::vector<int64_t>> present;
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (add_gguf_moe_tensor_shapes(config, t, present)) continue;  // experts, routers
    ALEM_CHECK(!t.hf_name.empty(), "GGUF file " + gguf_path + " has tensor '" + t.name +
                                       "' with no Hugging Face counterpart; refusing to drop it");
    ALEM_CHECK(t.dims.size() <= 2,
               "GGUF tensor '" + t.name + "' has " + std::to_string(t.dims.size()) + " dimensions");
    ALEM_CHECK(ggml_dequantize_supported(t.type),
               "GGUF tensor '" + t.name + "' has type " + ggml_type_name(t.type) +
                   ", which alem cannot dequantize (supported: " +
                   ggml_dequantize_supported_names() + ")");
    present[t.hf_name] = t.hf_shape();
  }
  check_tensor_set(config, present, "GGUF file " + gguf_path);
  const std::string source = "gguf:" + fs::path(gguf_path).filename().string();
  std::map<std::string, DType> stored;
  if (options.keep_gguf_types) stored = kept_types(gguf, options.dtype);
  return write_store(out_h5, config, tokenizer, source, [&](ModelStoreWriter& writer) {
    const int64_t total = static_cast<int64_t>(gguf.tensors().size());
    int64_t done = 0;
    for (const GgufTensorInfo& t : gguf.tensors()) {
      report_progress(options, done++, total);
      const std::string key = stored_type_key(t);
      DType dtype =
          stored.count(key) ? stored.at(key) : stored_matrix_dtype(options.dtype, t.cols());
      if (!options.keep_gguf_types && is_gguf_router(t.name)) dtype = router_dtype(dtype);
      if (write_gguf_moe_tensor(gguf, config, t, writer, dtype)) continue;
      if (t.dims.size() == 2 && dtype_is_block(dtype)) {
        // Block for block as the file has them (raw_rows un-permutes q/k rows only).
        WeightMatrix m;
        m.dtype = dtype;
        m.rows = t.rows();
        m.cols = t.cols();
        const std::vector<uint8_t> bytes = gguf.raw_rows(t.name);
        ALEM_CHECK(bytes.size() == static_cast<size_t>(m.rows) * dtype_row_bytes(dtype, m.cols),
                   "GGUF tensor '" + t.name + "' has " + std::to_string(bytes.size()) +
                       " bytes, not rows of whole " + dtype_name(dtype) + " blocks");
        m.data.resize(bytes.size());
        std::copy(bytes.begin(), bytes.end(), m.data.data());
        writer.add_matrix(t.hf_name, m);
        continue;
      }
      const std::vector<float> values = gguf.dequantize(t.name);
      if (t.dims.size() == 2) {
        writer.add_matrix(t.hf_name, values.data(), t.rows(), t.cols(), dtype);
      } else {
        writer.add_vector(t.hf_name, values.data(), t.cols());
      }
    }
    report_progress(options, total, total);
  });
}

ConvertReport convert_safetensors(const std::string& hf_dir, const std::string& out_h5,
                                  const ConvertOptions& options) {
  const std::string config_path = (fs::path(hf_dir) / "config.json").string();
  ALEM_CHECK(fs::exists(config_path),
             "Hugging Face model folder " + hf_dir + " has no config.json");
  ModelConfig config = ModelConfig::from_hf_config_json(read_text(config_path));
  if (!options.model_name.empty()) {
    config.name = options.model_name;
  } else if (config.name.empty()) {
    config.name = fs::path(hf_dir).filename().string();
  }
  TokenizerData tokenizer = load_hf_tokenizer(hf_dir);
  if (tokenizer.bos_token_id < 0) tokenizer.bos_token_id = config.bos_token_id;
  if (tokenizer.eos_token_id < 0 && !config.eos_token_ids.empty()) {
    tokenizer.eos_token_id = config.eos_token_ids[0];
  }
  ALEM_CHECK(static_cast<int64_t>(tokenizer.tokens.size()) <= config.vocab_size,
             hf_dir + ": tokenizer has " + std::to_string(tokenizer.tokens.size()) +
                 " tokens, more than the model's vocab_size " + std::to_string(config.vocab_size));
  SafetensorsCheckpoint checkpoint(hf_dir);
  std::map<std::string, std::vector<int64_t>> present;
  for (const std::string& name : checkpoint.tensor_names()) {
    if (is_ignorable_hf_tensor(name)) continue;
    // A tied checkpoint may still carry lm_head.weight (a copy of the embedding): skip it.
    if (config.tie_word_embeddings && name == "lm_head.weight") continue;
    present[name] = checkpoint.find(name)->shape;
  }
  check_tensor_set(config, present, "Hugging Face checkpoint " + hf_dir);
  const std::string source = "safetensors:" + fs::path(hf_dir).filename().string();
  std::set<std::string> routers;
  for (int layer = 0; layer < config.num_layers; ++layer) {
    if (!config.is_moe_layer(layer)) continue;
    routers.insert(router_tensor_name(config, layer));
    if (!moe_family(config).shared_expert_gate.empty()) {
      routers.insert(shared_expert_gate_tensor_name(config, layer));  // a router of one
    }
  }
  return write_store(out_h5, config, tokenizer, source, [&](ModelStoreWriter& writer) {
    const int64_t total = static_cast<int64_t>(present.size());
    int64_t done = 0;
    for (const auto& [name, shape] : present) {
      report_progress(options, done++, total);
      const std::vector<float> values = checkpoint.read_f32(name);
      if (shape.size() == 2) {
        const DType dtype = routers.count(name) ? router_dtype(options.dtype)
                                                : stored_matrix_dtype(options.dtype, shape[1]);
        writer.add_matrix(name, values.data(), shape[0], shape[1], dtype);
      } else {
        writer.add_vector(name, values.data(), shape[0]);
      }
    }
    report_progress(options, total, total);
  });
}

std::string verify_store(const std::string& path) {
  ModelStoreReader store(path);
  std::string problems;
  const std::string digest_problem = store.verify();
  if (!digest_problem.empty()) problems = digest_problem;
  std::map<std::string, std::vector<int64_t>> present;
  for (const TensorInfo& t : store.list_tensors()) present[t.name] = t.shape;
  try {
    check_tensor_set(store.config(), present, "model store " + path);
  } catch (const Error& e) {
    problems += (problems.empty() ? "" : "; ") + e.message();
  }
  return problems;
}

}  // namespace alem
