// A ProcessGroup is one dimension of the parallel job (tensor, pipeline, data, or world) and
// the only way model code communicates. Backends: MPI (CPU tensors), NCCL (GPU tensors), and
// an in-process fake for unit tests. Every collective returns at once when size() == 1, so a
// single-rank run pays nothing. Calls are blocking and must be made by every member in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace alem {

enum class ReduceOp { Sum, Max };

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;
  virtual std::string name() const = 0;  // "tp", "pp", "dp", "world"
  virtual int rank() const = 0;          // rank inside this group
  virtual int size() const = 0;
  // True when the data pointers this group takes are GPU device pointers (NCCL); false for host
  // memory (MPI, fake, solo). The engine stages device tensors through the host for the latter.
  virtual bool takes_device_memory() const { return false; }

  // In place, over all members.
  virtual void all_reduce(float* data, size_t count, ReduceOp op = ReduceOp::Sum) = 0;
  // recv holds size() * bytes_per_rank bytes, member i's contribution at offset i*bytes_per_rank.
  virtual void all_gather(const void* send, size_t bytes_per_rank, void* recv) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  // Point-to-point within the group (ranks are group ranks). Tags separate message streams.
  virtual void send(const void* data, size_t bytes, int dst, int tag) = 0;
  virtual void recv(void* data, size_t bytes, int src, int tag) = 0;
  virtual void barrier() = 0;
};

// A group of one member: every collective is a no-op (the single-rank engine uses these).
std::unique_ptr<ProcessGroup> make_solo_group(const std::string& name);

}  // namespace alem
