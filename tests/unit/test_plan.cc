// The planner's arithmetic (src/plan/): parameter counts against the models' published sizes,
// its sharding rules against the engine's own (make_shard_plan), memory and communication terms
// worked out by hand, the alpha-beta fit, cluster TOML errors, and the shipped cluster files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "engine/shard_plan.h"
#include "model/model_config.h"
#include "model/model_store.h"
#include "plan/cluster_spec.h"
#include "plan/cost_model.h"
#include "plan/network_sim.h"
#include "plan/results_file.h"
#include "test_env.h"

namespace alem::plan {
namespace {

// Sizes from the model cards (Hugging Face): total and, for MoE, activated parameters.
TEST(PlanModelShape, ParameterCountsMatchPublishedSizes) {
  struct Card {
    const char* name;
    double total_b, active_b;
  };
  const Card cards[] = {{"qwen3-8b", 8.19, 8.19},      {"qwen3-32b", 32.8, 32.8},
                        {"qwen3-30b-a3b", 30.5, 3.3},  {"qwen3-235b-a22b", 235, 22},
                        {"llama-3.1-70b", 70.6, 70.6}, {"smollm2-135m", 0.1345, 0.1345}};
  for (const Card& card : cards) {
    const ModelShape s = named_shape(card.name);
    EXPECT_NEAR(s.total_params() / 1e9, card.total_b, card.total_b * 0.02) << card.name;
    if (s.is_moe()) {
      EXPECT_NEAR(s.active_params() / 1e9, card.active_b, card.active_b * 0.02) << card.name;
    }
  }
  EXPECT_THROW(named_shape("gpt-5"), Error);
}

TEST(PlanModelShape, StoreShapeAgreesWithModelConfig) {
  const std::string path = test::model_path();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no model store at " << path;
  ModelStoreReader store(path);
  const ModelShape s = shape_from_config(store.config(), "bf16");
  EXPECT_EQ(s.total_params(), store.config().parameter_count());
  EXPECT_EQ(s.total_params(), named_shape("smollm2-135m").total_params());
}

// The planner lists a tp size exactly when the engine's shard plan accepts it.
TEST(PlanSharding, AgreesWithTheEngine) {
  ModelConfig c;
  c.architecture = "llama";
  c.name = "probe";
  c.vocab_size = 49152;
  c.hidden_size = 576;
  c.num_layers = 30;
  c.num_heads = 9;
  c.num_kv_heads = 3;
  c.head_dim = 64;
  c.intermediate_size = 1536;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = true;
  for (const char* dtype : {"bf16", "int8"}) {
    const ModelShape s = shape_from_config(c, dtype);
    for (int tp = 1; tp <= 12; ++tp) {
      bool engine_ok = true;
      try {
        make_shard_plan(c, tp, 0, 1, 0, s.weight_dtype == "int8");
      } catch (const Error&) {
        engine_ok = false;
      }
      EXPECT_EQ(sharding_problem(s, {tp, 1, 1, 1}).empty(), engine_ok) << dtype << " tp " << tp;
    }
  }
  const ModelShape s = shape_from_config(c, "bf16");
  EXPECT_NE(sharding_problem(s, {1, 31, 1, 1}), "");  // more stages than layers
  EXPECT_NE(sharding_problem(s, {1, 1, 2, 2}), "");   // ep on a dense model
  // Expert parallelism as the engine runs it: ep divides tp (and the experts).
  const ModelShape moe = named_shape("qwen3-30b-a3b");
  EXPECT_EQ(sharding_problem(moe, {4, 1, 2, 1}), "");
  EXPECT_EQ(sharding_problem(moe, {4, 1, 4, 2}), "");
  EXPECT_NE(sharding_problem(moe, {2, 1, 4, 2}), "");  // ep 4 does not divide tp 2
  EXPECT_NE(sharding_problem(moe, {3, 1, 3, 1}), "");  // 3 does not divide 32 heads
}

ClusterSpec simple_gpu_cluster();

// A Qwen3-MoE config with dense layers among the sparse ones (decoder_sparse_step 2 and an
// mlp_only layer): the planner's shape counts what the engine's config counts.
ModelConfig mixed_moe_config() {
  ModelConfig c;
  c.architecture = "qwen3moe";
  c.name = "mixed";
  c.vocab_size = 1024;
  c.hidden_size = 256;
  c.num_layers = 8;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 32;
  c.intermediate_size = 768;
  c.qk_norm = true;
  c.num_experts = 16;
  c.num_experts_per_tok = 4;
  c.moe_intermediate_size = 128;
  c.decoder_sparse_step = 2;
  c.mlp_only_layers = {3};
  c.max_position_embeddings = 512;
  return c;
}

TEST(PlanModelShape, MoeFieldsOfAStoreConfig) {
  const ModelConfig c = mixed_moe_config();
  const ModelShape s = shape_from_config(c, "bf16");
  EXPECT_EQ(s.num_moe_layers, c.num_moe_layers());  // layers 1, 5, 7 (3 is mlp_only)
  EXPECT_EQ(s.num_moe_layers, 3);
  EXPECT_EQ(s.total_params(), c.parameter_count());
  EXPECT_EQ(s.active_params(), c.active_parameter_count());
  EXPECT_LT(s.active_params(), s.total_params());
  // Every tp and ep the engine accepts for this config, and only those.
  for (int tp = 1; tp <= 8; ++tp) {
    for (int ep = 1; ep <= 8; ++ep) {
      bool engine_ok = true;
      try {
        make_shard_plan(c, tp, 0, 1, 0, false, {}, ep);
      } catch (const Error&) {
        engine_ok = false;
      }
      EXPECT_EQ(sharding_problem(s, {tp, 1, ep, 1}).empty(), engine_ok) << tp << " " << ep;
    }
  }
}

// Shared experts (Qwen2-MoE's gated one, dots.llm1's gate-less ones with DeepSeek-V3 routing's
// correction bias) are counted as the engine's config counts them, run by every token (active),
// and split over tp with the same rule the engine applies.
TEST(PlanModelShape, SharedExpertsAreCounted) {
  const std::string common =
      R"("vocab_size":512,"hidden_size":128,"num_hidden_layers":4,"num_attention_heads":8,)"
      R"("num_key_value_heads":4,"intermediate_size":256,"max_position_embeddings":256,)"
      R"("num_experts_per_tok":2,"moe_intermediate_size":48,)";
  for (const std::string& json :
       {R"({"architectures":["Qwen2MoeForCausalLM"],)" + common +
            R"("num_experts":8,"shared_expert_intermediate_size":96,"mlp_only_layers":[0]})",
        R"({"architectures":["Dots1ForCausalLM"],)" + common +
            R"("n_routed_experts":8,"n_shared_experts":2,"first_k_dense_replace":1,)"
            R"("n_group":4,"topk_group":2,"routed_scaling_factor":2.5})"}) {
    const ModelConfig c = ModelConfig::from_hf_config_json(json);
    const ModelShape s = shape_from_config(c, "bf16");
    EXPECT_EQ(s.shared_expert_params_total(), 3 * 3 * 128 * 96) << c.architecture;
    EXPECT_EQ(s.total_params(), c.parameter_count()) << c.architecture;
    EXPECT_EQ(s.active_params(), c.active_parameter_count()) << c.architecture;
    for (int tp = 1; tp <= 8; tp *= 2) {  // 96 shared columns; 4 kv heads stop tp 8
      bool engine_ok = true;
      try {
        make_shard_plan(c, tp, 0, 1, 0, false, {}, 1);
      } catch (const Error&) {
        engine_ok = false;
      }
      EXPECT_EQ(sharding_problem(s, {tp, 1, 1, 1}).empty(), engine_ok) << c.architecture << tp;
    }
    ModelConfig odd = c;  // 98 columns: tp 4 cuts them
    odd.shared_expert_intermediate_size = 98;
    ModelShape odd_shape = s;
    odd_shape.shared_expert_intermediate_size = 98;
    EXPECT_THROW(make_shard_plan(odd, 4, 0, 1, 0, false, {}, 1), Error);
    EXPECT_NE(sharding_problem(odd_shape, {4, 1, 1, 1}).find("shared expert"), std::string::npos);
  }
}

// The engine's ep regroups a tp group's experts: every rank still holds E / tp experts' worth
// of weights and runs the same two all-reduces per layer (no all-to-all); the group waits for
// its busiest slice, so a step reads a little more than the mean.
TEST(PlanCostModel, ExpertParallelFollowsTheEngine) {
  const ModelShape m = named_shape("qwen3-30b-a3b");
  const ClusterSpec c = simple_gpu_cluster();
  Workload w;
  w.prompt_tokens = 256;
  w.output_tokens = 64;
  w.concurrency = 8;
  const Prediction ep1 = predict(m, c, w, {4, 1, 1, 1});
  const Prediction ep4 = predict(m, c, w, {4, 1, 4, 1});
  ASSERT_TRUE(ep1.fits && ep4.fits) << ep1.why_not << ep4.why_not;
  EXPECT_DOUBLE_EQ(ep1.memory.weights, ep4.memory.weights);
  EXPECT_NEAR(ep1.decode.communication, ep4.decode.communication, 1e-12);
  EXPECT_GT(ep4.decode.memory, ep1.decode.memory);
  EXPECT_LT(ep4.decode.memory, 2 * ep1.decode.memory);
  // 8 tokens x 8 choices of 128 experts touch well under all of them: a decode step reads
  // less than the rank's weights.
  EXPECT_LT(ep1.decode.memory * c.device_bandwidth_gbs * 1e9, ep1.memory.weights);
}

ClusterSpec simple_gpu_cluster() {
  return parse_cluster_spec(R"(
name = "t"
kind = "gpu"
nodes = 1
[node]
devices = 8
[device]
memory_gib = 80
memory_bandwidth_gbs = 1000
peak_tflops = { bf16 = 100 }
[links.intra_node]
bandwidth_gbs = 100
latency_us = 10
)",
                            "inline");
}

TEST(PlanCostModel, MemoryAndStepTermsByHand) {
  const ModelShape m = named_shape("qwen3-8b");
  const ClusterSpec c = simple_gpu_cluster();
  Workload w;
  w.prompt_tokens = 1000;
  w.output_tokens = 1;  // decode context = 1000 + 0.5
  w.concurrency = 4;
  const Prediction one = predict(m, c, w, {1, 1, 1, 1});
  const Prediction two = predict(m, c, w, {2, 1, 1, 1});
  ASSERT_TRUE(one.fits && two.fits);
  EXPECT_NEAR(one.memory.weights, m.total_params() * 2.0, m.total_params() * 2e-4);  // norms
  EXPECT_DOUBLE_EQ(two.memory.weights, one.memory.weights / 2);
  // KV: 4 sequences x 1001 positions x 36 layers x K and V x 8 heads x 128 x 2 bytes (bf16).
  EXPECT_DOUBLE_EQ(one.memory.kv_cache, 4.0 * 1001 * 36 * 2 * 8 * 128 * 2);
  // Decode at batch 4 reads every weight once (plus the KV cache): memory-bound on one GPU.
  const double weights_read = m.total_params() * 2.0 - m.embedding_params() * 2.0;
  const double kv_read = 4.0 * 1000.5 * 36 * 2 * 8 * 128 * 2;
  EXPECT_NEAR(one.decode.memory, (weights_read + kv_read) / 1e12, 1e-3 * one.decode.memory);
  EXPECT_EQ(one.decode.communication, 0);
  // tp 2: per layer 2 ring all-reduces of 4 x 4096 floats: 2 steps of (10 us + 32 KiB / 100 GB/s)
  // each, and one more after the embedding; plus small sampling and step messages.
  const double ring = 2 * (10e-6 + 4 * 4096 * 4 / 2 / 100e9);
  EXPECT_GT(two.decode.communication, (2 * 36 + 1) * ring);
  EXPECT_LT(two.decode.communication, (2 * 36 + 1) * ring + 4 * 10.1e-6);
  EXPECT_GT(one.tokens_per_s, 0);
  EXPECT_NEAR(one.tokens_per_s, 4 / one.ttft_s, 1e-9);  // one output token: the prefill step
}

// Pipeline stages differ: only the last runs the LM head. One sequence passes every stage in
// turn, so pp 2 reads what one rank reads; two micro-batches take each stage once and the
// slowest (the last) once more.
TEST(PlanCostModel, PipelineStagesInTurnAndTheSlowestPerMicroBatch) {
  const ModelShape m = named_shape("qwen3-8b");
  const ClusterSpec c = simple_gpu_cluster();
  Workload w;
  w.prompt_tokens = 100;
  w.output_tokens = 2;
  w.concurrency = 1;
  const Prediction one = predict(m, c, w, {1, 1, 1, 1});
  const Prediction two = predict(m, c, w, {1, 2, 1, 1});
  ASSERT_TRUE(one.fits && two.fits);
  EXPECT_NEAR(two.decode.memory, one.decode.memory, 1e-9 * one.decode.memory);
  EXPECT_GT(two.decode.communication, 0);  // the hop
  w.concurrency = 2;
  const Prediction pair = predict(m, c, w, {1, 2, 1, 1});
  // Each micro-batch is one sequence: 18 layers, then 18 layers and the head.
  const double layers = one.decode.memory - m.lm_head_params() * 2.0 / 1e12;
  const double first = layers / 2, last = layers / 2 + m.lm_head_params() * 2.0 / 1e12;
  EXPECT_NEAR(pair.decode.memory, first + 2 * last, 1e-3 * pair.decode.memory);
}

TEST(PlanCostModel, RefusesWhatDoesNotFitAndSaysWhy) {
  ClusterSpec c = simple_gpu_cluster();
  c.nodes = 1;
  c.devices_per_node = 1;
  Workload w;
  w.concurrency = 1;
  const Prediction p = predict(named_shape("llama-3.1-70b"), c, w, {1, 1, 1, 1});
  EXPECT_FALSE(p.fits);
  EXPECT_NE(p.why_not.find("GiB per rank"), std::string::npos) << p.why_not;
  const Prediction q = predict(named_shape("llama-3.1-70b"), c, w, {2, 1, 1, 1});
  EXPECT_NE(q.why_not.find("needs 2 GPUs"), std::string::npos) << q.why_not;
  const auto all = plan_layouts(named_shape("qwen3-8b"), simple_gpu_cluster(), w);
  ASSERT_FALSE(all.empty());
  EXPECT_TRUE(all.front().fits);
  for (size_t i = 1; i < all.size(); ++i) {
    if (all[i].fits && all[i - 1].fits && all[i].meets_targets == all[i - 1].meets_targets) {
      EXPECT_GE(all[i - 1].tokens_per_s, all[i].tokens_per_s);
    }
  }
}

TEST(PlanCostModel, EncryptionCostsOnlyAcrossNodes) {
  ClusterSpec c = simple_gpu_cluster();
  c.nodes = 2;
  c.devices_per_node = 1;
  c.inter_node = {10, 20, {}};
  c.aes_gcm_gbs = 2;
  Workload w;
  w.concurrency = 8;
  const ModelShape m = named_shape("qwen3-8b");
  const Prediction clear = predict(m, c, w, {1, 2, 1, 1});
  c.encrypt_inter_node = true;
  const Prediction sealed = predict(m, c, w, {1, 2, 1, 1});
  ASSERT_TRUE(clear.fits && sealed.fits);
  EXPECT_EQ(clear.decode.encryption, 0);
  EXPECT_GT(sealed.decode.encryption, 0);
  EXPECT_GT(sealed.decode.total, clear.decode.total);
  EXPECT_EQ(predict(m, c, w, {1, 1, 1, 2}).decode.encryption, 0);  // dp: no traffic per step
}

TEST(PlanCalibration, AlphaBetaFitRecoversTheLink) {
  std::vector<Calibration::CollectivePoint> points;
  for (double bytes : {4.0, 256.0, 4096.0, 65536.0, 1048576.0, 16777216.0})
    points.push_back({bytes, 3e-6 + bytes / 5e9});
  const LinkSpec l = fit_alpha_beta(points);
  EXPECT_NEAR(l.latency_us, 3, 0.01);
  EXPECT_NEAR(l.bandwidth_gbs, 5, 0.01);
  EXPECT_THROW(fit_alpha_beta({{4, 1e-6}}), Error);
  Calibration cal;
  cal.threads = 2;
  cal.matmul_gflops["bf16"] = 200;
  cal.matmul_gbs["bf16"] = 20;
  cal.collectives["send_recv"] = points;
  cal.fitted_link = l;
  const Calibration back = calibration_from_json(calibration_to_json(cal), "x");
  EXPECT_EQ(back.matmul_gflops, cal.matmul_gflops);
  EXPECT_EQ(back.collectives.at("send_recv").size(), points.size());
  ClusterSpec c = simple_gpu_cluster();
  apply_calibration(c, back, "cal.json");
  EXPECT_DOUBLE_EQ(c.peak_flops("bf16"), 100e9);  // per device: 200 GFLOP/s over 2 threads
  EXPECT_DOUBLE_EQ(c.weight_bandwidth("bf16"), 10e9);
  EXPECT_NEAR(c.intra_node.latency_us, 3, 0.01);
  EXPECT_THROW(calibration_from_json("{\"format\": \"other\"}", "bad.json"), Error);
}

// A calibration whose send/recv ranks were on two hosts describes the link between nodes; on a
// cluster whose nodes share one machine's cores (the netns test cluster) the measured core
// share of the job's whole rank count applies, not that of one rank per node.
TEST(PlanCalibration, BetweenHostsAndSharedCores) {
  Calibration cal;
  cal.collective_ranks = 4;
  cal.fitted_link = {0.5, 80, {}};
  cal.link_between_nodes = true;
  cal.rank_core_share = {{1, 1.0}, {4, 0.25}};
  const Calibration back = calibration_from_json(calibration_to_json(cal), "x");
  EXPECT_TRUE(back.link_between_nodes);
  ClusterSpec c =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/netns-4host.toml");
  ASSERT_TRUE(c.nodes_share_cores);
  const LinkSpec intra = c.intra_node;
  apply_calibration(c, back, "cal.json");
  EXPECT_DOUBLE_EQ(c.inter_node.latency_us, 80);
  EXPECT_DOUBLE_EQ(c.inter_node.bandwidth_gbs, 0.5);
  EXPECT_DOUBLE_EQ(c.intra_node.latency_us, intra.latency_us);  // untouched
  const ModelShape m = named_shape("smollm2-135m");
  Workload w;
  w.concurrency = 4;
  const Prediction shared = predict(m, c, w, {1, 1, 1, 4});  // one rank on each of 4 hosts
  c.nodes_share_cores = false;
  const Prediction apart = predict(m, c, w, {1, 1, 1, 4});
  ASSERT_TRUE(shared.fits && apart.fits);
  // A quarter of a core each instead of a whole one: the step takes about four times as long.
  EXPECT_NEAR(shared.decode.compute / apart.decode.compute, 4, 0.01);
}

// Streaming weights shares the node's memory bandwidth, a batch's arithmetic only the cores:
// calibration measures both shares, and the batched one applies to compute-bound work alone.
TEST(PlanCalibration, StreamingAndComputeShareTheNodeApart) {
  Calibration cal;
  cal.rank_core_share = {{1, 1.0}, {2, 0.6}};
  cal.rank_core_share_batched = {{1, 1.0}, {2, 0.95}};
  cal.matmul_curve["bf16"] = {{1, 1e-10}, {8, 2e-10}};  // 8 rows: half streaming, half compute
  const Calibration back = calibration_from_json(calibration_to_json(cal), "x");
  EXPECT_EQ(back.rank_core_share_batched, cal.rank_core_share_batched);
  ClusterSpec c =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/dev-2core.toml");
  apply_calibration(c, back, "cal.json");
  EXPECT_DOUBLE_EQ(c.core_share(2), 0.6);
  EXPECT_DOUBLE_EQ(c.compute_share(2), 0.95);
  EXPECT_NEAR(c.compute_share(1.5), 0.975, 1e-12);
  EXPECT_NEAR(c.compute_share(4), 0.95 * 2 / 4, 1e-12);  // beyond: the measured total, shared
  const ModelShape m = named_shape("smollm2-135m");
  Workload w;
  w.concurrency = 16;
  const Prediction both = predict(m, c, w, {1, 1, 1, 2});
  ASSERT_TRUE(both.fits);
  c.rank_core_share_batched.clear();  // an older calibration: one share for both
  EXPECT_DOUBLE_EQ(c.compute_share(2), 0.6);
  const Prediction one = predict(m, c, w, {1, 1, 1, 2});
  EXPECT_DOUBLE_EQ(one.decode.memory, both.decode.memory);
  EXPECT_NEAR(one.decode.compute / both.decode.compute, 0.95 / 0.6, 1e-6);
}

// Where idle ranks yield (the netns cluster: node.shared_cores), a pipeline at one sequence has
// one stage computing at a time, so that stage gets the core share of one rank, not of all.
TEST(PlanCalibration, IdlePipelineStagesLeaveTheirShare) {
  ClusterSpec c =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/netns-4host.toml");
  ASSERT_TRUE(c.idle_ranks_yield);  // the default where nodes share cores
  c.rank_core_share = {{1, 1.0}, {2, 0.5}, {3, 1.0 / 3}, {4, 0.25}};
  const ModelShape m = named_shape("smollm2-135m");
  Workload w;
  w.concurrency = 1;
  const Prediction yielding = predict(m, c, w, {1, 4, 1, 1});
  c.idle_ranks_yield = c.yield_when_oversubscribed = false;  // node.idle_ranks = "poll"
  const Prediction polling = predict(m, c, w, {1, 4, 1, 1});
  ASSERT_TRUE(yielding.fits && polling.fits);
  EXPECT_NEAR(polling.decode.compute / yielding.decode.compute, 4, 0.01);
  // dp replicas all compute at once: the same either way.
  c.idle_ranks_yield = c.yield_when_oversubscribed = true;
  const double dp_yield = predict(m, c, w, {1, 1, 1, 4}).decode.compute;
  c.idle_ranks_yield = c.yield_when_oversubscribed = false;
  EXPECT_DOUBLE_EQ(predict(m, c, w, {1, 1, 1, 4}).decode.compute, dp_yield);
  // One node of 2 cores ("auto"): 2 ranks poll, 3 (oversubscribed: Open MPI yields) do not.
  const ClusterSpec dev =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/dev-2core.toml");
  EXPECT_FALSE(dev.ranks_yield(2));
  EXPECT_TRUE(dev.ranks_yield(3));
  // Between measured counts the share is interpolated.
  EXPECT_NEAR(c.core_share(1.5), 0.75, 1e-12);
}

// A measured link is followed size by size (linear between the measured sizes), and a step that
// sends more than a token bucket's burst is bounded by the sustained rate.
TEST(PlanCalibration, LinkTimesPerMessageSize) {
  Calibration cal;
  cal.collective_ranks = 3;
  cal.link_between_nodes = true;
  // A token bucket: 32 KiB within the burst at wire speed, 16 MiB at 12.5 MB/s.
  cal.collectives["send_recv"] = {
      {64, 20e-6}, {32768, 30e-6}, {262144, 12e-3}, {16777216, 16777216 / 12.5e6}};
  cal.fitted_link = fit_alpha_beta(cal.collectives["send_recv"]);
  const Calibration back = calibration_from_json(calibration_to_json(cal), "x");
  ClusterSpec c =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/netns-4host.toml");
  apply_calibration(c, back, "cal.json");
  const LinkSpec& l = c.inter_node;
  ASSERT_EQ(l.measured.size(), 4u);
  EXPECT_DOUBLE_EQ(l.seconds(10), 20e-6);     // below the smallest: latency-bound
  EXPECT_DOUBLE_EQ(l.seconds(32768), 30e-6);  // at a measured size: as measured
  EXPECT_NEAR(l.seconds((32768 + 262144) / 2.0), (30e-6 + 12e-3) / 2, 1e-12);
  EXPECT_NEAR(l.sustained_gbs, 0.0125, 1e-9);
  EXPECT_NEAR(l.seconds(2 * 16777216.0), 2 * 16777216 / 12.5e6, 1e-9);
  // tp 3 over three hosts at 8 sequences: each rank sends 2 (3 - 1) x 1/3 of the activations per
  // all-reduce, more than the burst over a step: the step's communication is at least its
  // bytes at 12.5 MB/s.
  c.rank_core_share = {{3, 0.6}};
  const ModelShape m = named_shape("smollm2-135m");
  Workload w;
  w.concurrency = 8;
  const Prediction p = predict(m, c, w, {3, 1, 1, 1});
  ASSERT_TRUE(p.fits);
  const double per_all_reduce = 4.0 / 3 * 8 * m.hidden_size * m.activation_bytes;
  EXPECT_GE(p.decode.communication, (2 * m.num_layers + 1) * per_all_reduce / 12.5e6 * 0.999);
  EXPECT_NEAR(p.decode.wire, p.decode.communication, 1e-12);
}

TEST(PlanCalibration, WaitingPerCollectiveBySize) {
  Calibration cal;
  cal.collective_ranks = 3;
  cal.sync_us = 100;
  cal.sync_us_by_ranks = {{3, 100}};
  cal.sync_us_by_bytes = {{4096, 100}, {32768, 300}};
  const Calibration back = calibration_from_json(calibration_to_json(cal), "x");
  EXPECT_EQ(back.sync_us_by_bytes, cal.sync_us_by_bytes);
  ClusterSpec c =
      load_cluster_spec(test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters/netns-4host.toml");
  apply_calibration(c, back, "cal.json");
  EXPECT_NEAR(c.sync_seconds(3, 4096), 100e-6, 1e-15);
  EXPECT_NEAR(c.sync_seconds(3, (4096 + 32768) / 2.0), 200e-6, 1e-15);
  EXPECT_NEAR(c.sync_seconds(3, 1e6), 300e-6, 1e-15);             // the nearest end beyond
  EXPECT_NEAR(c.sync_seconds(2, 1e6), c.sync_seconds(2), 1e-15);  // other ranks: by count
}

std::string error_of(const std::string& toml) {
  try {
    parse_cluster_spec(toml, "c.toml");
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// bf16 weights take 12 bits on CPU nodes (the CPU backend's coded form, model/bf16_coded.h): a
// rank holds and a decode step streams 1.51 bytes a weight there; 2 on GPUs and where
// node.bf16_weight_bytes = 2 says the nodes keep them plain. A calibrated rate, measured in
// nominal bytes, predicts the same weight time either way.
TEST(PlanCostModel, Bf16WeightsAreCodedOnCpuNodes) {
  auto cluster = [](const std::string& node_line) {
    return parse_cluster_spec(R"(
name = "cpu"
kind = "cpu"
[node]
devices = 2
memory_gib = 64
)" + node_line + R"(
[device]
memory_bandwidth_gbs = 20
peak_tflops = { bf16 = 0.3 }
[links.intra_node]
bandwidth_gbs = 4
latency_us = 2
)",
                              "inline");
  };
  ClusterSpec coded = cluster(""), plain = cluster("bf16_weight_bytes = 2");
  EXPECT_DOUBLE_EQ(coded.weight_storage_ratio("bf16"), 1.51 / 2);
  EXPECT_DOUBLE_EQ(coded.weight_storage_ratio("int8"), 1.0);
  EXPECT_DOUBLE_EQ(simple_gpu_cluster().weight_storage_ratio("bf16"), 1.0);
  const ModelShape m = named_shape("qwen3-8b");
  Workload w;
  w.prompt_tokens = 1000;
  w.output_tokens = 1;
  w.concurrency = 1;
  const double weights_read = m.total_params() * 2.0 - m.embedding_params() * 2.0;
  const double kv_read = 1000.5 * 36 * 2 * 8 * 128 * 2;
  auto check = [&](const char* what) -> std::pair<Prediction, double> {
    const Prediction c = predict(m, coded, w, {1, 1, 1, 1});
    const Prediction p = predict(m, plain, w, {1, 1, 1, 1});
    EXPECT_TRUE(c.fits && p.fits) << what;
    EXPECT_NEAR(c.memory.weights, p.memory.weights * 1.51 / 2, 1e-9 * p.memory.weights) << what;
    // Decode reads the weights as stored and the KV cache: (W + KV) / B plain.
    const double bandwidth = (weights_read + kv_read) / p.decode.memory;
    return {c, bandwidth};
  };
  const auto [datasheet, bandwidth] = check("datasheet");
  EXPECT_NEAR(datasheet.decode.memory * bandwidth, weights_read * 1.51 / 2 + kv_read,
              1e-6 * weights_read);
  // Calibrated: the weight stream's rate counts nominal bytes, so the weights take as long
  // either way (only the KV cache's bytes read at the stored bytes' rate).
  coded.weight_stream_gbs["bf16"] = plain.weight_stream_gbs["bf16"] = 10;
  const auto [calibrated, rate] = check("calibrated");
  // (weights_read counts the norms too: 1e-4 of the total.)
  EXPECT_NEAR(calibrated.decode.memory, weights_read / 10e9 + kv_read / (10e9 * 1.51 / 2),
              1e-4 * calibrated.decode.memory);
  EXPECT_NEAR(rate, 10e9, 1e-3 * rate);
  EXPECT_NE(error_of("kind = \"cpu\"\n[node]\nbf16_weight_bytes = 1.2\ndevices = 2\n"
                     "memory_gib = 4\n[device]\nmemory_bandwidth_gbs = 1\npeak_tflops = "
                     "{ bf16 = 1 }\n[links.intra_node]\nbandwidth_gbs = 1\nlatency_us = 1\n")
                .find("node.bf16_weight_bytes"),
            std::string::npos);
}

TEST(PlanClusterSpec, BadInputsGetClearErrors) {
  EXPECT_NE(error_of("name = \n").find("c.toml:1"), std::string::npos);
  EXPECT_NE(error_of("name = \"x\"\n").find("missing key 'node.devices'"), std::string::npos);
  const std::string base =
      "[node]\ndevices = 2\nmemory_gib = 4\n[device]\nmemory_bandwidth_gbs = 1\n"
      "peak_tflops = { bf16 = 1 }\n[links.intra_node]\nbandwidth_gbs = 1\nlatency_us = 1\n";
  EXPECT_EQ(error_of(base + "kind = \"cpu\"\n"), "c.toml:10: unknown key 'links.intra_node.kind'");
  EXPECT_EQ(error_of("kind = \"cpu\"\n" + base), "");
  EXPECT_NE(error_of("kind = \"cpu\"\nnodes = 2\n" + base).find("inter_node"), std::string::npos);
  EXPECT_NE(error_of("kind = \"cpu\"\nnodess = 2\n" + base).find("unknown key 'nodess'"),
            std::string::npos);
  EXPECT_NE(error_of("kind = \"tpu\"\n" + base).find("kind must be"), std::string::npos);
  EXPECT_NE(error_of("kind = \"gpu\"\n" + base).find("device.memory_gib"), std::string::npos);
  EXPECT_NE(error_of("kind = \"cpu\"\n[x]\ny=1\n" + base).find("unknown key 'x.y'"),
            std::string::npos);
}

TEST(PlanClusterSpec, ShippedClustersParse) {
  const std::string dir = test::env_or("ALEM_SOURCE_DIR", ".") + "/plan/clusters";
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".toml") continue;
    EXPECT_NO_THROW(load_cluster_spec(entry.path().string())) << entry.path();
    ++seen;
  }
  EXPECT_GE(seen, 3);
}

}  // namespace
}  // namespace alem::plan

namespace alem::plan {
namespace {

TEST(PlanResultsFile, RunsSurviveReopenAndOtherModelsAreRefused) {
  const std::string path = ::testing::TempDir() + "/alem-plan-results.h5";
  std::filesystem::remove(path);
  RunRecord a;
  a.key = "tp1-pp1-dp1-b8-c1";
  a.params = {{"tp", 1}, {"batch", 8}};
  a.values = {{"tokens_per_s", {12.5, "tokens/s"}}, {"ttft_p50", {0.25, "s"}}};
  a.replica_columns = {"replica", "requests"};
  a.replica_units = {"1", "requests"};
  a.replicas = {{0, 4}, {1, 4}};
  {
    ResultsFile f(path, {{"model", "m"}, {"model_digest", "abc"}, {"host", "h"}});
    EXPECT_FALSE(f.has(a.key));
    f.add(a);
    EXPECT_TRUE(f.has(a.key));
  }
  ResultsFile again(path, {{"model_digest", "abc"}});
  ASSERT_TRUE(again.has(a.key));
  const auto runs = again.runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].params, a.params);
  EXPECT_DOUBLE_EQ(runs[0].values.at("tokens_per_s").value, 12.5);
  EXPECT_EQ(runs[0].values.at("ttft_p50").units, "s");
  EXPECT_EQ(runs[0].replicas, a.replicas);
  EXPECT_EQ(runs[0].replica_columns, a.replica_columns);
  EXPECT_EQ(again.provenance().at("host"), "h");
  EXPECT_NE(runs_to_csv(runs).find("tokens_per_s [tokens/s]"), std::string::npos);
  try {
    ResultsFile other(path, {{"model_digest", "def"}});
    ADD_FAILURE() << "a file of another model was opened";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("another model"), std::string::npos) << e.message();
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace alem::plan

namespace alem::plan {
namespace {

ProviderClass flat_class(const char* name, int count, int max_active, double itl) {
  ProviderClass pc;
  pc.name = name;
  pc.count = count;
  pc.max_active = max_active;
  pc.ttft_s.assign(max_active, 0.1);
  pc.itl_s.assign(max_active, itl);
  return pc;
}

TEST(PlanNetworkSim, AccountsForEveryRequestAndFollowsTheLeaseRules) {
  SimulationConfig c;
  c.classes = {flat_class("worker", 20, 4, 0.01)};
  c.arrival_rate = 50;
  c.duration_s = 200;
  c.output_mean = 50;
  const SimulationResult a = simulate_network(c);
  EXPECT_EQ(a.submitted, a.completed + a.unfinished + a.lost);
  EXPECT_EQ(a.lost, 0);
  EXPECT_EQ(a.redelivered, 0);
  EXPECT_NEAR(a.submitted / c.duration_s, c.arrival_rate, c.arrival_rate * 0.1);
  const SimulationResult again = simulate_network(c);
  EXPECT_EQ(a.completed, again.completed);  // deterministic for a seed
  EXPECT_DOUBLE_EQ(a.latency_p95, again.latency_p95);
  c.mtbf_s = 20;  // providers fail often: their requests come back after the lease
  c.repair_s = 5;
  c.max_attempts = 1;
  const SimulationResult f = simulate_network(c);
  EXPECT_GT(f.failures, 0);
  EXPECT_GT(f.lost, 0);  // one attempt only: every request held by a failed provider is lost
  EXPECT_EQ(f.redelivered, 0);
  c.max_attempts = 12;
  const SimulationResult g = simulate_network(c);
  EXPECT_GT(g.redelivered, 0);
  EXPECT_EQ(g.submitted, g.completed + g.unfinished + g.lost);
}

TEST(PlanNetworkSim, RoutingPrefersTheProviderWithTheSmallerScore) {
  SimulationConfig c;
  c.classes = {flat_class("slow", 1, 50, 0.1), flat_class("fast", 1, 50, 0.01)};
  c.arrival_rate = 5;
  c.duration_s = 300;
  c.output_mean = 20;
  const SimulationResult r = simulate_network(c);
  EXPECT_GT(r.classes[1].requests, r.classes[0].requests);
}

}  // namespace
}  // namespace alem::plan
