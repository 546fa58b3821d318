// Stands in for nccl_process_group.cc in builds without CUDA or NCCL, so callers link everywhere
// and learn at run time (nccl_available(), or an alem::Error) that GPU collectives are missing.
#include "core/error.h"
#include "mpi/nccl_process_group.h"
#include "mpi/parallel_context.h"

namespace alem {

std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& bootstrap, const NcclGroupOptions&) {
  ALEM_FAIL("an NCCL " + bootstrap.name() +
            " group was requested, but this alem was built without CUDA/NCCL");
}

bool nccl_available() {
  return false;
}

bool attach_device_groups(ParallelContext& ctx, std::string* why_not) {
  if (why_not) {
    const bool several = ctx.tp && ctx.tp->size() > 1;
    *why_not = several ? "this alem was built without CUDA/NCCL" : "";
  }
  return false;
}

}  // namespace alem
