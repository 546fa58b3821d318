// ranks: 1 2 4
// MpiProcessGroup and make_mpi_context under mpirun: every collective on the world group and on
// the tp/pp/dp groups of every layout that fits the job (at 4 ranks: tp4, pp4, dp4, tp2 x pp2,
// tp2 x dp2, pp2 x dp2), with each rank computing the data it expects from the layout alone.
// Also the chunked paths (tiny chunk size), node placement, and the errors users can meet.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_context.h"
#include "mpi/mpi_process_group.h"
#include "mpi_test.h"

namespace alem {
namespace {

using test::all_ranks_agree;
using test::world_rank;
using test::world_size;

// Every (tp, pp, dp) whose product is the job's size.
std::vector<ParallelLayout> layouts_for_job() {
  std::vector<ParallelLayout> layouts;
  const int n = world_size();
  for (int tp = 1; tp <= n; ++tp)
    for (int pp = 1; tp * pp <= n; ++pp)
      if (n % (tp * pp) == 0) layouts.emplace_back(tp, pp, n / (tp * pp));
  return layouts;
}

// A value each rank contributes, known to every rank: small integers, so sums are exact in any
// reduction order.
float contribution(int world, size_t i) {
  return static_cast<float>((world * 7 + i * 3) % 101);
}
uint8_t byte_of(int world, size_t i) {
  return static_cast<uint8_t>(world * 31 + i * 7 + 1);
}

struct NamedGroup {
  ProcessGroup* group;
  std::vector<int> world_ranks;  // members in group-rank order, from the layout
};

std::vector<NamedGroup> groups_of(ParallelContext& ctx) {
  std::vector<int> all(static_cast<size_t>(ctx.layout.world_size()));
  for (size_t r = 0; r < all.size(); ++r) all[r] = static_cast<int>(r);
  return {{ctx.world.get(), all},
          {ctx.tp.get(), ctx.layout.tp_group(ctx.world_rank)},
          {ctx.pp.get(), ctx.layout.pp_group(ctx.world_rank)},
          {ctx.dp.get(), ctx.layout.dp_group(ctx.world_rank)}};
}

// Runs every collective on one group; returns false (on this rank) when any result is wrong.
bool exercise_group(const NamedGroup& named, size_t count) {
  ProcessGroup& g = *named.group;
  const std::vector<int>& members = named.world_ranks;
  const int size = static_cast<int>(members.size());
  bool ok = g.size() == size && members[static_cast<size_t>(g.rank())] == world_rank();
  EXPECT_TRUE(ok) << g.name() << ": rank " << g.rank() << " size " << g.size();

  // all_reduce, sum and max.
  std::vector<float> data(count), sum(count, 0.f), max(count, -1.f);
  for (size_t i = 0; i < count; ++i) data[i] = contribution(world_rank(), i);
  for (int w : members)
    for (size_t i = 0; i < count; ++i) {
      sum[i] += contribution(w, i);
      max[i] = std::max(max[i], contribution(w, i));
    }
  std::vector<float> copy = data;
  g.all_reduce(data.data(), count, ReduceOp::Sum);
  g.all_reduce(copy.data(), count, ReduceOp::Max);
  EXPECT_TRUE(data == sum) << g.name() << " all_reduce sum of " << count;
  EXPECT_TRUE(copy == max) << g.name() << " all_reduce max of " << count;
  ok = ok && data == sum && copy == max;

  // all_gather, into a separate buffer and in place.
  const size_t bytes = count + 3;
  std::vector<uint8_t> mine(bytes), all(bytes * size), expected(bytes * size);
  for (size_t i = 0; i < bytes; ++i) mine[i] = byte_of(world_rank(), i);
  for (int m = 0; m < size; ++m)
    for (size_t i = 0; i < bytes; ++i) expected[m * bytes + i] = byte_of(members[m], i);
  g.all_gather(mine.data(), bytes, all.data());
  EXPECT_TRUE(all == expected) << g.name() << " all_gather of " << bytes;
  ok = ok && all == expected;
  std::vector<uint8_t> in_place(bytes * size, 0);
  std::memcpy(&in_place[g.rank() * bytes], mine.data(), bytes);
  g.all_gather(&in_place[g.rank() * bytes], bytes, in_place.data());
  EXPECT_TRUE(in_place == expected) << g.name() << " in-place all_gather of " << bytes;
  ok = ok && in_place == expected;

  // broadcast from every root.
  for (int root = 0; root < size; ++root) {
    std::vector<uint8_t> buffer(bytes, 0);
    if (g.rank() == root) buffer = mine;
    g.broadcast(buffer.data(), bytes, root);
    std::vector<uint8_t> want(bytes);
    for (size_t i = 0; i < bytes; ++i) want[i] = byte_of(members[root], i);
    EXPECT_TRUE(buffer == want) << g.name() << " broadcast from " << root;
    ok = ok && buffer == want;
  }

  // send/recv around the ring, two tags; even ranks send first so nothing waits on itself.
  if (size > 1) {
    const int next = (g.rank() + 1) % size, prev = (g.rank() + size - 1) % size;
    std::vector<uint8_t> from_prev(bytes), tagged(4);
    const uint8_t tag_payload[4] = {static_cast<uint8_t>(world_rank()), 1, 2, 3};
    auto send_both = [&] {
      g.send(tag_payload, 4, next, 9);
      g.send(mine.data(), bytes, next, 5);
    };
    auto recv_both = [&] {
      g.recv(from_prev.data(), bytes, prev, 5);  // the other tag first: tags are separate
      g.recv(tagged.data(), 4, prev, 9);
    };
    if (g.rank() % 2 == 0) {
      send_both();
      recv_both();
    } else {
      recv_both();
      send_both();
    }
    std::vector<uint8_t> want(bytes);
    for (size_t i = 0; i < bytes; ++i) want[i] = byte_of(members[prev], i);
    EXPECT_TRUE(from_prev == want) << g.name() << " recv from " << prev;
    EXPECT_EQ(tagged[0], static_cast<uint8_t>(members[prev]));
    ok = ok && from_prev == want && tagged[0] == static_cast<uint8_t>(members[prev]);
  }
  g.barrier();
  return ok;
}

TEST(MpiProcessGroup, EveryCollectiveOnEveryGroupOfEveryLayout) {
  for (const ParallelLayout& layout : layouts_for_job()) {
    ParallelContext ctx = make_mpi_context(layout);
    EXPECT_EQ(ctx.world_rank, world_rank());
    EXPECT_EQ(process_identity().world_rank, world_rank());
    const ParallelCoords c = layout.coords(world_rank());
    EXPECT_TRUE(ctx.coords.tp == c.tp && ctx.coords.pp == c.pp && ctx.coords.dp == c.dp);
    for (const NamedGroup& g : groups_of(ctx))
      for (size_t count : {size_t{1}, size_t{17}, size_t{4096}, size_t{100000}})
        EXPECT_TRUE(all_ranks_agree(exercise_group(g, count)))
            << layout.describe() << " " << g.group->name() << " count " << count;
  }
}

TEST(MpiProcessGroup, ChunkedMessagesMatchUnchunked) {
  // 12-byte pieces: every message of more than 12 bytes is split, in odd-sized remainders too.
  MpiContextOptions options;
  options.max_message_bytes = 12;
  for (const ParallelLayout& layout : layouts_for_job()) {
    ParallelContext ctx = make_mpi_context(layout, options);
    EXPECT_EQ(dynamic_cast<MpiProcessGroup&>(*ctx.world).max_message_bytes(), 12u);
    for (const NamedGroup& g : groups_of(ctx))
      for (size_t count : {size_t{2}, size_t{3}, size_t{7}, size_t{1001}})
        EXPECT_TRUE(all_ranks_agree(exercise_group(g, count)))
            << layout.describe() << " " << g.group->name() << " count " << count;
  }
}

TEST(MpiProcessGroup, EmptyMessagesStillPair) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  ProcessGroup& w = *ctx.world;
  if (w.rank() == 0) w.send(nullptr, 0, 1, 4);
  if (w.rank() == 1) w.recv(nullptr, 0, 0, 4);
  // The next message on the same tag must not be mistaken for the empty one.
  int value = w.rank() == 0 ? 42 : 0;
  if (w.rank() == 0) w.send(&value, sizeof value, 1, 4);
  if (w.rank() == 1) w.recv(&value, sizeof value, 0, 4);
  EXPECT_TRUE(all_ranks_agree(w.rank() > 1 || value == 42));
  float nothing = 0;
  w.all_reduce(&nothing, 0);
  w.broadcast(nullptr, 0, 0);
  w.all_gather(nullptr, 0, nullptr);
}

// Over 2 GiB in one call, with the default 1 GiB pieces: needs ~2.2 GB per rank, so it runs only
// when ALEM_TEST_HUGE_MESSAGES=1.
TEST(MpiProcessGroup, MessagesOverTwoGiB) {
  ALEM_REQUIRE_RANKS(2);
  if (!std::getenv("ALEM_TEST_HUGE_MESSAGES")) GTEST_SKIP() << "set ALEM_TEST_HUGE_MESSAGES=1";
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  ProcessGroup& w = *ctx.world;
  const size_t bytes = (size_t{2} << 30) + 65536 + 3;
  auto pattern = [](size_t i) { return static_cast<char>((i * 131 + 7) & 0xff); };
  std::vector<char> buffer(bytes, 0);
  if (w.rank() == 0)
    for (size_t i = 0; i < bytes; ++i) buffer[i] = pattern(i);
  auto intact = [&] {
    for (size_t i = 0; i < bytes; ++i)
      if (buffer[i] != pattern(i)) return false;
    return true;
  };
  if (w.rank() == 0) w.send(buffer.data(), bytes, 1, 3);
  if (w.rank() == 1) w.recv(buffer.data(), bytes, 0, 3);
  EXPECT_TRUE(all_ranks_agree(w.rank() > 1 || intact())) << "send/recv";
  if (w.rank() == 1) std::fill(buffer.begin(), buffer.end(), 0);
  w.broadcast(buffer.data(), bytes, 0);
  EXPECT_TRUE(all_ranks_agree(intact())) << "broadcast";
}

TEST(MpiProcessGroup, SingleMemberGroupsReturnAtOnce) {
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  // tp and pp have one member here: no MPI traffic, all_gather still copies.
  EXPECT_EQ(ctx.tp->size(), 1);
  float x = 3;
  ctx.tp->all_reduce(&x, 1);
  EXPECT_EQ(x, 3.f);
  const char send[4] = {'a', 'b', 'c', 'd'};
  char recv[4] = {};
  ctx.pp->all_gather(send, 4, recv);
  EXPECT_EQ(std::string(recv, 4), "abcd");
  ctx.pp->broadcast(recv, 4, 0);
  ctx.tp->barrier();
}

TEST(MpiProcessGroup, WrongMessageLengthThrows) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  ProcessGroup& w = *ctx.world;
  bool ok = true;
  double eight = 1.5;
  float four = 2.5f;
  if (w.rank() == 0) {
    w.send(&eight, sizeof eight, 1, 1);  // longer than the receiver expects
    w.send(&four, sizeof four, 1, 2);    // shorter than the receiver expects
  } else if (w.rank() == 1) {
    float small = 0;
    double big = 0;
    try {
      w.recv(&small, sizeof small, 0, 1);
      ok = false;
    } catch (const Error& e) {
      ok = ok && std::string(e.what()).find("longer") != std::string::npos;
    }
    try {
      w.recv(&big, sizeof big, 0, 2);
      ok = false;
    } catch (const Error& e) {
      ok = ok && std::string(e.what()).find("shorter") != std::string::npos;
    }
  }
  EXPECT_TRUE(all_ranks_agree(ok));
}

TEST(MpiProcessGroup, ArgumentMistakesThrowBeforeCommunicating) {
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  ProcessGroup& w = *ctx.world;
  int x = 0;
  EXPECT_THROW(w.send(&x, sizeof x, w.rank(), 0), Error);  // to itself
  EXPECT_THROW(w.send(&x, sizeof x, w.size(), 0), Error);  // no such member
  EXPECT_THROW(w.recv(&x, sizeof x, -1, 0), Error);
  EXPECT_THROW(w.broadcast(&x, sizeof x, w.size()), Error);
  if (w.size() > 1) {
    EXPECT_THROW(w.send(&x, sizeof x, (w.rank() + 1) % w.size(), -1), Error);
  }
}

TEST(MpiContext, WorldSizeMismatchNamesBothNumbers) {
  const int n = world_size();
  try {
    make_mpi_context(ParallelLayout(n + 1, 1, 1));
    ADD_FAILURE() << "no error for a layout of " << n + 1 << " ranks in a job of " << n;
  } catch (const Error& e) {
    const std::string message = e.message();
    EXPECT_NE(message.find("needs " + std::to_string(n + 1) + " ranks"), std::string::npos)
        << message;
    EXPECT_NE(message.find("this job has " + std::to_string(n)), std::string::npos) << message;
  }
}

TEST(MpiContext, PlacementOnOneNode) {
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  const NodePlacement placement = node_placement(ctx);
  ASSERT_EQ(static_cast<int>(placement.hosts.size()), world_size());
  for (const std::string& host : placement.hosts) EXPECT_EQ(host, process_identity().host);
  EXPECT_EQ(hosts(ctx), placement.hosts);
  EXPECT_EQ(placement.num_nodes, 1);
  EXPECT_EQ(placement.local_rank, world_rank());
  EXPECT_EQ(placement.local_size, world_size());
  const auto& members = dynamic_cast<MpiProcessGroup&>(*ctx.tp).members();
  EXPECT_FALSE(members.spans_nodes());
  EXPECT_EQ(members.world_ranks, std::vector<int>{world_rank()});
  EXPECT_NE(describe_placement(ctx).find("node 0 " + process_identity().host + ": ranks 0"),
            std::string::npos)
      << describe_placement(ctx);
  EXPECT_GE(mpi_thread_level(), MpiThreadLevel::Funneled);
  if (world_rank() == 0)
    std::printf("MPI thread level: %s\n%s", to_string(mpi_thread_level()),
                describe_placement(ctx).c_str());
}

TEST(FailureHandling, WatchdogStaysQuietWhileCallsFinish) {
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  FailureOptions options;
  options.collective_timeout_s = 5;
  auto watchdog = install_failure_handling(ctx, options);
  if (!std::getenv("ALEM_COLLECTIVE_TIMEOUT_S")) {
    EXPECT_EQ(watchdog->timeout_s(), 5.0);
  }
  std::vector<float> data(1000, 1.f);
  for (int i = 0; i < 200; ++i) ctx.world->all_reduce(data.data(), data.size());
  EXPECT_TRUE(all_ranks_agree(true));
}

TEST(MpiTestHarness, AllRanksAgreeIsAnAnd) {
  EXPECT_TRUE(all_ranks_agree(true));
  EXPECT_EQ(all_ranks_agree(world_rank() != world_size() - 1), false);
}

}  // namespace
}  // namespace alem
