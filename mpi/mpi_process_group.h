// MpiProcessGroup: the ProcessGroup over an MPI communicator, for CPU memory and control messages.
// make_mpi_context() builds one per dimension (world, tp, pp, dp); each owns its communicator and
// frees it when destroyed. Messages over the MPI int count limit are sent in chunks. A failed MPI
// call almost always means a dead or unreachable peer, so it aborts the whole job (abort_job),
// naming the call, the group and this rank; argument mistakes throw alem::Error instead.
//
// This header does not include mpi.h (model code may include it); the communicator lives behind
// a pointer to an implementation defined in mpi_process_group.cc.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "mpi/process_group.h"

namespace alem {

class FailureWatchdog;

// Who is in a group, in group-rank order: element i describes the member whose group rank is i.
struct GroupMembers {
  std::vector<int> world_ranks;
  std::vector<std::string> hosts;
  std::vector<int> nodes;  // members with the same number share a node (and its memory)

  bool spans_nodes() const;
  std::string describe() const;  // "{6,7,8}"; long groups are shortened: "{0,1,2,...,63}"
};

class MpiProcessGroup final : public ProcessGroup {
 public:
  struct Impl;
  // Built by make_mpi_context() (mpi/mpi_context.h); Impl is only complete inside mpi/.
  explicit MpiProcessGroup(std::unique_ptr<Impl> impl);
  ~MpiProcessGroup() override;
  MpiProcessGroup(MpiProcessGroup&&) noexcept;
  MpiProcessGroup& operator=(MpiProcessGroup&&) noexcept;

  std::string name() const override;
  int rank() const override;
  int size() const override;

  void all_reduce(float* data, size_t count, ReduceOp op = ReduceOp::Sum) override;
  // send may equal recv + rank() * bytes_per_rank (in place); other overlaps are not allowed.
  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override;
  void broadcast(void* data, size_t bytes, int root) override;
  // dst/src must be another member (not rank()); 0 <= tag <= MPI_TAG_UB (at least 32767).
  // recv throws alem::Error when the message is not exactly `bytes` long.
  void send(const void* data, size_t bytes, int dst, int tag) override;
  void recv(void* data, size_t bytes, int src, int tag) override;
  void barrier() override;
  // MPI_Alltoallv; blocks or totals beyond max_message_bytes go in several rounds (all members
  // first agree on the largest total with one small all-reduce).
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override;

  const GroupMembers& members() const;
  // Largest piece one MPI call carries; longer messages go in several calls.
  size_t max_message_bytes() const;
  // Blocking calls are then watched by `watchdog` (null: not watched).
  void set_watchdog(std::shared_ptr<FailureWatchdog> watchdog);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace alem
