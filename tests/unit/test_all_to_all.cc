// ProcessGroup::all_to_all (variable counts) on the backends that run in one process: the solo
// group and the in-process fake group at 1 to 5 members (tests/all_to_all_conformance.h), the
// count exchange, a count mismatch (an error on every member, no hang), bad arguments, and the
// pairing schedule the encrypted channel's all_to_all uses (every pair meets exactly once, one
// partner per member per round). MPI, the encrypted channel and NCCL:
// tests/mpi/test_all_to_all_mpi.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "all_to_all_conformance.h"
#include "core/error.h"
#include "mpi/fake_process_group.h"

namespace alem {
namespace {

// Runs body(member) on one thread per member; returns how many threads threw alem::Error.
int run_members(std::vector<std::unique_ptr<ProcessGroup>>& members,
                const std::function<void(ProcessGroup&)>& body) {
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (auto& member : members) {
    threads.emplace_back([&, m = member.get()] {
      try {
        body(*m);
      } catch (const Error&) {
        ++errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors.load();
}

TEST(AllToAll, SoloGroupCopiesItsOwnBlock) {
  auto solo = make_solo_group("tp");
  EXPECT_EQ(test::check_all_to_all(*solo, 5), 0);
  EXPECT_EQ(test::check_all_to_all(*solo, 1, false), 0);
  std::vector<uint8_t> a(4, 1), b(4);
  EXPECT_THROW(solo->all_to_all(a.data(), {4}, b.data(), {3}), Error);     // 4 sent, 3 expected
  EXPECT_THROW(solo->all_to_all(a.data(), {4, 0}, b.data(), {4}), Error);  // two counts for one
}

TEST(AllToAll, FakeGroupsOfOneToFiveMembers) {
  for (int n = 1; n <= 5; ++n) {
    for (size_t scale : {size_t{1}, size_t{64}, size_t{4099}}) {
      auto members = make_fake_group(n, "ep", 20.0);
      std::atomic<int> bad{0};
      EXPECT_EQ(run_members(members,
                            [&](ProcessGroup& g) {
                              bad +=
                                  test::check_all_to_all(g, scale, /*exchange_counts=*/scale != 64);
                            }),
                0)
          << n << " members";
      EXPECT_EQ(bad.load(), 0) << n << " members, scale " << scale;
    }
  }
}

TEST(AllToAll, FakeGroupRefusesMismatchedCountsOnEveryMember) {
  auto members = make_fake_group(3, "ep", 20.0);
  const int errors = run_members(members, [](ProcessGroup& g) {
    std::vector<size_t> send_bytes(3, 2), recv_bytes(3, 2);
    if (g.rank() == 1) recv_bytes[2] = 3;  // member 2 sends 2 bytes, member 1 expects 3
    std::vector<uint8_t> send(6, 7), recv(7);
    g.all_to_all(send.data(), send_bytes, recv.data(), recv_bytes);
  });
  EXPECT_EQ(errors, 3);  // every member learns of it; nobody waits for the others
}

TEST(AllToAll, PairingMeetsEveryPairOnce) {
  for (int n = 1; n <= 9; ++n) {
    std::set<std::pair<int, int>> met;
    for (int round = 0; round < all_to_all_rounds(n); ++round) {
      for (int r = 0; r < n; ++r) {
        const int p = all_to_all_partner(r, n, round);
        if (p < 0) continue;
        EXPECT_NE(p, r);
        EXPECT_EQ(all_to_all_partner(p, n, round), r) << "round " << round << " of " << n;
        if (r < p) {
          EXPECT_TRUE(met.insert({r, p}).second) << r << "," << p << " met twice";
        }
      }
    }
    EXPECT_EQ(met.size(), static_cast<size_t>(n * (n - 1) / 2)) << n << " members";
  }
  EXPECT_THROW(all_to_all_partner(3, 3, 0), Error);
  EXPECT_THROW(all_to_all_partner(0, 4, 3), Error);
}

}  // namespace
}  // namespace alem
