// ParallelLayout and split_layers: the worked example from the header, exhaustive round trips
// over many sizes (every rank lands in exactly one group of each dimension, in coordinate order),
// and the errors a user meets when the sizes do not fit.
#include <gtest/gtest.h>

#include <set>

#include "core/error.h"
#include "mpi/parallel_layout.h"

namespace alem {
namespace {

TEST(ParallelLayout, WorkedExampleFromHeader) {
  const ParallelLayout layout(3, 2, 2);  // tp 3, pp 2, dp 2
  EXPECT_EQ(layout.world_size(), 12);
  EXPECT_EQ(layout.describe(), "tp=3 pp=2 dp=2 (12 ranks)");
  const int dp[] = {0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1};
  const int pp[] = {0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1};
  const int tp[] = {0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2};
  for (int rank = 0; rank < 12; ++rank) {
    const ParallelCoords c = layout.coords(rank);
    EXPECT_EQ(c.dp, dp[rank]) << "rank " << rank;
    EXPECT_EQ(c.pp, pp[rank]) << "rank " << rank;
    EXPECT_EQ(c.tp, tp[rank]) << "rank " << rank;
  }
  EXPECT_EQ(layout.tp_group(7), (std::vector<int>{6, 7, 8}));
  EXPECT_EQ(layout.pp_group(7), (std::vector<int>{7, 10}));
  EXPECT_EQ(layout.dp_group(7), (std::vector<int>{1, 7}));
  EXPECT_EQ(layout.replica_leader(0), 0);
  EXPECT_EQ(layout.replica_leader(1), 6);
  EXPECT_EQ(layout.world_rank(ParallelCoords{1, 0, 1}), 7);
}

TEST(ParallelLayout, DefaultIsOneRank) {
  const ParallelLayout layout;
  EXPECT_EQ(layout.world_size(), 1);
  EXPECT_EQ(layout.describe(), "tp=1 pp=1 dp=1 (1 rank)");
  EXPECT_EQ(layout.tp_group(0), std::vector<int>{0});
  EXPECT_EQ(layout, ParallelLayout(1, 1, 1));
}

// Every rank of every layout up to 64 ranks: coords and world_rank are inverse, groups have the
// right sizes, hold the rank at its own coordinate, vary only their own coordinate, and the
// groups of one dimension partition the world.
TEST(ParallelLayout, ExhaustiveRoundTrips) {
  int layouts = 0;
  for (int tp = 1; tp <= 8; ++tp) {
    for (int pp = 1; pp <= 8; ++pp) {
      for (int dp = 1; dp <= 8; ++dp) {
        const ParallelLayout layout(tp, pp, dp);
        if (layout.world_size() > 64) continue;
        ++layouts;
        std::set<std::vector<int>> tp_groups, pp_groups, dp_groups;
        for (int rank = 0; rank < layout.world_size(); ++rank) {
          const ParallelCoords c = layout.coords(rank);
          ASSERT_EQ(layout.world_rank(c), rank) << layout.describe();
          ASSERT_TRUE(c.tp >= 0 && c.tp < tp && c.pp >= 0 && c.pp < pp && c.dp >= 0 && c.dp < dp);
          ASSERT_EQ(rank, (c.dp * pp + c.pp) * tp + c.tp);
          const std::vector<int> tg = layout.tp_group(rank), pg = layout.pp_group(rank),
                                 dg = layout.dp_group(rank);
          ASSERT_EQ(static_cast<int>(tg.size()), tp);
          ASSERT_EQ(static_cast<int>(pg.size()), pp);
          ASSERT_EQ(static_cast<int>(dg.size()), dp);
          ASSERT_EQ(tg[static_cast<size_t>(c.tp)], rank);
          ASSERT_EQ(pg[static_cast<size_t>(c.pp)], rank);
          ASSERT_EQ(dg[static_cast<size_t>(c.dp)], rank);
          for (size_t i = 0; i < tg.size(); ++i) {
            const ParallelCoords m = layout.coords(tg[i]);
            ASSERT_TRUE(m.tp == static_cast<int>(i) && m.pp == c.pp && m.dp == c.dp);
            if (i > 0) {
              ASSERT_EQ(tg[i], tg[i - 1] + 1) << "TP ranks must be consecutive";
            }
          }
          for (size_t i = 0; i < pg.size(); ++i) {
            const ParallelCoords m = layout.coords(pg[i]);
            ASSERT_TRUE(m.pp == static_cast<int>(i) && m.tp == c.tp && m.dp == c.dp);
          }
          for (size_t i = 0; i < dg.size(); ++i) {
            const ParallelCoords m = layout.coords(dg[i]);
            ASSERT_TRUE(m.dp == static_cast<int>(i) && m.tp == c.tp && m.pp == c.pp);
          }
          tp_groups.insert(tg);
          pp_groups.insert(pg);
          dp_groups.insert(dg);
          if (c.pp == 0 && c.tp == 0) {
            ASSERT_EQ(layout.replica_leader(c.dp), rank);
          }
        }
        EXPECT_EQ(static_cast<int>(tp_groups.size()), pp * dp);
        EXPECT_EQ(static_cast<int>(pp_groups.size()), tp * dp);
        EXPECT_EQ(static_cast<int>(dp_groups.size()), tp * pp);
      }
    }
  }
  EXPECT_GT(layouts, 100);
}

TEST(ParallelLayout, ForWorldDerivesDataParallelSize) {
  EXPECT_EQ(ParallelLayout::for_world(12, 3, 2), ParallelLayout(3, 2, 2));
  EXPECT_EQ(ParallelLayout::for_world(4, 4, 1), ParallelLayout(4, 1, 1));
  EXPECT_THROW(ParallelLayout::for_world(10, 4, 1), Error);
  EXPECT_THROW(ParallelLayout::for_world(0, 1, 1), Error);
  EXPECT_THROW(ParallelLayout::for_world(4, 0, 1), Error);
}

TEST(ParallelLayout, RejectsBadSizesRanksAndCoordinates) {
  EXPECT_THROW(ParallelLayout(0, 1, 1), Error);
  EXPECT_THROW(ParallelLayout(1, -1, 1), Error);
  EXPECT_THROW(ParallelLayout(1, 1, 0), Error);
  const ParallelLayout layout(2, 2, 1);
  EXPECT_THROW(layout.coords(-1), Error);
  EXPECT_THROW(layout.coords(4), Error);
  EXPECT_THROW(layout.tp_group(4), Error);
  EXPECT_THROW(layout.pp_group(-1), Error);
  EXPECT_THROW(layout.dp_group(9), Error);
  EXPECT_THROW(layout.world_rank(ParallelCoords{0, 0, 2}), Error);
  EXPECT_THROW(layout.world_rank(ParallelCoords{1, 0, 0}), Error);
  EXPECT_THROW(layout.world_rank(ParallelCoords{0, -1, 0}), Error);
  try {
    layout.coords(4);
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("tp=2 pp=2 dp=1 (4 ranks)"), std::string::npos) << e.message();
  }
}

// Experts across replicas (tp 1, ep > 1): consecutive groups of ep replicas share the experts;
// ep inside the tp group keeps its single-member ep group.
TEST(ParallelLayout, ExpertsAcrossReplicas) {
  const ParallelLayout layout(1, 1, 4, 2);
  EXPECT_TRUE(layout.experts_across_replicas());
  EXPECT_EQ(layout.world_size(), 4);
  EXPECT_EQ(layout.ep_group(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(layout.ep_group(1), (std::vector<int>{0, 1}));
  EXPECT_EQ(layout.ep_group(2), (std::vector<int>{2, 3}));
  EXPECT_EQ(layout.ep_group(3), (std::vector<int>{2, 3}));
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_EQ(layout.coords(rank).ep, rank % 2);
    EXPECT_EQ(layout.coords(rank).dp, rank);
  }
  EXPECT_EQ(layout.describe(), "tp=1 pp=1 dp=4 ep=2 (4 ranks)");
  const ParallelLayout all(1, 1, 4, 4);
  EXPECT_EQ(all.ep_group(2), (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(all.coords(3).ep, 3);

  const ParallelLayout inside(4, 1, 2, 2);  // ep inside the tp group: no ep group to speak of
  EXPECT_FALSE(inside.experts_across_replicas());
  EXPECT_EQ(inside.ep_group(5), std::vector<int>{5});
  EXPECT_EQ(inside.coords(6).ep, 1);  // tp rank 2 of 4: second slice
  EXPECT_EQ(ParallelLayout(1, 1, 3).ep_group(2), std::vector<int>{2});

  // Refused, each with its reason.
  auto refusal = [](int tp, int pp, int dp, int ep) {
    try {
      ParallelLayout l(tp, pp, dp, ep);
    } catch (const Error& e) {
      return e.message();
    }
    return std::string("accepted");
  };
  EXPECT_NE(refusal(1, 2, 2, 2).find("need pp=1"), std::string::npos) << refusal(1, 2, 2, 2);
  EXPECT_NE(refusal(1, 1, 3, 2).find("must divide the number of replicas dp=3"), std::string::npos);
  EXPECT_NE(refusal(2, 1, 2, 4).find("must divide the tensor parallel size tp=2"),
            std::string::npos);
  EXPECT_NE(refusal(1, 1, 1, 2).find("dp=1"), std::string::npos);
}

TEST(SplitLayers, BalancedSplitGivesExtraLayersToFirstStages) {
  EXPECT_EQ(split_layers(30, 4), (std::vector<StageRange>{{0, 8}, {8, 8}, {16, 7}, {23, 7}}));
  EXPECT_EQ(split_layers(32, 4), (std::vector<StageRange>{{0, 8}, {8, 8}, {16, 8}, {24, 8}}));
  EXPECT_EQ(split_layers(5, 1), (std::vector<StageRange>{{0, 5}}));
  EXPECT_EQ(split_layers(3, 3), (std::vector<StageRange>{{0, 1}, {1, 1}, {2, 1}}));
}

TEST(SplitLayers, EveryLayerInExactlyOneStageForManySizes) {
  for (int layers = 1; layers <= 80; ++layers) {
    for (int pp = 1; pp <= layers && pp <= 16; ++pp) {
      const std::vector<StageRange> stages = split_layers(layers, pp);
      ASSERT_EQ(static_cast<int>(stages.size()), pp);
      int next = 0, smallest = layers, largest = 0;
      for (const StageRange& s : stages) {
        ASSERT_EQ(s.first_layer, next);
        ASSERT_GE(s.num_layers, 1);
        next = s.end_layer();
        smallest = std::min(smallest, s.num_layers);
        largest = std::max(largest, s.num_layers);
      }
      ASSERT_EQ(next, layers);
      ASSERT_LE(largest - smallest, 1) << layers << " layers over " << pp;
      for (int layer = 0; layer < layers; ++layer) {
        const StageRange& s = stages[static_cast<size_t>(stage_of_layer(stages, layer))];
        ASSERT_TRUE(layer >= s.first_layer && layer < s.end_layer());
      }
    }
  }
}

TEST(SplitLayers, GivenSplitIsUsedAsIs) {
  EXPECT_EQ(split_layers(30, 3, {12, 10, 8}),
            (std::vector<StageRange>{{0, 12}, {12, 10}, {22, 8}}));
}

TEST(SplitLayers, RejectsImpossibleSplits) {
  EXPECT_THROW(split_layers(3, 4), Error);  // a stage with no layer
  EXPECT_THROW(split_layers(0, 1), Error);
  EXPECT_THROW(split_layers(8, 0), Error);
  EXPECT_THROW(split_layers(30, 3, {10, 10}), Error);      // wrong number of stages
  EXPECT_THROW(split_layers(30, 3, {10, 10, 11}), Error);  // wrong total
  EXPECT_THROW(split_layers(30, 3, {15, 15, 0}), Error);   // empty stage
  EXPECT_THROW(split_layers(30, 3, {20, 11, -1}), Error);
  EXPECT_THROW(stage_of_layer(split_layers(4, 2), 4), Error);
  EXPECT_THROW(stage_of_layer(split_layers(4, 2), -1), Error);
}

}  // namespace
}  // namespace alem
