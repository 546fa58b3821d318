// MpiProcessGroup: collectives and point-to-point messages over one MPI communicator, chunked so
// that no single MPI call carries more than max_message_bytes (MPI counts are ints), with every
// failure turned into a job abort that names the call, the group and the rank.
#include "mpi/mpi_process_group.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>

#include "core/error.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_internal.h"

namespace alem {

bool GroupMembers::spans_nodes() const {
  return std::adjacent_find(nodes.begin(), nodes.end(), std::not_equal_to<int>()) != nodes.end();
}

std::string GroupMembers::describe() const {
  const size_t n = world_ranks.size();
  std::string text = "{";
  for (size_t i = 0; i < n; ++i) {
    if (n > 8 && i == 3) {
      text += "...,";
      i = n - 1;
    }
    text += std::to_string(world_ranks[i]);
    if (i + 1 < n) text += ",";
  }
  return text + "}";
}

std::string mpi_error_string(int code) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS)
    return "MPI error code " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length));
}

void check_mpi(int code, const char* what) {
  if (code != MPI_SUCCESS)
    abort_job(std::string("MPI error in ") + what + ": " + mpi_error_string(code));
}

struct MpiProcessGroup::Impl {
  std::string name;
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int size = 1;
  int max_tag = 32767;
  size_t max_message_bytes = size_t{1} << 30;
  GroupMembers members;
  std::shared_ptr<FailureWatchdog> watchdog;

  ~Impl() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (comm != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm);
  }

  std::string where() const { return name + " group " + members.describe(); }

  // Aborts the job, naming the call, when an MPI call failed.
  void check(int code, const char* op) const {
    if (code != MPI_SUCCESS)
      abort_job("MPI error in " + std::string(op) + " on the " + where() + ": " +
                mpi_error_string(code));
  }

  // Marks a blocking call for the collective timeout (free when no watchdog is set).
  FailureWatchdog::Watch watch(const char* op, size_t bytes) const {
    if (!watchdog || watchdog->timeout_s() <= 0) return {};
    return watchdog->watch(std::string(op) + " of " + std::to_string(bytes) + " bytes on the " +
                           where());
  }

  void check_member(int member, const char* what) const {
    ALEM_CHECK(member >= 0 && member < size, std::string(what) + " rank " + std::to_string(member) +
                                                 " is not a member of the " + where() + " (size " +
                                                 std::to_string(size) + ")");
  }

  void check_peer(int peer, int tag, const char* op) const {
    check_member(peer, op);
    ALEM_CHECK(peer != rank, std::string(op) + " to itself (rank " + std::to_string(rank) +
                                 ") on the " + where());
    ALEM_CHECK(tag >= 0 && tag <= max_tag, std::string(op) + " tag " + std::to_string(tag) +
                                               " is outside 0.." + std::to_string(max_tag));
  }
};

std::unique_ptr<MpiProcessGroup> adopt_mpi_communicator(std::string name, MPI_Comm comm,
                                                        GroupMembers members,
                                                        size_t max_message_bytes) {
  ALEM_CHECK(max_message_bytes >= sizeof(float) && max_message_bytes <= size_t{INT_MAX},
             "the MPI message chunk must be 4 bytes .. 2 GiB - 1, got " +
                 std::to_string(max_message_bytes));
  auto impl = std::make_unique<MpiProcessGroup::Impl>();
  impl->name = std::move(name);
  impl->comm = comm;
  impl->max_message_bytes = max_message_bytes;
  impl->members = std::move(members);
  check_mpi(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm, &impl->rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm, &impl->size), "MPI_Comm_size");
  ALEM_CHECK(static_cast<size_t>(impl->size) == impl->members.world_ranks.size(),
             "the " + impl->name + " communicator has " + std::to_string(impl->size) +
                 " ranks but the layout expects " +
                 std::to_string(impl->members.world_ranks.size()));
  int* tag_upper_bound = nullptr;
  int found = 0;
  check_mpi(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_upper_bound, &found),
            "MPI_Comm_get_attr(MPI_TAG_UB)");
  if (found && tag_upper_bound) impl->max_tag = *tag_upper_bound;
  return std::make_unique<MpiProcessGroup>(std::move(impl));
}

MpiProcessGroup::MpiProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MpiProcessGroup::~MpiProcessGroup() = default;
MpiProcessGroup::MpiProcessGroup(MpiProcessGroup&&) noexcept = default;
MpiProcessGroup& MpiProcessGroup::operator=(MpiProcessGroup&&) noexcept = default;

std::string MpiProcessGroup::name() const {
  return impl_->name;
}
int MpiProcessGroup::rank() const {
  return impl_->rank;
}
int MpiProcessGroup::size() const {
  return impl_->size;
}
const GroupMembers& MpiProcessGroup::members() const {
  return impl_->members;
}
size_t MpiProcessGroup::max_message_bytes() const {
  return impl_->max_message_bytes;
}
void MpiProcessGroup::set_watchdog(std::shared_ptr<FailureWatchdog> watchdog) {
  impl_->watchdog = std::move(watchdog);
}

void MpiProcessGroup::all_reduce(float* data, size_t count, ReduceOp op) {
  const Impl& g = *impl_;
  if (g.size == 1 || count == 0) return;
  auto watch = g.watch("all_reduce", count * sizeof(float));
  MPI_Op mpi_op = op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
  const size_t chunk = g.max_message_bytes / sizeof(float);
  for (size_t done = 0; done < count; done += chunk) {
    const int n = static_cast<int>(std::min(chunk, count - done));
    g.check(MPI_Allreduce(MPI_IN_PLACE, data + done, n, MPI_FLOAT, mpi_op, g.comm), "all_reduce");
  }
}

void MpiProcessGroup::all_gather(const void* send, size_t bytes_per_rank, void* recv) {
  const Impl& g = *impl_;
  auto* out = static_cast<char*>(recv);
  const char* own_slot = out + static_cast<size_t>(g.rank) * bytes_per_rank;
  const bool in_place = send == own_slot;
  if (g.size == 1) {
    if (!in_place && bytes_per_rank > 0) std::memcpy(recv, send, bytes_per_rank);
    return;
  }
  if (bytes_per_rank == 0) return;
  auto watch = g.watch("all_gather", bytes_per_rank * g.size);
  if (bytes_per_rank <= g.max_message_bytes) {
    const int n = static_cast<int>(bytes_per_rank);
    g.check(MPI_Allgather(in_place ? MPI_IN_PLACE : send, n, MPI_BYTE, recv, n, MPI_BYTE, g.comm),
            "all_gather");
    return;
  }
  // Long contributions: gather piece by piece. The receive type is one piece whose extent is
  // a whole contribution, so member i's piece lands at recv + i * bytes_per_rank + offset.
  const auto* in = static_cast<const char*>(send);
  for (size_t offset = 0; offset < bytes_per_rank; offset += g.max_message_bytes) {
    const int n = static_cast<int>(std::min(g.max_message_bytes, bytes_per_rank - offset));
    MPI_Datatype piece = MPI_DATATYPE_NULL, strided = MPI_DATATYPE_NULL;
    g.check(MPI_Type_contiguous(n, MPI_BYTE, &piece), "all_gather (datatype)");
    g.check(MPI_Type_create_resized(piece, 0, static_cast<MPI_Aint>(bytes_per_rank), &strided),
            "all_gather (datatype)");
    g.check(MPI_Type_commit(&strided), "all_gather (datatype)");
    g.check(MPI_Allgather(in_place ? MPI_IN_PLACE : in + offset, n, MPI_BYTE, out + offset, 1,
                          strided, g.comm),
            "all_gather");
    MPI_Type_free(&strided);
    MPI_Type_free(&piece);
  }
}

void MpiProcessGroup::broadcast(void* data, size_t bytes, int root) {
  const Impl& g = *impl_;
  g.check_member(root, "broadcast root");
  if (g.size == 1 || bytes == 0) return;
  auto watch = g.watch("broadcast", bytes);
  auto* p = static_cast<char*>(data);
  for (size_t offset = 0; offset < bytes; offset += g.max_message_bytes) {
    const int n = static_cast<int>(std::min(g.max_message_bytes, bytes - offset));
    g.check(MPI_Bcast(p + offset, n, MPI_BYTE, root, g.comm), "broadcast");
  }
}

void MpiProcessGroup::send(const void* data, size_t bytes, int dst, int tag) {
  const Impl& g = *impl_;
  g.check_peer(dst, tag, "send");
  auto watch = g.watch("send", bytes);
  const auto* p = static_cast<const char*>(data);
  // An empty message is still one message, so that send/recv pairs always match.
  size_t offset = 0;
  do {
    const int n = static_cast<int>(std::min(g.max_message_bytes, bytes - offset));
    g.check(MPI_Send(p + offset, n, MPI_BYTE, dst, tag, g.comm), "send");
    offset += static_cast<size_t>(n);
  } while (offset < bytes);
}

void MpiProcessGroup::recv(void* data, size_t bytes, int src, int tag) {
  const Impl& g = *impl_;
  g.check_peer(src, tag, "recv");
  auto watch = g.watch("recv", bytes);
  auto* p = static_cast<char*>(data);
  size_t offset = 0;
  do {
    const int n = static_cast<int>(std::min(g.max_message_bytes, bytes - offset));
    MPI_Status status;
    const int code = MPI_Recv(p + offset, n, MPI_BYTE, src, tag, g.comm, &status);
    int error_class = MPI_SUCCESS;
    if (code != MPI_SUCCESS) MPI_Error_class(code, &error_class);
    ALEM_CHECK(error_class != MPI_ERR_TRUNCATE, "recv from rank " + std::to_string(src) + " tag " +
                                                    std::to_string(tag) + " on the " + g.where() +
                                                    ": the message is longer than the " +
                                                    std::to_string(bytes) + " bytes expected");
    g.check(code, "recv");
    int received = 0;
    g.check(MPI_Get_count(&status, MPI_BYTE, &received), "recv (count)");
    ALEM_CHECK(received == n, "recv from rank " + std::to_string(src) + " tag " +
                                  std::to_string(tag) + " on the " + g.where() +
                                  ": the message is shorter than the " + std::to_string(bytes) +
                                  " bytes expected");
    offset += static_cast<size_t>(n);
  } while (offset < bytes);
}

void MpiProcessGroup::barrier() {
  const Impl& g = *impl_;
  if (g.size == 1) return;
  auto watch = g.watch("barrier", 0);
  g.check(MPI_Barrier(g.comm), "barrier");
}

namespace {

std::vector<size_t> prefix_offsets(const std::vector<size_t>& counts) {
  std::vector<size_t> offsets(counts.size() + 1, 0);
  for (size_t i = 0; i < counts.size(); ++i) offsets[i + 1] = offsets[i] + counts[i];
  return offsets;
}

}  // namespace

void MpiProcessGroup::all_to_all(const void* send, const std::vector<size_t>& send_bytes,
                                 void* recv, const std::vector<size_t>& recv_bytes) {
  const Impl& g = *impl_;
  check_all_to_all_counts(*this, send_bytes, recv_bytes);
  const std::vector<size_t> send_at = prefix_offsets(send_bytes);
  const std::vector<size_t> recv_at = prefix_offsets(recv_bytes);
  const auto* in = static_cast<const char*>(send);
  auto* out = static_cast<char*>(recv);
  const size_t n = static_cast<size_t>(g.size);
  if (g.size == 1) {
    ALEM_CHECK(send_bytes[0] == recv_bytes[0],
               "all_to_all on the " + g.where() + ": sends " + std::to_string(send_bytes[0]) +
                   " bytes to itself but expects " + std::to_string(recv_bytes[0]));
    if (send_bytes[0] > 0) std::memcpy(out, in, send_bytes[0]);
    return;
  }
  auto watch = g.watch("all_to_all", send_at[n] + recv_at[n]);
  // Every member must take the same path: agree on the largest buffer first.
  double largest = static_cast<double>(std::max(send_at[n], recv_at[n]));
  g.check(MPI_Allreduce(MPI_IN_PLACE, &largest, 1, MPI_DOUBLE, MPI_MAX, g.comm),
          "all_to_all (sizes)");
  std::vector<int> send_counts(n), send_displs(n), recv_counts(n), recv_displs(n);
  if (largest <= static_cast<double>(g.max_message_bytes)) {
    for (size_t j = 0; j < n; ++j) {
      send_counts[j] = static_cast<int>(send_bytes[j]);
      send_displs[j] = static_cast<int>(send_at[j]);
      recv_counts[j] = static_cast<int>(recv_bytes[j]);
      recv_displs[j] = static_cast<int>(recv_at[j]);
    }
    g.check(MPI_Alltoallv(in, send_counts.data(), send_displs.data(), MPI_BYTE, out,
                          recv_counts.data(), recv_displs.data(), MPI_BYTE, g.comm),
            "all_to_all");
    return;
  }
  // Rounds: each carries up to `piece` bytes of every block, packed into staging buffers, so
  // every count and displacement of one MPI call stays below max_message_bytes.
  const size_t piece = std::max<size_t>(1, g.max_message_bytes / n);
  size_t longest = 0;
  for (size_t j = 0; j < n; ++j) longest = std::max({longest, send_bytes[j], recv_bytes[j]});
  double rounds_needed = static_cast<double>((longest + piece - 1) / piece);
  g.check(MPI_Allreduce(MPI_IN_PLACE, &rounds_needed, 1, MPI_DOUBLE, MPI_MAX, g.comm),
          "all_to_all (rounds)");
  std::vector<char> staged_in(piece * n), staged_out(piece * n);
  for (size_t round = 0; round < static_cast<size_t>(rounds_needed); ++round) {
    const size_t offset = round * piece;
    for (size_t j = 0; j < n; ++j) {
      const size_t s = send_bytes[j] > offset ? std::min(piece, send_bytes[j] - offset) : 0;
      const size_t r = recv_bytes[j] > offset ? std::min(piece, recv_bytes[j] - offset) : 0;
      if (s > 0) std::memcpy(staged_in.data() + j * piece, in + send_at[j] + offset, s);
      send_counts[j] = static_cast<int>(s);
      send_displs[j] = static_cast<int>(j * piece);
      recv_counts[j] = static_cast<int>(r);
      recv_displs[j] = static_cast<int>(j * piece);
    }
    g.check(
        MPI_Alltoallv(staged_in.data(), send_counts.data(), send_displs.data(), MPI_BYTE,
                      staged_out.data(), recv_counts.data(), recv_displs.data(), MPI_BYTE, g.comm),
        "all_to_all");
    for (size_t j = 0; j < n; ++j) {
      if (recv_counts[j] > 0) {
        std::memcpy(out + recv_at[j] + offset, staged_out.data() + j * piece,
                    static_cast<size_t>(recv_counts[j]));
      }
    }
  }
}

}  // namespace alem
