// The one test harness of every mixture-of-experts family (Qwen3-MoE, Mixtral, Qwen2-MoE,
// dots.llm1), shared by the unit and MPI tests: the tiny models' reference data from Hugging Face
// transformers (tests/data/golden/tiny-*.json, written by scripts/reference/golden_moe.py through
// each family's make_*_reference.py and make_moe_gguf.py), their conversion to a store (Hugging
// Face folder or GGUF, each converted once per process and removed when the binary ends), the
// check of one rank's model against the reference (teacher-forced greedy tokens and every step's
// logits), the same on one rank with routing counts, and over every rank of a layout in fake
// in-process groups, and the config round trip with the parameter count the shapes imply.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/moe_ffn.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "mpi/fake_process_group.h"
#include "test_env.h"

namespace alem::test {

using nlohmann::json;

// Logits tolerance against transformers: the weights are bf16 in the file, both sides compute
// in f32 and differ only in summation order (matmuls, the expert sum, the all-reduce); the
// largest error seen is printed by the one-rank test.
inline constexpr double kTolerance = 1e-4;
inline const char* const kModels[] = {"tiny-qwen3-moe-a", "tiny-qwen3-moe-b"};
inline const char* const kMixtralModel = "tiny-mixtral";
inline const char* const kQwen2MoeModel = "tiny-qwen2-moe";

inline json load_golden(const std::string& model) {
  std::ifstream in(data_dir() + "/golden/" + model + ".json");
  EXPECT_TRUE(in.good()) << "golden data missing for " << model;
  return json::parse(in);
}

inline std::string store_file(const std::string& model, DType dtype) {
  return (std::filesystem::temp_directory_path() / ("alem_test_moe_" + std::to_string(::getpid()) +
                                                    "_" + model + "_" + dtype_name(dtype) + ".h5"))
      .string();
}

// Every store the harness converted in this process; removed when the test binary ends.
inline std::vector<std::string>& converted_stores() {
  static std::vector<std::string> paths;
  return paths;
}

struct ConvertedStoreCleanup : ::testing::Environment {
  void TearDown() override {
    for (const std::string& path : converted_stores()) std::filesystem::remove(path);
  }
};
inline ::testing::Environment* const kConvertedStoreCleanup =
    ::testing::AddGlobalTestEnvironment(new ConvertedStoreCleanup);

// Converts once per process (`convert` writes `out`); returns `out`.
template <typename Convert>
const std::string& converted_once(const std::string& out, Convert convert) {
  static std::map<std::string, std::string> paths;
  auto it = paths.find(out);
  if (it != paths.end()) return it->second;
  convert(out);
  converted_stores().push_back(out);
  return paths.emplace(out, out).first->second;
}

// The tiny Hugging Face folder tests/data/<model> converted to `dtype`.
inline const std::string& tiny_store(const std::string& model, DType dtype) {
  return converted_once(store_file(model, dtype), [&](const std::string& out) {
    ConvertOptions options;
    options.dtype = dtype;
    convert_safetensors(data_dir() + "/" + model, out, options);
  });
}

// tests/data/<model>.gguf converted to bf16, or with the file's own types kept (`alem convert`'s
// default, --dtype auto: quantised experts stay ggml blocks).
inline const std::string& gguf_store(const std::string& model, bool keep_types = false) {
  const std::string out =
      store_file(model + (keep_types ? "-kept" : "-gguf"), keep_types ? DType::F32 : DType::BF16);
  return converted_once(out, [&](const std::string& path) {
    ConvertOptions options;
    options.dtype = DType::BF16;
    options.keep_gguf_types = keep_types;
    convert_gguf(data_dir() + "/" + model + ".gguf", path, options);
  });
}

inline double logsumexp(const float* row, int64_t n) {
  double m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(row[i]));
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(row[i] - m);
  return m + std::log(s);
}

// Feeds the prompt, then transformers' own tokens one by one (teacher forcing), and checks
// every step on the ranks with the LM head: the argmax equals transformers' token (or the
// step's margin is within tolerance), the top-20 logits and the logsumexp are within tolerance.
// Vocab slices are all-gathered over tp so every tp rank checks the whole row. Returns the
// number of failed checks on this rank; `matched` gets the agreeing steps of each prompt.
// `tolerance`: kTolerance for bf16 weights; the quantised-expert tests pass their own.
inline int check_golden(ShardedTransformer& model, ParallelContext& ctx, const json& golden,
                        std::vector<int>& matched, double* max_error = nullptr,
                        double tolerance = kTolerance) {
  const int64_t V = model.config().vocab_size;
  int failures = 0;
  matched.clear();
  int64_t request = 1;
  for (const json& prompt : golden.at("prompts")) {
    const auto ids = prompt.at("prompt_ids").get<std::vector<int32_t>>();
    const auto hf = prompt.at("generated_ids").get<std::vector<int32_t>>();
    const auto margins = prompt.at("step_margin").get<std::vector<double>>();
    const json& steps = prompt.at("steps");
    StepSequence seq;
    seq.request_id = request++;
    seq.sample = true;
    for (int b = 0; b < model.num_kv_blocks(); ++b) seq.block_table.push_back(b);
    int agree = 0;
    std::vector<float> row(V);
    for (size_t j = 0; j < hf.size(); ++j) {
      StepPlan plan;
      plan.tokens = j == 0 ? ids : std::vector<int32_t>{hf[j - 1]};
      seq.start_pos = j == 0 ? 0 : static_cast<int32_t>(ids.size() + j - 1);
      seq.num_tokens = static_cast<int32_t>(plan.tokens.size());
      plan.sequences = {seq};
      // Blocks of the previous prompt are overwritten from position 0; wipe them first.
      if (j == 0) plan.wipe_blocks = seq.block_table;
      StepLogits logits = model.forward(plan);
      if (!model.shard().has_lm_head()) continue;
      ctx.tp->all_gather(logits.row(0), logits.vocab_size * sizeof(float), row.data());
      const int32_t argmax =
          static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
      if (argmax == hf[j]) {
        ++agree;
      } else if (margins[j] >= tolerance) {
        ++failures;
        ADD_FAILURE() << prompt.at("name") << " step " << j << ": alem " << argmax
                      << ", transformers " << hf[j];
      }
      const auto top_ids = steps[j].at("top_ids").get<std::vector<int32_t>>();
      const auto top_logits = steps[j].at("top_logits").get<std::vector<double>>();
      for (size_t k = 0; k < top_ids.size(); ++k) {
        if (max_error)
          *max_error = std::max(*max_error, std::fabs(row[top_ids[k]] - top_logits[k]));
        if (std::fabs(row[top_ids[k]] - top_logits[k]) > tolerance) {
          ++failures;
          ADD_FAILURE() << prompt.at("name") << " step " << j << " id " << top_ids[k] << ": "
                        << row[top_ids[k]] << " vs " << top_logits[k];
        }
      }
      const double lse = steps[j].at("logsumexp").get<double>();
      if (std::fabs(logsumexp(row.data(), V) - lse) > tolerance) {
        ++failures;
        ADD_FAILURE() << prompt.at("name") << " step " << j << " logsumexp";
      }
    }
    matched.push_back(agree);
  }
  return failures;
}

// Runs check_golden on every rank of `layout` (each in its own thread over fake groups) with the
// store at `store_path`; returns the failed checks summed over ranks. Also checks that the last
// stage matched 24+ steps per prompt and that each rank holds its ep slice's experts.
inline int check_golden_fake_layout(const std::string& name, const std::string& store_path,
                                    const ParallelLayout& layout, double tolerance = kTolerance) {
  const json golden = load_golden(name);
  auto backend = make_backend("cpu");
  backend->set_max_threads(1);
  std::vector<ParallelContext> contexts = make_fake_contexts(layout);
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 128;
  std::vector<std::unique_ptr<ModelStoreReader>> stores;
  std::vector<std::unique_ptr<ShardedTransformer>> models;
  for (ParallelContext& ctx : contexts) {  // loading reads HDF5: one rank at a time
    stores.push_back(std::make_unique<ModelStoreReader>(store_path));
    models.push_back(std::make_unique<ShardedTransformer>(*stores.back(), ctx, *backend, options));
  }
  std::atomic<int> failures{0};
  std::vector<std::vector<int>> matched(contexts.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < contexts.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        failures += check_golden(*models[r], contexts[r], golden, matched[r], nullptr, tolerance);
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << "rank " << r << ": " << e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const std::string what = name + " " + layout.describe();
  int bad = failures.load();
  for (size_t r = 0; r < contexts.size(); ++r) {
    const ShardPlan& s = models[r]->shard();
    if (s.has_lm_head()) {
      for (int m : matched[r]) {
        EXPECT_GE(m, 24) << what << " rank " << r;
        bad += m >= 24 ? 0 : 1;
      }
    }
    const int experts = stores[r]->config().num_experts;
    EXPECT_EQ(s.num_local_experts, experts / layout.ep_size()) << what;
    EXPECT_EQ(s.expert_begin, contexts[r].coords.ep * s.num_local_experts) << what;
  }
  return bad;
}

// tp, pp and ep sizes of one layout (dp 1).
struct LayoutSizes {
  int tp, pp, ep;
};

// check_golden_fake_layout at each layout, each expected to pass.
inline void expect_golden_layouts(const std::string& name, const std::string& store_path,
                                  std::initializer_list<LayoutSizes> layouts,
                                  double tolerance = kTolerance) {
  for (const LayoutSizes& l : layouts) {
    const ParallelLayout layout(l.tp, l.pp, 1, l.ep);
    EXPECT_EQ(check_golden_fake_layout(name, store_path, layout, tolerance), 0)
        << name << " " << layout.describe();
  }
}

// One rank with the store at `store_path` against golden/<name>.json: every check of
// check_golden, 24+ agreeing greedy steps per prompt, and every routed token sent to exactly k
// experts. Prints the largest top-20 logit error (with `label`) and returns it.
inline double check_golden_one_rank(const std::string& name, const std::string& store_path,
                                    const std::string& label, double tolerance = kTolerance) {
  const json golden = load_golden(name);
  ModelStoreReader store(store_path);
  ParallelContext ctx = make_solo_context();
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 128;
  ShardedTransformer model(store, ctx, *backend, options);
  std::vector<int> matched;
  double max_error = 0;
  EXPECT_EQ(check_golden(model, ctx, golden, matched, &max_error, tolerance), 0) << label;
  std::printf("%s: largest top-20 logit error vs transformers %.2g (tolerance %.0e)\n",
              label.c_str(), max_error, tolerance);
  EXPECT_EQ(matched.size(), golden.at("prompts").size()) << label;
  for (int m : matched) EXPECT_GE(m, 24) << label;
  const MoeRoutingCounts& counts = model.moe_routing();
  uint64_t assignments = 0;
  for (uint64_t n : counts.tokens_per_expert) assignments += n;
  EXPECT_GT(counts.routed_tokens, 0u) << label;
  EXPECT_EQ(assignments, counts.routed_tokens * store.config().num_experts_per_tok) << label;
  return max_error;
}

// The stored config survives its JSON round trip, and the parameter counts its shapes imply
// agree with the tensors written (active parameters fewer than all).
inline void expect_config_round_trip_and_counts(const ModelStoreReader& store) {
  const ModelConfig& c = store.config();
  const ModelConfig round = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(round.to_json(), c.to_json());
  int64_t stored = 0;
  for (const TensorInfo& t : store.list_tensors()) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    stored += n;
  }
  EXPECT_EQ(c.parameter_count(), stored) << c.architecture;
  EXPECT_LT(c.active_parameter_count(), c.parameter_count()) << c.architecture;
}

}  // namespace alem::test
