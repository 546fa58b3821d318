// A ProcessGroup is one dimension of the parallel job (tensor, pipeline, data, or world) and
// the only way model code communicates. Backends: MPI (CPU tensors), NCCL (GPU tensors), and
// an in-process fake for unit tests. Every collective returns at once when size() == 1, so a
// single-rank run pays nothing. Calls are blocking and must be made by every member in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

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
  // Variable-count all-to-all of bytes (MPI_Alltoallv). `send` holds one block per member,
  // packed in member order: send_bytes[j] bytes for member j (this member's own block too).
  // `recv` receives member j's block for this member at offset recv_bytes[0] + ... +
  // recv_bytes[j-1], recv_bytes[j] bytes long. Both vectors have size() entries, and
  // send_bytes[j] on member i must equal recv_bytes[i] on member j (all_to_all_counts() gives
  // recv_bytes from send_bytes); a mismatch is an alem::Error where the backend can tell, a job
  // abort otherwise. send and recv must not overlap. Zero-byte blocks move nothing.
  virtual void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                          const std::vector<size_t>& recv_bytes) = 0;
};

// A group of one member: every collective is a no-op (the single-rank engine uses these).
std::unique_ptr<ProcessGroup> make_solo_group(const std::string& name);

// The receive counts of an all_to_all: exchanges every member's send_bytes (itself an
// all_to_all of one 8-byte count per pair) and returns recv_bytes. Host-memory groups only.
std::vector<size_t> all_to_all_counts(ProcessGroup& group, const std::vector<size_t>& send_bytes);

// Throws alem::Error unless both count vectors have one entry per member of `group`.
void check_all_to_all_counts(const ProcessGroup& group, const std::vector<size_t>& send_bytes,
                             const std::vector<size_t>& recv_bytes);

// A deadlock-free pairing of members for exchanges built from blocking send/recv (the circle
// method): all_to_all_rounds(n) rounds, in each of which every member meets at most one
// partner. all_to_all_partner() is -1 when `rank` sits the round out (odd n).
int all_to_all_rounds(int size);
int all_to_all_partner(int rank, int size, int round);

}  // namespace alem
