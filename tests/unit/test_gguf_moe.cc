// GGUF import of mixture-of-experts models (model/gguf_moe.h): tiny GGUF files written by the
// `gguf` Python package (scripts/reference/make_moe_gguf.py) from the same bf16 weights as the
// Hugging Face folders: `qwen3moe` (tiny-qwen3-moe-a with a dense first layer, -b with
// norm_topk_prob false), `llama` with experts (tiny-mixtral, as llama.cpp writes Mixtral, q/k
// rows permuted) and `dots1` (tiny-dots1-a: shared experts, correction bias, groups, scale). The
// stacked 3-D expert tensors must become the same per-expert matrices, bit for bit, as the
// safetensors import; the models must then match transformers' golden tokens and logits on one rank
// and sharded with expert parallelism.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "model/architecture.h"
#include "model/convert.h"
#include "model/gguf_reader.h"
#include "model/model_store.h"
#include "moe_golden.h"

namespace alem {
namespace {

using namespace test;

const char* const kGgufModels[] = {"tiny-qwen3-moe-a", "tiny-qwen3-moe-b", "tiny-mixtral",
                                   "tiny-dots1-a"};

TEST(GgufMoe, ConfigFromMetadata) {
  GgufFile a(data_dir() + "/tiny-qwen3-moe-a.gguf");
  EXPECT_EQ(a.architecture(), "qwen3moe");
  const ModelConfig ca = a.model_config();
  EXPECT_EQ(ca.architecture, "qwen3moe");
  EXPECT_TRUE(ca.qk_norm);
  EXPECT_EQ(ca.num_experts, 8);
  EXPECT_EQ(ca.num_experts_per_tok, 2);
  EXPECT_EQ(ca.moe_intermediate_size, 32);
  EXPECT_EQ(ca.intermediate_size, 128);
  EXPECT_TRUE(ca.norm_topk_prob);
  EXPECT_EQ(ca.mlp_only_layers, std::vector<int>{0});  // the layer without ffn_gate_inp

  const ModelConfig cb = GgufFile(data_dir() + "/tiny-qwen3-moe-b.gguf").model_config();
  EXPECT_FALSE(cb.norm_topk_prob);  // qwen3moe.expert_weights_norm = false
  EXPECT_EQ(cb.num_experts, 12);
  EXPECT_EQ(cb.num_experts_per_tok, 3);
  EXPECT_EQ(cb.mlp_only_layers, (std::vector<int>{0, 2}));  // decoder_sparse_step 2 in HF
  for (int l = 0; l < 4; ++l) EXPECT_EQ(cb.is_moe_layer(l), l % 2 == 1) << l;

  GgufFile m(data_dir() + "/tiny-mixtral.gguf");
  EXPECT_EQ(m.architecture(), "llama");  // llama.cpp writes Mixtral as llama with experts
  const ModelConfig cm = m.model_config();
  EXPECT_EQ(cm.architecture, "mixtral");
  EXPECT_EQ(cm.num_experts, 8);
  EXPECT_EQ(cm.moe_intermediate_size, 32);  // feed_forward_length: the experts' size
  EXPECT_TRUE(cm.norm_topk_prob);
  EXPECT_EQ(cm.num_moe_layers(), 3);

  GgufFile d(data_dir() + "/tiny-dots1-a.gguf");
  EXPECT_EQ(d.architecture(), "dots1");
  const ModelConfig cd = d.model_config();
  EXPECT_EQ(cd.architecture, "dots1");
  EXPECT_TRUE(cd.qk_norm);
  EXPECT_EQ(cd.num_experts, 8);
  EXPECT_EQ(cd.n_group, 4);     // expert_group_count
  EXPECT_EQ(cd.topk_group, 2);  // expert_group_used_count
  EXPECT_FLOAT_EQ(cd.routed_scaling_factor, 2.5f);
  EXPECT_TRUE(cd.norm_topk_prob);
  EXPECT_EQ(cd.shared_expert_intermediate_size, 32);  // expert_shared_count 1 x 32
  EXPECT_EQ(cd.mlp_only_layers, std::vector<int>{0});
  // Its config equals the Hugging Face folder's, field for field (the name aside).
  ModelStoreReader hf(tiny_store("tiny-dots1-a", DType::BF16));
  ModelConfig from_hf = hf.config();
  from_hf.name = cd.name;
  EXPECT_EQ(ModelConfig::from_json(from_hf.to_json()).to_json(), cd.to_json());
}

// The GGUF and safetensors imports of each model hold the same tensors with the same bf16 bits.
TEST(GgufMoe, ExpertsSplitExactlyAsTheSafetensorsStore) {
  for (const char* model : kGgufModels) {
    ModelStoreReader from_gguf(gguf_store(model));
    ModelStoreReader from_hf(tiny_store(model, DType::BF16));
    EXPECT_EQ(verify_store(gguf_store(model)), "") << model;
    const std::vector<TensorInfo> gguf_tensors = from_gguf.list_tensors();
    const std::vector<TensorInfo> hf_tensors = from_hf.list_tensors();
    ASSERT_EQ(gguf_tensors.size(), hf_tensors.size()) << model;
    int compared = 0;
    for (const TensorInfo& t : hf_tensors) {
      ASSERT_TRUE(from_gguf.has_tensor(t.name)) << model << " " << t.name;
      EXPECT_EQ(from_gguf.tensor_info(t.name).shape, t.shape) << model << " " << t.name;
      if (t.shape.size() == 2) {
        const WeightMatrix a = from_gguf.read_matrix(t.name, 0, t.shape[0]);
        const WeightMatrix b = from_hf.read_matrix(t.name, 0, t.shape[0]);
        ASSERT_EQ(a.data.size(), b.data.size()) << t.name;
        EXPECT_EQ(std::memcmp(a.data.data(), b.data.data(), a.data.size()), 0)
            << model << " " << t.name << " differs";
      } else {
        EXPECT_EQ(from_gguf.read_vector(t.name), from_hf.read_vector(t.name)) << t.name;
      }
      ++compared;
    }
    EXPECT_GT(compared, 30) << model;
  }
}

TEST(GgufMoe, OneRankMatchesTransformers) {
  for (const char* model : kGgufModels)
    check_golden_one_rank(model, gguf_store(model), std::string(model) + " from GGUF");
}

TEST(GgufMoe, ExpertParallelMatchesTransformers) {
  for (const char* model : kGgufModels) {
    const ParallelLayout layout(4, 1, 1, 2);
    EXPECT_EQ(check_golden_fake_layout(model, gguf_store(model), layout), 0) << model;
  }
}

}  // namespace
}  // namespace alem
