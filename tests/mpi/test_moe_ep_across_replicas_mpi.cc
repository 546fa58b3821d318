// ranks: 2 4
// Experts across dp replicas under mpirun (the DeepSeek / SGLang "DP attention + EP" layout):
// each rank is one replica (tp 1) holding 1/ep of every MoE layer's experts, and tokens reach
// their experts by all_to_all on the ep group (MPI). Layouts: 2 ranks: dp 2 ep 2 (Qwen3-MoE a
// and b, Mixtral); 4 ranks: dp 4 ep 4 (the three) and dp 4 ep 2 (Qwen3-MoE a). Each rank checks
//   - teacher-forced tokens and every step's top-20 logits against Hugging Face transformers'
//     reference (tests/moe_golden.h), the same prompts on every replica;
//   - its own request (a different prompt per replica; odd replicas stop after 5 tokens and sit
//     idle while the others decode, serving their expert rows) against transformers' greedy
//     tokens and the same request on a one-rank model it loads itself;
//   - the same through the encrypted channel (every rank its own node, so every row and result
//     between replicas is sealed).
// Verdicts are all-reduced so every rank agrees.
#include <gtest/gtest.h>

#include <cstdio>

#include "engine/transformer.h"
#include "kernels/backend.h"
#include "moe_golden.h"
#include "moe_replica_requests.h"
#include "mpi/mpi_context.h"
#include "mpi/secure_process_group.h"
#include "mpi_test.h"

namespace alem {
namespace {

using test::world_size;

std::vector<ParallelLayout> layouts() {
  const int n = world_size();
  if (n == 2) return {ParallelLayout(1, 1, 2, 2)};
  if (n == 4) return {ParallelLayout(1, 1, 4, 2), ParallelLayout(1, 1, 4, 4)};
  return {};
}

EngineOptions engine_options() {
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 128;
  return options;
}

// Pairwise keys made up for the test (the real ones come from attested key agreement).
std::shared_ptr<SecureChannelKeys> test_keys(int me, int n) {
  auto keys = std::make_shared<SecureChannelKeys>(me);
  for (int peer = 0; peer < n; ++peer) {
    if (peer == me) continue;
    ChannelKey key{};
    for (size_t i = 0; i < key.size(); ++i)
      key[i] = static_cast<uint8_t>(std::min(me, peer) * 13 + std::max(me, peer) * 5 + i);
    keys->set_pair_key(peer, key);
  }
  return keys;
}

bool check_layout(const std::string& name, const ParallelLayout& layout, bool encrypted) {
  const test::json golden = test::load_golden(name);
  const std::string path = test::tiny_store(name, DType::BF16);
  auto backend = make_backend("cpu");
  const EngineOptions options = engine_options();
  ParallelContext ctx = make_mpi_context(layout);
  const test::ReplicaRequest request = test::replica_request(golden, ctx.coords.dp);
  std::vector<int32_t> one_rank;
  {
    ModelStoreReader store(path);
    ParallelContext solo = make_solo_context();
    ShardedTransformer whole(store, solo, *backend, options);
    one_rank = test::greedy_tokens(whole, solo, request);
  }
  SecureProcessGroup* secure = nullptr;
  if (encrypted) {
    SecureGroupOptions secure_options;
    secure_options.treat_every_rank_as_own_node = true;
    secure_parallel_context(ctx, test_keys(ctx.world_rank, world_size()), secure_options);
    secure = dynamic_cast<SecureProcessGroup*>(ctx.ep.get());
    EXPECT_NE(secure, nullptr) << "the ep group is not encrypted";
  }
  const std::string what = name + " " + layout.describe() + (encrypted ? " encrypted" : "") +
                           " rank " + std::to_string(ctx.world_rank);
  ModelStoreReader store(path);
  ShardedTransformer model(store, ctx, *backend, options);
  bool ok = model.shard().num_local_experts == store.config().num_experts / layout.ep_size() &&
            model.shard().expert_begin == ctx.coords.ep * model.shard().num_local_experts;
  EXPECT_TRUE(ok) << what << ": " << model.shard().describe();

  std::vector<int> matched;
  ok = test::check_golden(model, ctx, golden, matched) == 0 && ok;
  for (int m : matched) {
    EXPECT_GE(m, 24) << what;
    ok = ok && m >= 24;
  }
  const std::vector<int32_t> got = test::greedy_tokens(model, ctx, request);
  ok = test::compare_replica_tokens(what, request, got, one_rank) == 0 && ok;
  const ExpertDispatchStats& d = model.expert_dispatch();
  EXPECT_GT(d.rows_sent, 0u) << what;
  ok = ok && d.rows_sent > 0;
  if (secure) {
    EXPECT_GT(secure->messages_encrypted(), 0u) << what;
    ok = ok && secure->messages_encrypted() > 0;
  }
  // Every replica made the same MoE calls (lockstep), the idle ones included.
  float calls[2] = {static_cast<float>(d.layer_calls), -static_cast<float>(d.layer_calls)};
  ctx.ep->all_reduce(calls, 2, ReduceOp::Max);  // the most calls, and minus the fewest
  EXPECT_EQ(calls[0], -calls[1]) << what << ": members made different numbers of MoE calls";
  ok = ok && calls[0] == -calls[1];
  std::vector<double> sent(static_cast<size_t>(world_size()));
  const double mine = static_cast<double>(d.bytes_sent);
  ctx.world->all_gather(&mine, sizeof(double), sent.data());
  if (ctx.world_rank == 0) {
    std::printf("%s: bytes dispatched per rank (rows out + results back):", what.c_str());
    for (double s : sent) std::printf(" %.0f", s);
    std::printf("\n");
  }
  return ok;
}

TEST(MoeExpertsAcrossReplicas, MatchTransformersAndOneRank) {
  bool ok = true;
  int ran = 0;
  for (const ParallelLayout& layout : layouts()) {
    for (const char* name : {"tiny-qwen3-moe-a", "tiny-qwen3-moe-b", "tiny-mixtral"}) {
      // At 4 ranks, ep 2 (two pairs of replicas) with one model; ep 4 with every model.
      if (world_size() == 4 && layout.ep_size() == 2 && name != std::string("tiny-qwen3-moe-a"))
        continue;
      ok = check_layout(name, layout, false) && ok;
      ++ran;
    }
  }
  if (ran == 0) GTEST_SKIP() << "no layout for " << world_size() << " ranks";
  ASSERT_TRUE(test::all_ranks_agree(ok));
}

TEST(MoeExpertsAcrossReplicas, ThroughTheEncryptedChannel) {
  const std::vector<ParallelLayout> all = layouts();
  if (all.empty()) GTEST_SKIP() << "no layout for " << world_size() << " ranks";
  const bool ok = check_layout("tiny-qwen3-moe-a", all.front(), true);
  ASSERT_TRUE(test::all_ranks_agree(ok));
}

}  // namespace
}  // namespace alem
