// ranks: 1 2 3 4
// ProcessGroup::all_to_all under mpirun, on every backend that runs here
// (tests/all_to_all_conformance.h): the MPI groups of every layout that fits the job (world, tp,
// pp, dp), the same with 12-byte MPI pieces (the multi-round path), the encrypted channel
// (every rank its own node, so every block between ranks is sealed; a tampered block is refused
// by its receiver), and NCCL when this machine
// has a GPU per rank (skipped otherwise). Each rank computes what it must receive; verdicts are
// all-reduced.
#include <gtest/gtest.h>

#include <array>

#include "all_to_all_conformance.h"
#include "core/error.h"
#include "kernels/backend.h"
#include "mpi/mpi_context.h"
#include "mpi/nccl_process_group.h"
#include "mpi/secure_process_group.h"
#include "mpi_test.h"

namespace alem {
namespace {

using test::all_ranks_agree;
using test::world_size;

std::vector<ParallelLayout> layouts() {
  const int n = world_size();
  std::vector<ParallelLayout> out = {ParallelLayout(n, 1, 1), ParallelLayout(1, n, 1),
                                     ParallelLayout(1, 1, n)};
  if (n == 4) out.emplace_back(2, 2, 1);
  return out;
}

int check_context(ParallelContext& ctx, size_t scale) {
  int bad = 0;
  for (ProcessGroup* g : {ctx.world.get(), ctx.tp.get(), ctx.pp.get(), ctx.dp.get()}) {
    bad += test::check_all_to_all(*g, scale);
  }
  return bad;
}

TEST(AllToAllMpi, EveryGroupOfEveryLayout) {
  int bad = 0;
  for (const ParallelLayout& layout : layouts()) {
    ParallelContext ctx = make_mpi_context(layout);
    for (size_t scale : {size_t{1}, size_t{1000}, size_t{300000}}) bad += check_context(ctx, scale);
  }
  EXPECT_EQ(bad, 0);
  ASSERT_TRUE(all_ranks_agree(bad == 0));
}

TEST(AllToAllMpi, SmallMessagePiecesTakeSeveralRounds) {
  MpiContextOptions options;
  options.max_message_bytes = 12;
  int bad = 0;
  for (const ParallelLayout& layout : layouts()) {
    ParallelContext ctx = make_mpi_context(layout, options);
    for (size_t scale : {size_t{1}, size_t{5}}) bad += check_context(ctx, scale);
  }
  EXPECT_EQ(bad, 0);
  ASSERT_TRUE(all_ranks_agree(bad == 0));
}

// Pairwise keys made up for the test (the real ones come from attested key agreement): the
// same 32 bytes on both ends of each pair.
std::shared_ptr<SecureChannelKeys> test_keys(int me, int n) {
  auto keys = std::make_shared<SecureChannelKeys>(me);
  for (int peer = 0; peer < n; ++peer) {
    if (peer == me) continue;
    ChannelKey key{};
    for (size_t i = 0; i < key.size(); ++i)
      key[i] = static_cast<uint8_t>(std::min(me, peer) * 31 + std::max(me, peer) * 7 + i);
    keys->set_pair_key(peer, key);
  }
  return keys;
}

TEST(AllToAllMpi, EncryptedChannelSealsEveryBlock) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, world_size()));
  const GroupMembers members = dynamic_cast<MpiProcessGroup&>(*ctx.world).members();
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  auto group = make_secure_group(std::move(ctx.world), members,
                                 test_keys(ctx.world_rank, world_size()), options);
  auto* secure = dynamic_cast<SecureProcessGroup*>(group.get());
  ASSERT_NE(secure, nullptr);
  int bad = 0;
  for (size_t scale : {size_t{1}, size_t{1000}, size_t{70000}}) {
    bad += test::check_all_to_all(*group, scale);
  }
  // Every non-empty block to another rank went out sealed (the counts, too), and every sealed
  // message was opened by its receiver: the totals over the ranks agree.
  EXPECT_GT(secure->messages_encrypted(), 0u);
  float totals[2] = {static_cast<float>(secure->messages_encrypted()),
                     static_cast<float>(secure->messages_decrypted())};
  group->all_reduce(totals, 2);
  EXPECT_EQ(totals[0], totals[1]);
  EXPECT_EQ(bad, 0);
  ASSERT_TRUE(all_ranks_agree(bad == 0));
}

// A block flipped on the wire between hosts is refused by its receiver, naming the sender; the
// other members finish (only rank 0 -> rank 1 carries data, so nobody waits on the refuser).
TEST(AllToAllMpi, EncryptedChannelRefusesATamperedBlock) {
  ALEM_REQUIRE_RANKS(2);
  const int n = world_size();
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, n));
  const GroupMembers members = dynamic_cast<MpiProcessGroup&>(*ctx.world).members();
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  auto group =
      make_secure_group(std::move(ctx.world), members, test_keys(ctx.world_rank, n), options);
  auto* secure = dynamic_cast<SecureProcessGroup*>(group.get());
  ASSERT_NE(secure, nullptr);
  const int me = group->rank();
  std::vector<size_t> send_bytes(static_cast<size_t>(n), 0), recv_bytes(send_bytes);
  if (me == 0) send_bytes[1] = 64;
  if (me == 1) recv_bytes[0] = 64;
  std::vector<uint8_t> out(64, 0x5a), in(64, 0);
  if (me == 0) secure->corrupt_next_send_for_test(7);
  std::string error;
  try {
    group->all_to_all(out.data(), send_bytes, in.data(), recv_bytes);
  } catch (const Error& e) {
    error = e.message();
  }
  bool ok;
  if (me == 1) {
    ok = error.find("failed authentication") != std::string::npos &&
         error.find("world rank 0") != std::string::npos;
    EXPECT_TRUE(ok) << "rank 1 accepted a tampered block or named no sender: '" << error << "'";
    EXPECT_EQ(in, std::vector<uint8_t>(64, 0)) << "tampered plaintext reached the caller";
    ok = ok && in == std::vector<uint8_t>(64, 0);
  } else {
    ok = error.empty();
    EXPECT_TRUE(ok) << error;
  }
  ASSERT_TRUE(all_ranks_agree(ok));
}

TEST(AllToAllMpi, NcclOnGpus) {
  std::unique_ptr<KernelBackend> cuda;
  int gpus = 0;
  if (nccl_available()) {
    try {
      cuda = make_backend("cuda");
      gpus = cuda ? 1 : 0;
    } catch (const Error&) {
      gpus = 0;
    }
  }
  // NCCL needs a GPU of its own per rank; one machine here has at most one.
  if (!all_ranks_agree(gpus > 0) || world_size() > 1) {
    GTEST_SKIP() << "NCCL all_to_all needs one GPU per rank (this job: " << world_size()
                 << " ranks, GPU " << (gpus > 0 ? "present" : "absent") << ")";
  }
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, 1));
  auto nccl = make_nccl_group(*ctx.world);
  test::A2aMemory memory;
  std::vector<std::unique_ptr<BackendBuffer>> buffers;
  memory.alloc = [&](size_t bytes) {
    buffers.push_back(cuda->allocate_buffer(bytes, BufferKind::kScratch));
    return buffers.back()->data();
  };
  memory.upload = [&](void* dst, const void* src, size_t bytes) { cuda->upload(dst, src, bytes); };
  memory.download = [&](void* dst, const void* src, size_t bytes) {
    cuda->download(dst, src, bytes);
  };
  memory.release = [](void*) {};
  EXPECT_EQ(test::check_all_to_all(*nccl, 1000, /*exchange_counts=*/false, memory), 0);
}

}  // namespace
}  // namespace alem
