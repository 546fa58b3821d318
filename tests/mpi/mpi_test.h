// Helpers for multi-rank tests (tests/mpi/test_*.cc, run under mpirun by ctest). Every rank runs
// the same tests in the same order; each computes its own expected data; verdicts that depend on
// several ranks go through all_ranks_agree so that every rank reaches the same one. A failed
// EXPECT on one rank must not stop it from making the collective calls the others make next, so
// prefer EXPECT_* (not ASSERT_*) before communication.
#pragma once

#include <gtest/gtest.h>

namespace alem::test {

int world_rank();
int world_size();
// True on every rank when ok is true on every rank (collective over all ranks).
bool all_ranks_agree(bool ok);

}  // namespace alem::test

// Skips the test (on every rank alike) when the job has fewer than n ranks.
#define ALEM_REQUIRE_RANKS(n)                                                                  \
  do {                                                                                         \
    if (::alem::test::world_size() < (n))                                                      \
      GTEST_SKIP() << "needs " << (n) << " ranks, the job has " << ::alem::test::world_size(); \
  } while (0)
