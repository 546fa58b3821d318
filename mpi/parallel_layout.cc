// ParallelLayout and split_layers: the arithmetic that places every world rank at a (dp, pp, tp)
// coordinate and gives every pipeline stage its layers. Kept free of MPI so it is unit-tested
// exhaustively and used by `alem plan` on a laptop.
#include "mpi/parallel_layout.h"

#include "core/error.h"

namespace alem {

ParallelLayout::ParallelLayout(int tp_size, int pp_size, int dp_size, int ep_size)
    : tp_(tp_size), pp_(pp_size), dp_(dp_size), ep_(ep_size) {
  ALEM_CHECK(tp_size >= 1 && pp_size >= 1 && dp_size >= 1 && ep_size >= 1,
             "parallel sizes must be at least 1, got tp=" + std::to_string(tp_size) +
                 " pp=" + std::to_string(pp_size) + " dp=" + std::to_string(dp_size) +
                 " ep=" + std::to_string(ep_size));
  if (ep_size == 1) return;
  if (tp_size > 1) {
    ALEM_CHECK(tp_size % ep_size == 0,
               "expert parallel size ep=" + std::to_string(ep_size) +
                   " must divide the tensor parallel size tp=" + std::to_string(tp_size) +
                   ": with tp > 1 experts are spread over the ranks of the tp group, whose "
                   "attention stays tensor-parallel (supported: ep divides tp with any pp and dp, "
                   "or tp=1 with ep spanning dp replicas)");
    return;
  }
  ALEM_CHECK(pp_size == 1, "experts across replicas (tp=1, ep=" + std::to_string(ep_size) +
                               ") need pp=1, got pp=" + std::to_string(pp_size) +
                               ": pipeline stages would have to keep their micro-batches in step "
                               "across replicas (use ep inside the tp group: --tp T --ep E)");
  ALEM_CHECK(dp_size % ep_size == 0,
             "experts across replicas: ep=" + std::to_string(ep_size) +
                 " must divide the number of replicas dp=" + std::to_string(dp_size) +
                 " (each group of ep replicas shares one set of experts)");
}

ParallelLayout ParallelLayout::for_world(int world_size, int tp_size, int pp_size, int ep_size) {
  ALEM_CHECK(tp_size >= 1 && pp_size >= 1,
             "parallel sizes must be at least 1, got tp=" + std::to_string(tp_size) +
                 " pp=" + std::to_string(pp_size));
  ALEM_CHECK(world_size >= 1 && world_size % (tp_size * pp_size) == 0,
             std::to_string(world_size) + " ranks cannot be split into replicas of tp=" +
                 std::to_string(tp_size) + " x pp=" + std::to_string(pp_size) + " = " +
                 std::to_string(tp_size * pp_size) + " ranks");
  return ParallelLayout(tp_size, pp_size, world_size / (tp_size * pp_size), ep_size);
}

static void check_world_rank(const ParallelLayout& layout, int world_rank) {
  ALEM_CHECK(
      world_rank >= 0 && world_rank < layout.world_size(),
      "world rank " + std::to_string(world_rank) + " is outside the layout " + layout.describe());
}

ParallelCoords ParallelLayout::coords(int world_rank) const {
  check_world_rank(*this, world_rank);
  ParallelCoords c;
  c.tp = world_rank % tp_;
  c.pp = (world_rank / tp_) % pp_;
  c.dp = world_rank / (tp_ * pp_);
  c.ep = experts_across_replicas() ? c.dp % ep_ : c.tp / (tp_ / ep_);
  return c;
}

int ParallelLayout::world_rank(const ParallelCoords& c) const {
  ALEM_CHECK(c.tp >= 0 && c.tp < tp_ && c.pp >= 0 && c.pp < pp_ && c.dp >= 0 && c.dp < dp_,
             "coordinates dp=" + std::to_string(c.dp) + " pp=" + std::to_string(c.pp) +
                 " tp=" + std::to_string(c.tp) + " are outside the layout " + describe());
  return (c.dp * pp_ + c.pp) * tp_ + c.tp;
}

std::vector<int> ParallelLayout::tp_group(int world_rank) const {
  ParallelCoords c = coords(world_rank);
  std::vector<int> ranks;
  for (c.tp = 0; c.tp < tp_; ++c.tp) ranks.push_back(this->world_rank(c));
  return ranks;
}

std::vector<int> ParallelLayout::pp_group(int world_rank) const {
  ParallelCoords c = coords(world_rank);
  std::vector<int> ranks;
  for (c.pp = 0; c.pp < pp_; ++c.pp) ranks.push_back(this->world_rank(c));
  return ranks;
}

std::vector<int> ParallelLayout::dp_group(int world_rank) const {
  ParallelCoords c = coords(world_rank);
  std::vector<int> ranks;
  for (c.dp = 0; c.dp < dp_; ++c.dp) ranks.push_back(this->world_rank(c));
  return ranks;
}

std::vector<int> ParallelLayout::ep_group(int world_rank) const {
  ParallelCoords c = coords(world_rank);
  if (!experts_across_replicas()) return {world_rank};
  std::vector<int> ranks;
  const int first = c.dp - c.dp % ep_;
  for (c.dp = first; c.dp < first + ep_; ++c.dp) ranks.push_back(this->world_rank(c));
  return ranks;
}

std::string ParallelLayout::describe() const {
  const int n = world_size();
  const std::string ep = " ep=" + std::to_string(ep_);
  const bool inside_tp = ep_ > 1 && !experts_across_replicas();
  return "tp=" + std::to_string(tp_) + (inside_tp ? ep : "") + " pp=" + std::to_string(pp_) +
         " dp=" + std::to_string(dp_) + (experts_across_replicas() ? ep : "") + " (" +
         std::to_string(n) + (n == 1 ? " rank)" : " ranks)");
}

std::vector<StageRange> split_layers(int num_layers, int pp_size, const std::vector<int>& given) {
  ALEM_CHECK(pp_size >= 1, "pp size must be at least 1, got " + std::to_string(pp_size));
  ALEM_CHECK(num_layers >= pp_size, "cannot split " + std::to_string(num_layers) + " layers over " +
                                        std::to_string(pp_size) +
                                        " pipeline stages: every stage needs at least one layer");
  std::vector<int> sizes = given;
  if (sizes.empty()) {
    for (int stage = 0; stage < pp_size; ++stage)
      sizes.push_back(num_layers / pp_size + (stage < num_layers % pp_size ? 1 : 0));
  } else {
    ALEM_CHECK(static_cast<int>(sizes.size()) == pp_size,
               "the layer split lists " + std::to_string(sizes.size()) +
                   " stages but pp=" + std::to_string(pp_size));
    long long total = 0;
    for (size_t stage = 0; stage < sizes.size(); ++stage) {
      ALEM_CHECK(sizes[stage] >= 1, "the layer split gives stage " + std::to_string(stage) + " " +
                                        std::to_string(sizes[stage]) +
                                        " layers; every stage needs at least one");
      total += sizes[stage];
    }
    ALEM_CHECK(total == num_layers, "the layer split adds up to " + std::to_string(total) +
                                        " layers but the model has " + std::to_string(num_layers));
  }
  std::vector<StageRange> stages;
  int first = 0;
  for (int size : sizes) {
    stages.push_back(StageRange{first, size});
    first += size;
  }
  return stages;
}

int stage_of_layer(const std::vector<StageRange>& stages, int layer) {
  for (size_t stage = 0; stage < stages.size(); ++stage)
    if (layer >= stages[stage].first_layer && layer < stages[stage].end_layer())
      return static_cast<int>(stage);
  ALEM_FAIL("layer " + std::to_string(layer) + " is in no pipeline stage");
}

}  // namespace alem
