// Qwen3-MoE against Hugging Face transformers (tests/data/golden/tiny-qwen3-moe-{a,b}.json,
// written by scripts/reference/make_qwen3_moe_reference.py on the random tiny-qwen3-moe-*
// models): config import (num_experts, top-k, norm_topk_prob, mlp_only_layers,
// decoder_sparse_step), the tensor set, greedy tokens and every step's top-20 logits and
// logsumexp on one rank (f32 and bf16 stores) and sharded over in-process fake groups with
// expert parallelism (tp 2 ep 1/2, tp 4 ep 2/4, tp 2 ep 2 pp 2), the grouped expert matmul
// (each expert's weights read once per step), routing counts, and the layouts refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "engine/shard_plan.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/architecture.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "mpi/fake_process_group.h"
#include "qwen3_moe_golden.h"
#include "test_env.h"

namespace alem {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using namespace test;  // the golden helpers

struct StoreCleanup : ::testing::Environment {
  void TearDown() override {
    for (const char* m : kModels)
      for (DType d : {DType::F32, DType::BF16}) std::filesystem::remove(store_file(m, d));
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new StoreCleanup);

TEST(Qwen3Moe, ConfigFromHuggingFace) {
  ModelStoreReader a(tiny_store("tiny-qwen3-moe-a", DType::BF16));
  const ModelConfig& ca = a.config();
  EXPECT_EQ(ca.architecture, "qwen3moe");
  EXPECT_TRUE(ca.qk_norm);
  EXPECT_EQ(ca.num_experts, 8);
  EXPECT_EQ(ca.num_experts_per_tok, 2);
  EXPECT_EQ(ca.moe_intermediate_size, 32);
  EXPECT_TRUE(ca.norm_topk_prob);
  EXPECT_EQ(ca.mlp_only_layers, std::vector<int>{0});
  EXPECT_FALSE(ca.is_moe_layer(0));
  EXPECT_TRUE(ca.is_moe_layer(1));
  EXPECT_TRUE(ca.is_moe_layer(2));
  EXPECT_EQ(verify_store(tiny_store("tiny-qwen3-moe-a", DType::BF16)), "");

  ModelStoreReader b(tiny_store("tiny-qwen3-moe-b", DType::BF16));
  const ModelConfig& cb = b.config();
  EXPECT_EQ(cb.num_experts, 12);
  EXPECT_EQ(cb.num_experts_per_tok, 3);
  EXPECT_FALSE(cb.norm_topk_prob);
  EXPECT_EQ(cb.decoder_sparse_step, 2);
  EXPECT_FALSE(cb.tie_word_embeddings);
  EXPECT_EQ(cb.num_moe_layers(), 2);
  EXPECT_FALSE(cb.is_moe_layer(0));
  EXPECT_TRUE(cb.is_moe_layer(1));
  EXPECT_FALSE(cb.is_moe_layer(2));
  EXPECT_TRUE(cb.is_moe_layer(3));
  // The stored JSON keeps every MoE field.
  const ModelConfig round = ModelConfig::from_json(cb.to_json());
  EXPECT_EQ(round.to_json(), cb.to_json());
  // Parameter counts from the shapes agree with the tensors written.
  int64_t stored = 0;
  for (const TensorInfo& t : b.list_tensors()) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    stored += n;
  }
  EXPECT_EQ(cb.parameter_count(), stored);
  EXPECT_LT(cb.active_parameter_count(), cb.parameter_count());
}

TEST(Qwen3Moe, BadConfigsAreRefused) {
  ModelStoreReader a(tiny_store("tiny-qwen3-moe-a", DType::BF16));
  ModelConfig c = a.config();
  c.num_experts_per_tok = 9;
  EXPECT_THROW(c.validate(), Error);
  c = a.config();
  c.mlp_only_layers = {3};
  EXPECT_THROW(c.validate(), Error);
  c = a.config();
  c.architecture = "qwen3";  // a dense family with experts set
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(ModelConfig::from_hf_config_json(
                   R"({"architectures":["Qwen3MoeForCausalLM"],"vocab_size":64,"hidden_size":16,)"
                   R"("num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":32,)"
                   R"("max_position_embeddings":64,"num_experts":4})"),
               Error);  // no num_experts_per_tok / moe_intermediate_size
}

TEST(Qwen3Moe, ExpertParallelLayoutsRefusedByName) {
  ModelStoreReader a(tiny_store("tiny-qwen3-moe-a", DType::BF16));
  const ModelConfig& c = a.config();
  auto message = [&](int tp, int ep) {
    try {
      make_shard_plan(c, tp, 0, 1, 0, false, {}, ep);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string();
  };
  EXPECT_NE(message(2, 4).find("does not divide the tensor parallel size"), std::string::npos);
  EXPECT_THROW(ParallelLayout(2, 1, 1, 4), Error);
  EXPECT_EQ(message(4, 4), "");
  const ShardPlan p = make_shard_plan(c, 4, 3, 1, 0, false, {}, 2);
  EXPECT_EQ(p.ep_rank, 1);
  EXPECT_EQ(p.expert_begin, 4);
  EXPECT_EQ(p.num_local_experts, 4);
  EXPECT_EQ(p.expert_ffn_begin, 16);
  EXPECT_EQ(p.expert_ffn_size, 16);
  ModelConfig twelve = c;
  twelve.num_experts = 12;
  twelve.num_experts_per_tok = 2;
  EXPECT_THROW(make_shard_plan(twelve, 8, 0, 1, 0, false, {}, 8), Error);  // 12 % 8
  ModelConfig dense = c;
  dense.architecture = "qwen3";
  dense.num_experts = dense.num_experts_per_tok = dense.moe_intermediate_size = 0;
  dense.mlp_only_layers.clear();
  EXPECT_THROW(make_shard_plan(dense, 2, 0, 1, 0, false, {}, 2), Error);  // no experts to spread
}

class Qwen3MoeGolden : public ::testing::TestWithParam<std::tuple<const char*, DType>> {};

TEST_P(Qwen3MoeGolden, OneRankMatchesTransformers) {
  const auto [name, dtype] = GetParam();
  const json golden = load_golden(name);
  ModelStoreReader store(tiny_store(name, dtype));
  ParallelContext ctx = make_solo_context();
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 128;
  ShardedTransformer model(store, ctx, *backend, options);
  std::vector<int> matched;
  double max_error = 0;
  EXPECT_EQ(check_golden(model, ctx, golden, matched, &max_error), 0);
  std::printf("%s %s: largest top-20 logit error vs transformers %.2g (tolerance %.0e)\n", name,
              dtype_name(dtype).c_str(), max_error, kTolerance);
  for (int m : matched) EXPECT_GE(m, 24);
  // Every routed token went to exactly k experts.
  const MoeRoutingCounts& counts = model.moe_routing();
  uint64_t assignments = 0;
  for (uint64_t n : counts.tokens_per_expert) assignments += n;
  EXPECT_GT(counts.routed_tokens, 0u);
  EXPECT_EQ(assignments, counts.routed_tokens * store.config().num_experts_per_tok);
}

INSTANTIATE_TEST_SUITE_P(Models, Qwen3MoeGolden,
                         ::testing::Combine(::testing::ValuesIn(kModels),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           std::string n = std::string(std::get<0>(info.param)).substr(15) + "_" +
                                           dtype_name(std::get<1>(info.param));
                           return n;
                         });

struct ShardedCase {
  int tp, ep, pp;
};

// Every rank of the layout in its own thread over fake groups; verdicts summed over ranks.
TEST(Qwen3Moe, ExpertParallelShardsMatchTransformers) {
  auto backend = make_backend("cpu");
  backend->set_max_threads(1);
  for (const char* name : kModels) {
    const json golden = load_golden(name);
    for (const ShardedCase sc : {ShardedCase{2, 1, 1}, ShardedCase{2, 2, 1}, ShardedCase{4, 2, 1},
                                 ShardedCase{4, 4, 1}, ShardedCase{2, 2, 2}}) {
      const ParallelLayout layout(sc.tp, sc.pp, 1, sc.ep);
      std::vector<ParallelContext> contexts = make_fake_contexts(layout);
      EngineOptions options;
      options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
      options.max_model_len = 128;
      std::vector<std::unique_ptr<ModelStoreReader>> stores;
      std::vector<std::unique_ptr<ShardedTransformer>> models;
      for (ParallelContext& ctx : contexts) {  // loading reads HDF5: one rank at a time
        stores.push_back(std::make_unique<ModelStoreReader>(tiny_store(name, DType::BF16)));
        models.push_back(
            std::make_unique<ShardedTransformer>(*stores.back(), ctx, *backend, options));
      }
      std::atomic<int> failures{0};
      std::vector<std::vector<int>> matched(contexts.size());
      std::vector<std::thread> threads;
      for (size_t r = 0; r < contexts.size(); ++r) {
        threads.emplace_back([&, r] {
          try {
            failures += check_golden(*models[r], contexts[r], golden, matched[r]);
          } catch (const std::exception& e) {
            ++failures;
            ADD_FAILURE() << "rank " << r << ": " << e.what();
          }
        });
      }
      for (std::thread& t : threads) t.join();
      const std::string what = std::string(name) + " " + layout.describe();
      EXPECT_EQ(failures.load(), 0) << what;
      for (size_t r = 0; r < contexts.size(); ++r) {
        if (!models[r]->shard().has_lm_head()) continue;
        for (int m : matched[r]) EXPECT_GE(m, 24) << what << " rank " << r;
      }
      // Each expert is held by exactly tp / ep ranks' slices: the ranks of one ep slice hold
      // disjoint experts from the other slices.
      for (size_t r = 0; r < contexts.size(); ++r) {
        const ShardPlan& s = models[r]->shard();
        EXPECT_EQ(s.num_local_experts, store_experts(*stores[r]) / sc.ep) << what;
        EXPECT_EQ(s.expert_begin, contexts[r].coords.ep * s.num_local_experts) << what;
      }
    }
  }
}

// The CPU backend, counting matmul calls and the rows they multiply.
class CountingBackend : public KernelBackend {
 public:
  explicit CountingBackend(std::unique_ptr<KernelBackend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
              float* y) const override {
    ++calls;
    rows += M;
    inner_->matmul(x, M, w, bias, y);
  }
  void rmsnorm(const float* x, const float* g, int64_t M, int64_t D, float eps,
               float* y) const override {
    inner_->rmsnorm(x, g, M, D, eps, y);
  }
  void rope(float* x, int64_t T, int nh, int hd, const int32_t* pos,
            const RopeTable& t) const override {
    inner_->rope(x, T, nh, hd, pos, t);
  }
  void silu_mul(const float* gu, int64_t M, int64_t I, float* out) const override {
    inner_->silu_mul(gu, M, I, out);
  }
  void add_inplace(float* y, const float* x, int64_t n) const override {
    inner_->add_inplace(y, x, n);
  }
  void kv_cache_write(const AttentionShape& s, const AttentionSequence* q, int n, const float* k,
                      const float* v, KVCacheLayerView c) const override {
    inner_->kv_cache_write(s, q, n, k, v, c);
  }
  void paged_attention(const AttentionShape& s, const AttentionSequence* q, int n, const float* x,
                       KVCacheLayerView c, float* out) const override {
    inner_->paged_attention(s, q, n, x, c, out);
  }
  void embedding(const WeightMatrix& t, int64_t b, const int32_t* tok, int64_t T,
                 float* out) const override {
    inner_->embedding(t, b, tok, T, out);
  }
  mutable int64_t calls = 0, rows = 0;

 private:
  std::unique_ptr<KernelBackend> inner_;
};

// A 24-token prefill through model a (layer 0 dense, layers 1-2 sparse with 8 experts, top-2):
// 48 token-expert pairs per sparse layer, but at most one gate_up and one down matmul per expert
// per layer, each over all the tokens routed to it.
TEST(Qwen3Moe, GroupedExpertMatmulReadsEachExpertOncePerStep) {
  ModelStoreReader store(tiny_store("tiny-qwen3-moe-a", DType::BF16));
  ParallelContext ctx = make_solo_context();
  CountingBackend backend(make_backend("cpu"));
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 64;
  ShardedTransformer model(store, ctx, backend, options);
  const json golden = load_golden("tiny-qwen3-moe-a");
  const auto ids = golden.at("prompts")[1].at("prompt_ids").get<std::vector<int32_t>>();
  const int64_t T = static_cast<int64_t>(ids.size());
  ASSERT_EQ(T, 24);
  StepPlan plan;
  plan.tokens = ids;
  StepSequence seq;
  seq.request_id = 1;
  seq.sample = true;
  seq.num_tokens = static_cast<int32_t>(T);
  for (int b = 0; b < model.num_kv_blocks(); ++b) seq.block_table.push_back(b);
  plan.sequences = {seq};
  model.forward(plan);
  const int layers = 3, sparse = 2, experts = 8, k = 2;
  // qkv + o per layer, gate_up + down in the dense layer, the router per sparse layer, LM head.
  const int64_t fixed_calls = 2 * layers + 2 + sparse + 1;
  EXPECT_LE(backend.calls, fixed_calls + sparse * 2 * experts);
  EXPECT_GE(backend.calls, fixed_calls + sparse * 2 * k);
  // Rows: every matmul of attention, the dense FFN and the routers sees T rows, the LM head one;
  // the experts see each routed token twice (gate_up, down).
  EXPECT_EQ(backend.rows, (2 * layers + 2 + sparse) * T + 1 + sparse * 2 * k * T);
}

}  // namespace
}  // namespace alem
