// Helpers shared by every ProcessGroup backend's all_to_all (see process_group.h): the count
// exchange, the argument check, and the pairing schedule of the point-to-point exchanges.
#include "mpi/process_group.h"

#include <cstdint>

#include "core/error.h"

namespace alem {

void check_all_to_all_counts(const ProcessGroup& group, const std::vector<size_t>& send_bytes,
                             const std::vector<size_t>& recv_bytes) {
  const size_t n = static_cast<size_t>(group.size());
  ALEM_CHECK(send_bytes.size() == n && recv_bytes.size() == n,
             "all_to_all on the " + group.name() + " group of " + std::to_string(n) +
                 " members needs one send and one receive count per member, got " +
                 std::to_string(send_bytes.size()) + " and " + std::to_string(recv_bytes.size()));
}

std::vector<size_t> all_to_all_counts(ProcessGroup& group, const std::vector<size_t>& send_bytes) {
  const size_t n = static_cast<size_t>(group.size());
  ALEM_CHECK(send_bytes.size() == n, "all_to_all_counts on the " + group.name() + " group of " +
                                         std::to_string(n) + " members got " +
                                         std::to_string(send_bytes.size()) + " counts");
  std::vector<uint64_t> out(send_bytes.begin(), send_bytes.end()), in(n);
  const std::vector<size_t> eight(n, sizeof(uint64_t));
  group.all_to_all(out.data(), eight, in.data(), eight);
  return std::vector<size_t>(in.begin(), in.end());
}

int all_to_all_rounds(int size) {
  return size <= 1 ? 0 : (size % 2 == 0 ? size - 1 : size);
}

// Circle method over m = size rounded up to even: member m-1 stays fixed and meets member
// `round`; every other member r meets (2 * round - r) mod (m - 1). A partner equal to `size`
// (the padding member of an odd group) means no exchange this round.
int all_to_all_partner(int rank, int size, int round) {
  ALEM_CHECK(rank >= 0 && rank < size && round >= 0 && round < all_to_all_rounds(size),
             "all_to_all_partner: rank " + std::to_string(rank) + " or round " +
                 std::to_string(round) + " out of range for a group of " + std::to_string(size));
  const int m = size % 2 == 0 ? size : size + 1;
  int partner;
  if (rank == m - 1) {
    partner = round;
  } else if (rank == round) {
    partner = m - 1;
  } else {
    partner = ((2 * round - rank) % (m - 1) + (m - 1)) % (m - 1);
  }
  return partner >= size ? -1 : partner;
}

}  // namespace alem
