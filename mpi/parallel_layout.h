// ParallelLayout: pure arithmetic mapping a world rank to its (dp, pp, tp) coordinates, with no
// MPI inside, so it is unit-tested directly. Ranks are ordered tp fastest, then pp, then dp:
//   world_rank = (dp_rank * pp_size + pp_rank) * tp_size + tp_rank
// so the ranks of one TP group are consecutive and land on one node when the launcher places
// consecutive ranks together (mpirun --map-by core, srun block distribution).
//
// Worked example: world 12 = dp 2 x pp 2 x tp 3
//   world rank :  0 1 2 | 3 4 5 | 6 7 8 | 9 10 11
//   dp rank    :  0 0 0   0 0 0   1 1 1   1  1  1
//   pp rank    :  0 0 0   1 1 1   0 0 0   1  1  1
//   tp rank    :  0 1 2   0 1 2   0 1 2   0  1  2
//   rank 7 is replica 1, stage 0, tp rank 1; its TP group is {6,7,8}, its PP group is {7,10},
//   its DP group is {1,7}. The replica leader (scheduler) of replica d is world rank d*pp*tp.
//
// Expert parallelism (ep) subdivides the tp group rather than adding ranks: the tp group's
// ranks form ep slices of tp/ep consecutive ranks, and slice i holds the i-th 1/ep of every
// MoE layer's experts (each expert split over its slice's tp/ep ranks). Attention stays
// tensor-parallel over all tp ranks. ep must divide tp; with tp 4 ep 2, tp ranks {0,1} hold
// experts [0, E/2) and {2,3} hold [E/2, E).
//
// Experts across replicas (tp = 1, ep > 1; the DeepSeek / SGLang "DP attention + EP" layout):
// each dp replica runs attention on its own requests, and consecutive groups of ep replicas
// share the experts of every MoE layer: replica d is member d % ep of the ep group of replicas
// [d - d % ep, d - d % ep + ep) and holds experts [(d % ep) * E/ep, (d % ep + 1) * E/ep). Tokens
// travel to their experts' replica and back by all_to_all on the ep group. Needs pp = 1 (stages
// would have to keep micro-batches in step across replicas) and ep dividing dp. With dp 4 ep 2:
// replicas {0,1} share one set of experts, {2,3} another.
#pragma once

#include <string>
#include <vector>

namespace alem {

struct ParallelCoords {
  int dp = 0;
  int pp = 0;
  int tp = 0;
  // Expert-parallel slice: inside the tp group tp / (tp_size / ep_size); across replicas
  // dp % ep_size (see experts_across_replicas). Derived.
  int ep = 0;
};

class ParallelLayout {
 public:
  ParallelLayout() = default;
  // Throws alem::Error if any size < 1, or when ep > 1 is neither a divisor of tp > 1 (experts
  // inside the tp group) nor, with tp = 1, pp = 1 and ep dividing dp, spread across replicas.
  ParallelLayout(int tp_size, int pp_size, int dp_size, int ep_size = 1);
  // The layout with the given tp and pp that fills world_size ranks (dp = world / (tp * pp)).
  // Throws alem::Error when world_size is not a multiple of tp * pp.
  static ParallelLayout for_world(int world_size, int tp_size, int pp_size, int ep_size = 1);

  int tp_size() const { return tp_; }
  int pp_size() const { return pp_; }
  int dp_size() const { return dp_; }
  int ep_size() const { return ep_; }
  int world_size() const { return tp_ * pp_ * dp_; }
  // True when the experts are spread over ep replicas rather than over the tp group (tp = 1,
  // ep > 1): the ep group then spans replicas, and its members run every MoE layer together.
  bool experts_across_replicas() const { return ep_ > 1 && tp_ == 1; }

  // Both throw alem::Error for a rank or coordinate outside the layout.
  ParallelCoords coords(int world_rank) const;
  int world_rank(const ParallelCoords& c) const;
  // World ranks of the groups that contain world_rank, in group-rank order (element i is the
  // member whose rank in that group is i). Throw alem::Error for a rank outside the layout.
  std::vector<int> tp_group(int world_rank) const;
  std::vector<int> pp_group(int world_rank) const;
  std::vector<int> dp_group(int world_rank) const;
  // The replicas that share world_rank's experts (experts_across_replicas): the ranks at the same
  // (pp, tp) of the ep replicas of its ep group, in ep-rank order. Otherwise {world_rank}: inside
  // the tp group, experts need no group of their own (the tp all-reduce combines them).
  std::vector<int> ep_group(int world_rank) const;
  int replica_leader(int dp_rank) const { return dp_rank * pp_ * tp_; }
  // "tp=3 pp=2 dp=1 (6 ranks)"; "tp=4 ep=2 pp=1 ..." when ep>1; "... dp=2 ep=2 (2 ranks)" when
  // the experts span replicas.
  std::string describe() const;

  bool operator==(const ParallelLayout&) const = default;

 private:
  int tp_ = 1, pp_ = 1, dp_ = 1, ep_ = 1;
};

// Contiguous layer ranges per pipeline stage. Balanced: the first (num_layers % pp) stages get
// one extra layer. A given split (sizes summing to num_layers) is checked and used as is.
// Every stage gets at least one layer. Throws alem::Error when num_layers < pp_size, or when a
// given split has the wrong length, a stage with fewer than one layer, or the wrong total.
//   split_layers(30, 4) -> {0,8} {8,8} {16,7} {23,7}
struct StageRange {
  int first_layer = 0;
  int num_layers = 0;
  int end_layer() const { return first_layer + num_layers; }  // one past the last layer
  bool operator==(const StageRange&) const = default;
};
std::vector<StageRange> split_layers(int num_layers, int pp_size,
                                     const std::vector<int>& given = {});
// The pipeline stage that holds `layer` in a split from split_layers (throws if none does).
int stage_of_layer(const std::vector<StageRange>& stages, int layer);

}  // namespace alem
