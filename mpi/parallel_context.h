// ParallelContext: the process groups one rank belongs to, passed explicitly to the engine (no
// module globals). make_solo_context() gives the single-rank context; the MPI version is built
// by make_mpi_context() in mpi/mpi_context.h after MPI_Init.
#pragma once

#include <memory>

#include "mpi/parallel_layout.h"
#include "mpi/process_group.h"

namespace alem {

class FailureWatchdog;

struct ParallelContext {
  ParallelLayout layout;
  int world_rank = 0;
  ParallelCoords coords;
  std::unique_ptr<ProcessGroup> world;
  std::unique_ptr<ProcessGroup> tp;
  std::unique_ptr<ProcessGroup> pp;
  std::unique_ptr<ProcessGroup> dp;
  // The replicas that share this rank's experts (ParallelLayout::ep_group): more than one member
  // only when the experts span replicas; MoE layers dispatch tokens over it with all_to_all.
  std::unique_ptr<ProcessGroup> ep;
  // The tensor-parallel group again, for GPU device tensors (NCCL, same members and order as
  // tp), set by attach_device_groups (mpi/nccl_process_group.h) when the kernel backend keeps its
  // tensors on a GPU; null otherwise, and then device tensors are staged through host memory
  // over tp. TP groups stay inside a node; pipeline transfers between nodes keep to pp (MPI,
  // which the secure channel wraps).
  std::unique_ptr<ProcessGroup> tp_device;
  // The collective-timeout watchdog of the MPI groups (mpi/failure_watchdog.h), set by
  // install_failure_handling; null for solo and fake contexts.
  std::shared_ptr<FailureWatchdog> watchdog;

  bool is_first_stage() const { return coords.pp == 0; }
  bool is_last_stage() const { return coords.pp == layout.pp_size() - 1; }
  bool is_replica_leader() const { return coords.pp == 0 && coords.tp == 0; }
};

ParallelContext make_solo_context();

}  // namespace alem
