// ranks: 1 2 4 8
// Qwen3-MoE and Mixtral with expert parallelism under MPI against Hugging Face transformers'
// reference (tests/moe_golden.h): every rank converts its own copy of the tiny MoE models,
// loads its shard for the job's layout (experts spread over ep slices of the tp group, attention
// tensor-parallel, layers over pp stages), and checks teacher-forced greedy tokens and every
// step's top-20 logits on the last stage; verdicts are all-reduced so every rank agrees. Each
// rank also reports the weight bytes it read against a one-rank load.
// Layouts by world size: 1: tp1; 2: tp2 ep1, tp2 ep2; 4: tp4 ep4, tp4 ep2, tp2 ep2 pp2;
// 8: tp4 ep4 pp2, tp2 ep2 pp2 dp2.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "engine/transformer.h"
#include "kernels/backend.h"
#include "moe_golden.h"
#include "mpi/mpi_context.h"
#include "mpi_test.h"

namespace alem {
namespace {

struct Layout {
  int tp, ep, pp, dp;
};

bool check_layout(const std::string& model_name, const Layout& l) {
  const test::json golden = test::load_golden(model_name);
  const std::string path = test::tiny_store(model_name, DType::BF16);
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // compared with transformers: exact attention inputs
  options.max_model_len = 128;
  uint64_t whole_bytes = 0;
  {
    ModelStoreReader store(path);
    ParallelContext solo = make_solo_context();
    ShardedTransformer whole(store, solo, *backend, options);
    whole_bytes = whole.bytes_loaded();
  }
  ParallelContext ctx = make_mpi_context(ParallelLayout(l.tp, l.pp, l.dp, l.ep));
  ModelStoreReader store(path);
  ShardedTransformer model(store, ctx, *backend, options);
  std::vector<int> matched;
  const std::string what = model_name + " " + ctx.layout.describe();
  bool ok = test::check_golden(model, ctx, golden, matched) == 0;
  EXPECT_TRUE(ok) << what << " rank " << ctx.world_rank;
  if (model.shard().has_lm_head()) {
    for (int m : matched) {
      EXPECT_GE(m, 24) << what;
      ok = ok && m >= 24;
    }
  }
  // Each rank reads its experts only: about 1/(tp*pp) of the weights, plus the replicated parts.
  const double share = static_cast<double>(model.bytes_loaded()) / whole_bytes;
  EXPECT_LT(share, 1.0 / (l.tp * l.pp) + 0.35) << what;
  ok = ok && share < 1.0 / (l.tp * l.pp) + 0.35;
  std::vector<double> shares(ctx.world->size());
  ctx.world->all_gather(&share, sizeof(double), shares.data());
  if (ctx.world_rank == 0) {
    std::printf("%s: tokens and logits checked; weight bytes read per rank vs one rank:",
                what.c_str());
    for (double s : shares) std::printf(" %.2f", s);
    std::printf("\n");
  }
  return ok;
}

TEST(MoeExpertParallel, MatchesTransformers) {
  const std::vector<Layout> all = {{1, 1, 1, 1}, {2, 1, 1, 1}, {2, 2, 1, 1}, {4, 4, 1, 1},
                                   {4, 2, 1, 1}, {2, 2, 2, 1}, {4, 4, 2, 1}, {2, 2, 2, 2}};
  bool ok = true;
  int ran = 0;
  for (const Layout& l : all) {
    if (l.tp * l.pp * l.dp != test::world_size()) continue;
    for (const char* model : test::kModels) {
      ok = check_layout(model, l) && ok;
      ++ran;
    }
    ok = check_layout(test::kMixtralModel, l) && ok;
  }
  for (const char* model : test::kModels)
    std::filesystem::remove(test::store_file(model, DType::BF16));
  std::filesystem::remove(test::store_file(test::kMixtralModel, DType::BF16));
  if (ran == 0) GTEST_SKIP() << "no layout for " << test::world_size() << " ranks";
  ASSERT_TRUE(test::all_ranks_agree(ok));
}

}  // namespace
}  // namespace alem
