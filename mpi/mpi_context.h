// The multi-rank ParallelContext: starts MPI, checks that the job has as many ranks as the layout
// needs, and splits MPI_COMM_WORLD into this rank's world, tp, pp, dp and ep process groups. It
// also learns where the ranks run (hostnames, which ranks share a node) for `alem status`, for
// picking a GPU per rank, and to warn when a TP group spans nodes.
//
// This header does not include mpi.h; model code may include it.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "mpi/parallel_context.h"

namespace alem {

enum class MpiThreadLevel { Single, Funneled, Serialized, Multiple };
const char* to_string(MpiThreadLevel level);  // "MPI_THREAD_MULTIPLE"

// Starts MPI unless it already runs, asking for MPI_THREAD_MULTIPLE (the failure watchdog calls
// MPI_Abort from its own thread). Returns the level MPI provides; throws alem::Error below
// MPI_THREAD_FUNNELED. argc/argv may be null.
MpiThreadLevel init_mpi(int* argc = nullptr, char*** argv = nullptr);
// The thread level of the running MPI, and this process's place in MPI_COMM_WORLD (init_mpi
// must have run).
MpiThreadLevel mpi_thread_level();
int mpi_world_rank();
int mpi_world_size();
// MPI_Finalize, when MPI runs and is not finalized yet. Destroy the contexts first.
void finalize_mpi();

struct MpiContextOptions {
  int* argc = nullptr;  // handed to MPI_Init_thread when this call starts MPI
  char*** argv = nullptr;
  // Largest piece one MPI call carries (chunks of longer messages); at most 2 GiB - 1.
  size_t max_message_bytes = size_t{1} << 30;
  // Rank 0 prints one warning to stderr when a TP group's ranks are on different nodes.
  bool warn_when_tp_spans_nodes = true;
};

// Collective over MPI_COMM_WORLD: every rank calls it with the same layout. Starts MPI when
// needed, throws alem::Error naming both numbers when the world size differs from
// layout.world_size(), sets process_identity().world_rank, and returns groups that own their
// own communicators (so traffic on them never mixes with other users of MPI_COMM_WORLD). May be
// called again (say, with another layout); each call makes new communicators.
ParallelContext make_mpi_context(const ParallelLayout& layout,
                                 const MpiContextOptions& options = {});

// Where the ranks run. For a context from make_solo_context: one rank on this host.
struct NodePlacement {
  std::vector<std::string> hosts;  // hostname of every world rank
  std::vector<int> nodes;          // node index of every world rank (0.., by first rank)
  int num_nodes = 1;
  int node = 0;        // this rank's node index
  int local_rank = 0;  // this rank's index among the ranks of its node (choose the GPU with it)
  int local_size = 1;  // ranks on this rank's node
};
NodePlacement node_placement(const ParallelContext& ctx);
// Hostname of every world rank (node_placement(ctx).hosts), gathered once by make_mpi_context.
std::vector<std::string> hosts(const ParallelContext& ctx);
// One line per node for status output: "node 0 gpu-17: ranks 0,1,2,3".
std::string describe_placement(const ParallelContext& ctx);

}  // namespace alem
