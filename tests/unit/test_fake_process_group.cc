// The in-process fake process group, driven the way TP-layer tests drive it: one thread per
// member. Checks every collective against data each member computes for itself, bit-identical
// sums across members, point-to-point ordering by tag, fake contexts wired like MPI's, and that
// misuse (mismatched calls, a member that never arrives) throws instead of hanging.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>

#include "core/error.h"
#include "mpi/fake_process_group.h"

namespace alem {
namespace {

// Runs body(member) on one thread per member; returns how many threads threw alem::Error.
int run_members(std::vector<std::unique_ptr<ProcessGroup>>& group,
                const std::function<void(ProcessGroup&)>& body) {
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (auto& member : group)
    threads.emplace_back([&, m = member.get()] {
      try {
        body(*m);
      } catch (const Error&) {
        ++errors;
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

// Each member's contribution: deterministic and different per member and element.
float value(int member, size_t i) {
  return static_cast<float>(member + 1) * 0.5f + static_cast<float>(i % 97);
}

TEST(FakeProcessGroup, MembersKnowRankSizeAndName) {
  auto group = make_fake_group(3, "tp");
  ASSERT_EQ(group.size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(group[static_cast<size_t>(r)]->rank(), r);
    EXPECT_EQ(group[static_cast<size_t>(r)]->size(), 3);
    EXPECT_EQ(group[static_cast<size_t>(r)]->name(), "tp");
  }
  EXPECT_THROW(make_fake_group(0), Error);
}

TEST(FakeProcessGroup, AllReduceSumAndMaxManyTimes) {
  for (int size : {1, 2, 3, 4, 8}) {
    auto group = make_fake_group(size);
    const int errors = run_members(group, [size](ProcessGroup& g) {
      for (int round = 0; round < 50; ++round) {
        const size_t count = 1 + static_cast<size_t>(round) * 13;
        std::vector<float> data(count), expected(count, 0.f);
        for (size_t i = 0; i < count; ++i) data[i] = value(g.rank(), i + round);
        for (int m = 0; m < size; ++m)
          for (size_t i = 0; i < count; ++i) expected[i] += value(m, i + round);
        g.all_reduce(data.data(), count, ReduceOp::Sum);
        ASSERT_EQ(data, expected) << "round " << round;
        for (size_t i = 0; i < count; ++i) data[i] = value(g.rank(), i) * (i % 2 ? -1.f : 1.f);
        g.all_reduce(data.data(), count, ReduceOp::Max);
        for (size_t i = 0; i < count; ++i)
          ASSERT_EQ(data[i], i % 2 ? value(0, i) * -1.f : value(size - 1, i));
      }
    });
    EXPECT_EQ(errors, 0) << "size " << size;
  }
}

TEST(FakeProcessGroup, AllReduceIsBitIdenticalAcrossMembers) {
  auto group = make_fake_group(4);
  std::vector<std::vector<float>> results(4);
  run_members(group, [&](ProcessGroup& g) {
    std::vector<float> data(1000);
    for (size_t i = 0; i < data.size(); ++i)
      data[i] = 1.0f / static_cast<float>(i + 3 + g.rank() * 7);
    g.all_reduce(data.data(), data.size());
    results[static_cast<size_t>(g.rank())] = data;
  });
  for (int r = 1; r < 4; ++r)
    EXPECT_EQ(std::memcmp(results[0].data(), results[static_cast<size_t>(r)].data(), 4000), 0);
}

TEST(FakeProcessGroup, AllGatherSeparateAndInPlace) {
  auto group = make_fake_group(4);
  const int errors = run_members(group, [](ProcessGroup& g) {
    const size_t bytes = 37;
    std::vector<uint8_t> mine(bytes), all(bytes * 4), expected(bytes * 4);
    for (size_t i = 0; i < bytes; ++i) mine[i] = static_cast<uint8_t>(g.rank() * 50 + i);
    for (int m = 0; m < 4; ++m)
      for (size_t i = 0; i < bytes; ++i) expected[m * bytes + i] = static_cast<uint8_t>(m * 50 + i);
    g.all_gather(mine.data(), bytes, all.data());
    ASSERT_EQ(all, expected);
    std::vector<uint8_t> in_place(bytes * 4, 0);
    std::memcpy(in_place.data() + g.rank() * bytes, mine.data(), bytes);
    g.all_gather(in_place.data() + g.rank() * bytes, bytes, in_place.data());
    ASSERT_EQ(in_place, expected);
  });
  EXPECT_EQ(errors, 0);
}

TEST(FakeProcessGroup, BroadcastFromEveryRoot) {
  auto group = make_fake_group(3);
  const int errors = run_members(group, [](ProcessGroup& g) {
    for (int root = 0; root < 3; ++root) {
      std::vector<int> data(100, g.rank() == root ? root * 1000 + 7 : -1);
      g.broadcast(data.data(), data.size() * sizeof(int), root);
      ASSERT_EQ(data, std::vector<int>(100, root * 1000 + 7));
    }
  });
  EXPECT_EQ(errors, 0);
}

TEST(FakeProcessGroup, SendRecvRingAndTagsKeepTheirOwnOrder) {
  auto group = make_fake_group(4, "pp");
  const int errors = run_members(group, [](ProcessGroup& g) {
    const int next = (g.rank() + 1) % g.size(), prev = (g.rank() + g.size() - 1) % g.size();
    // Two tags interleaved: messages of one tag arrive in order, whatever the other tag does.
    for (int i = 0; i < 10; ++i) {
      const int a = g.rank() * 100 + i, b = -(g.rank() * 100 + i);
      g.send(&a, sizeof a, next, 1);
      g.send(&b, sizeof b, next, 2);
    }
    for (int i = 0; i < 10; ++i) {
      int b = 0;
      g.recv(&b, sizeof b, prev, 2);
      ASSERT_EQ(b, -(prev * 100 + i));
    }
    for (int i = 0; i < 10; ++i) {
      int a = 0;
      g.recv(&a, sizeof a, prev, 1);
      ASSERT_EQ(a, prev * 100 + i);
    }
    g.barrier();
  });
  EXPECT_EQ(errors, 0);
}

TEST(FakeProcessGroup, MisuseThrows) {
  auto group = make_fake_group(2);
  ProcessGroup& g0 = *group[0];
  int x = 0;
  EXPECT_THROW(g0.send(&x, sizeof x, 0, 0), Error);  // to itself
  EXPECT_THROW(g0.send(&x, sizeof x, 2, 0), Error);  // not a member
  EXPECT_THROW(g0.send(&x, sizeof x, 1, -1), Error);
  EXPECT_THROW(g0.broadcast(&x, sizeof x, 5), Error);
  // A message of the wrong length.
  g0.send(&x, sizeof x, 1, 3);
  double d = 0;
  EXPECT_THROW(group[1]->recv(&d, sizeof d, 0, 3), Error);
}

TEST(FakeProcessGroup, MismatchedCollectivesThrowOnEveryMember) {
  auto group = make_fake_group(2, "tp", 10);
  const int errors = run_members(group, [](ProcessGroup& g) {
    std::vector<float> data(g.rank() == 0 ? 4 : 5, 1.f);
    g.all_reduce(data.data(), data.size());
  });
  EXPECT_EQ(errors, 2);
}

TEST(FakeProcessGroup, MissingMemberTimesOutInsteadOfHanging) {
  auto group = make_fake_group(3, "tp", 0.3);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)  // member 2 never comes
    threads.emplace_back([&, r] {
      try {
        group[static_cast<size_t>(r)]->barrier();
      } catch (const Error& e) {
        if (std::string(e.what()).find("not arrived: 2") != std::string::npos ||
            std::string(e.what()).find("waited") != std::string::npos)
          ++errors;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, 2);
  int x = 0;
  EXPECT_THROW(group[2]->recv(&x, sizeof x, 0, 0), Error);  // the group stays broken
}

TEST(FakeContexts, WiredLikeTheLayout) {
  const ParallelLayout layout(2, 2, 2);
  auto contexts = make_fake_contexts(layout);
  ASSERT_EQ(contexts.size(), 8u);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (auto& ctx : contexts)
    threads.emplace_back([&failures, &layout, c = &ctx] {
      const ParallelCoords coords = layout.coords(c->world_rank);
      if (c->tp->rank() != coords.tp || c->pp->rank() != coords.pp || c->dp->rank() != coords.dp ||
          c->world->rank() != c->world_rank || c->tp->size() != 2 || c->world->size() != 8)
        ++failures;
      // Sum of world ranks over each group equals the sum over the layout's group.
      for (auto [group, ranks] : {std::pair{c->tp.get(), layout.tp_group(c->world_rank)},
                                  std::pair{c->pp.get(), layout.pp_group(c->world_rank)},
                                  std::pair{c->dp.get(), layout.dp_group(c->world_rank)},
                                  std::pair{c->world.get(), layout.dp_group(c->world_rank)}}) {
        float mine = static_cast<float>(c->world_rank);
        group->all_reduce(&mine, 1);
        if (group == c->world.get()) {
          if (mine != 28.f) ++failures;
          continue;
        }
        float expected = 0;
        for (int r : ranks) expected += static_cast<float>(r);
        if (mine != expected) ++failures;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
}

}  // namespace
}  // namespace alem
