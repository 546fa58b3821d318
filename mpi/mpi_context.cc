// make_mpi_context: MPI start-up, the world-size check, the split of MPI_COMM_WORLD into the
// world/tp/pp/dp communicators by layout coordinates, and the discovery of which ranks share a
// node (MPI_Comm_split_type with MPI_COMM_TYPE_SHARED) and of every rank's hostname.
#include "mpi/mpi_context.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/error.h"
#include "mpi/mpi_internal.h"
#include "mpi/secure_process_group.h"

namespace alem {

const char* to_string(MpiThreadLevel level) {
  switch (level) {
    case MpiThreadLevel::Single:
      return "MPI_THREAD_SINGLE";
    case MpiThreadLevel::Funneled:
      return "MPI_THREAD_FUNNELED";
    case MpiThreadLevel::Serialized:
      return "MPI_THREAD_SERIALIZED";
    case MpiThreadLevel::Multiple:
      return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

static MpiThreadLevel from_mpi_level(int provided) {
  if (provided >= MPI_THREAD_MULTIPLE) return MpiThreadLevel::Multiple;
  if (provided >= MPI_THREAD_SERIALIZED) return MpiThreadLevel::Serialized;
  if (provided >= MPI_THREAD_FUNNELED) return MpiThreadLevel::Funneled;
  return MpiThreadLevel::Single;
}

MpiThreadLevel init_mpi(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  ALEM_CHECK(!finalized, "MPI was already finalized in this process; it cannot start again");
  int provided = MPI_THREAD_SINGLE;
  if (initialized) {
    MPI_Query_thread(&provided);
  } else {
    const int code = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    ALEM_CHECK(code == MPI_SUCCESS, "MPI_Init_thread failed: " + mpi_error_string(code));
  }
  const MpiThreadLevel level = from_mpi_level(provided);
  ALEM_CHECK(level >= MpiThreadLevel::Funneled, std::string("MPI provides only ") +
                                                    to_string(level) +
                                                    "; alem needs MPI_THREAD_FUNNELED or better");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  process_identity().world_rank = rank;
  return level;
}

MpiThreadLevel mpi_thread_level() {
  int provided = MPI_THREAD_SINGLE;
  check_mpi(MPI_Query_thread(&provided), "MPI_Query_thread");
  return from_mpi_level(provided);
}

int mpi_world_rank() {
  int rank = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  return rank;
}

int mpi_world_size() {
  int size = 0;
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  return size;
}

void finalize_mpi() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Finalize();
}

namespace {

// Hostname and node of every world rank, gathered once per context.
struct WorldPlacement {
  std::vector<std::string> hosts;
  std::vector<int> nodes;
};

WorldPlacement discover_placement(MPI_Comm world, int world_rank, int world_size) {
  WorldPlacement placement;
  // Ranks that can share memory are on one node; name each node by its lowest world rank.
  MPI_Comm node_comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, world_rank, MPI_INFO_NULL, &node_comm),
            "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
  int node_leader = world_rank;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &node_leader, 1, MPI_INT, MPI_MIN, node_comm),
            "MPI_Allreduce (node leader)");
  MPI_Comm_free(&node_comm);
  std::vector<int> leaders(static_cast<size_t>(world_size));
  check_mpi(MPI_Allgather(&node_leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, world),
            "MPI_Allgather (node leaders)");
  std::map<int, int> node_of_leader;
  for (int leader : leaders)
    node_of_leader.emplace(leader, static_cast<int>(node_of_leader.size()));
  for (int leader : leaders) placement.nodes.push_back(node_of_leader[leader]);

  constexpr int kHostBytes = 256;
  char mine[kHostBytes] = {0};
  std::strncpy(mine, process_identity().host.c_str(), kHostBytes - 1);
  std::vector<char> all(static_cast<size_t>(world_size) * kHostBytes);
  check_mpi(MPI_Allgather(mine, kHostBytes, MPI_CHAR, all.data(), kHostBytes, MPI_CHAR, world),
            "MPI_Allgather (hostnames)");
  for (int r = 0; r < world_size; ++r)
    placement.hosts.emplace_back(&all[static_cast<size_t>(r) * kHostBytes],
                                 strnlen(&all[static_cast<size_t>(r) * kHostBytes], kHostBytes));
  return placement;
}

GroupMembers members_of(const std::vector<int>& world_ranks, const WorldPlacement& placement) {
  GroupMembers members;
  members.world_ranks = world_ranks;
  for (int r : world_ranks) {
    members.hosts.push_back(placement.hosts[static_cast<size_t>(r)]);
    members.nodes.push_back(placement.nodes[static_cast<size_t>(r)]);
  }
  return members;
}

// Splits `world` so that ranks with equal `color` form one communicator, ordered by `key`.
std::unique_ptr<MpiProcessGroup> split_group(const char* name, MPI_Comm world, int color, int key,
                                             GroupMembers members, size_t max_message_bytes) {
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(world, color, key, &comm), "MPI_Comm_split");
  auto group = adopt_mpi_communicator(name, comm, std::move(members), max_message_bytes);
  ALEM_CHECK(group->rank() == key, std::string("the ") + name + " communicator put this rank at " +
                                       std::to_string(group->rank()) + " instead of " +
                                       std::to_string(key));
  return group;
}

void warn_if_tp_spans_nodes(const ParallelLayout& layout, const WorldPlacement& placement) {
  std::string spanning;
  int count = 0;
  for (int leader = 0; leader < layout.world_size(); leader += layout.tp_size()) {
    GroupMembers tp = members_of(layout.tp_group(leader), placement);
    if (!tp.spans_nodes()) continue;
    if (++count <= 4) {
      spanning += "\n  tp group " + tp.describe() + " on";
      for (const std::string& host : tp.hosts) spanning += " " + host;
    }
  }
  if (count == 0) return;
  if (count > 4) spanning += "\n  ... and " + std::to_string(count - 4) + " more";
  std::fprintf(stderr,
               "alem: warning: %d tensor-parallel group(s) of %s span nodes, so every layer's "
               "all-reduce crosses the network:%s\n  Place consecutive ranks on one node "
               "(mpirun --map-by core, srun --distribution=block) with tp <= ranks per node.\n",
               count, layout.describe().c_str(), spanning.c_str());
  std::fflush(stderr);
}

}  // namespace

ParallelContext make_mpi_context(const ParallelLayout& layout, const MpiContextOptions& options) {
  init_mpi(options.argc, options.argv);
  int world_rank = 0, world_size = 0;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &world_size), "MPI_Comm_size");
  ALEM_CHECK(world_size == layout.world_size(),
             "the layout " + layout.describe() + " needs " + std::to_string(layout.world_size()) +
                 " ranks but this job has " + std::to_string(world_size) +
                 ": launch it with `mpirun -np " + std::to_string(layout.world_size()) +
                 "` (or `srun -n " + std::to_string(layout.world_size()) +
                 "`), or change --tp/--pp/--dp");

  MPI_Comm world = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &world), "MPI_Comm_dup(MPI_COMM_WORLD)");
  check_mpi(MPI_Comm_set_errhandler(world, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  const WorldPlacement placement = discover_placement(world, world_rank, world_size);

  ParallelContext ctx;
  ctx.layout = layout;
  ctx.world_rank = world_rank;
  ctx.coords = layout.coords(world_rank);
  const ParallelCoords& c = ctx.coords;
  std::vector<int> all_ranks(static_cast<size_t>(world_size));
  for (int r = 0; r < world_size; ++r) all_ranks[static_cast<size_t>(r)] = r;
  const size_t chunk = options.max_message_bytes;
  ctx.world = adopt_mpi_communicator("world", world, members_of(all_ranks, placement), chunk);
  // Colors number the groups of a dimension; keys order the members by their coordinate.
  ctx.tp = split_group("tp", world, c.dp * layout.pp_size() + c.pp, c.tp,
                       members_of(layout.tp_group(world_rank), placement), chunk);
  ctx.pp = split_group("pp", world, c.dp * layout.tp_size() + c.tp, c.pp,
                       members_of(layout.pp_group(world_rank), placement), chunk);
  ctx.dp = split_group("dp", world, c.pp * layout.tp_size() + c.tp, c.dp,
                       members_of(layout.dp_group(world_rank), placement), chunk);
  // Ranks sharing experts across replicas (one member each unless the experts span replicas):
  // the color is the first member's world rank, the key the member's place in the group.
  const std::vector<int> ep_ranks = layout.ep_group(world_rank);
  const int ep_key =
      static_cast<int>(std::find(ep_ranks.begin(), ep_ranks.end(), world_rank) - ep_ranks.begin());
  ctx.ep =
      split_group("ep", world, ep_ranks.front(), ep_key, members_of(ep_ranks, placement), chunk);
  if (options.warn_when_tp_spans_nodes && world_rank == 0)
    warn_if_tp_spans_nodes(layout, placement);
  return ctx;
}

NodePlacement node_placement(const ParallelContext& ctx) {
  NodePlacement placement;
  const ProcessGroup* group = ctx.world.get();
  // The encrypted channel wraps the MPI group (mpi/secure_process_group.h): look through it.
  if (const auto* secure = dynamic_cast<const SecureProcessGroup*>(group)) group = &secure->inner();
  const auto* world = dynamic_cast<const MpiProcessGroup*>(group);
  if (!world) {
    placement.hosts = {process_identity().host};
    placement.nodes = {0};
    return placement;
  }
  const GroupMembers& members = world->members();
  placement.hosts = members.hosts;
  placement.nodes = members.nodes;
  placement.num_nodes = 1 + *std::max_element(members.nodes.begin(), members.nodes.end());
  placement.node = members.nodes[static_cast<size_t>(ctx.world_rank)];
  placement.local_rank = 0;
  placement.local_size = 0;
  for (size_t r = 0; r < members.nodes.size(); ++r) {
    if (members.nodes[r] != placement.node) continue;
    if (static_cast<int>(r) < ctx.world_rank) ++placement.local_rank;
    ++placement.local_size;
  }
  return placement;
}

std::vector<std::string> hosts(const ParallelContext& ctx) {
  return node_placement(ctx).hosts;
}

std::string describe_placement(const ParallelContext& ctx) {
  const NodePlacement placement = node_placement(ctx);
  std::string text;
  for (int node = 0; node < placement.num_nodes; ++node) {
    std::string ranks, host;
    for (size_t r = 0; r < placement.nodes.size(); ++r) {
      if (placement.nodes[r] != node) continue;
      if (host.empty()) host = placement.hosts[r];
      if (!ranks.empty()) ranks += ",";
      ranks += std::to_string(r);
    }
    text += "node " + std::to_string(node) + " " + host + ": ranks " + ranks + "\n";
  }
  return text;
}

}  // namespace alem
