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
#include "moe_golden.h"
#include "mpi/fake_process_group.h"
#include "test_env.h"

namespace alem {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using namespace test;  // the golden helpers

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
  // The stored JSON keeps every MoE field; the shapes give the tensors written.
  expect_config_round_trip_and_counts(b);
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
  check_golden_one_rank(name, tiny_store(name, dtype), std::string(name) + " " + dtype_name(dtype));
}

INSTANTIATE_TEST_SUITE_P(Models, Qwen3MoeGolden,
                         ::testing::Combine(::testing::ValuesIn(kModels),
                                            ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           std::string n = std::string(std::get<0>(info.param)).substr(15) + "_" +
                                           dtype_name(std::get<1>(info.param));
                           return n;
                         });

// Every rank of the layout in its own thread over fake groups; verdicts summed over ranks.
TEST(Qwen3Moe, ExpertParallelShardsMatchTransformers) {
  for (const char* name : kModels) {
    expect_golden_layouts(name, tiny_store(name, DType::BF16),
                          {{2, 1, 1}, {2, 1, 2}, {4, 1, 2}, {4, 1, 4}, {2, 2, 2}});  // {tp, pp, ep}
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
