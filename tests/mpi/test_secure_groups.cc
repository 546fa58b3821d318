// ranks: 2 4
// The encrypted inter-node channel under mpirun. All ranks share this machine, so the tests use
// the explicit knob (--encrypt-interconnect always: every rank is its own node) to force the
// encrypted path. Checked: the confidential start-up (sandbox evidence, bundle, verification,
// key agreement) wraps every group; all_reduce / all_gather / broadcast / send-recv through the
// encrypted path equal the clear path on the same data (and the values every rank computes for
// itself); the sharded model's greedy tokens with encryption equal the single-rank reference; a
// flipped ciphertext byte and a replayed message make the receiver fail with an error naming
// the peer; nonces never repeat and the counters count every message; no NCCL (device) group is
// made over a tensor-parallel group that encrypts between hosts.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "confidential/cluster_bundle.h"
#include "confidential/key_agreement.h"
#include "core/error.h"
#include "engine/generator.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "mpi/mpi_context.h"
#include "mpi/nccl_process_group.h"
#include "mpi/secure_process_group.h"
#include "mpi_test.h"
#include "test_env.h"

namespace alem {
namespace {

namespace cc = confidential;
using test::all_ranks_agree;
using test::world_rank;
using test::world_size;

cc::ConfidentialOptions sandbox_always() {
  cc::ConfidentialOptions o;
  o.mode = "sandbox";
  o.encryption = cc::InterconnectEncryption::kAlways;
  o.job_id = "test-secure-channel";
  o.model_digest = std::vector<uint8_t>(32, 0x5a);
  o.config_digest = std::vector<uint8_t>(32, 0x3c);
  return o;
}

// Layouts that fit the job: the world alone, and tp x pp when there are 4 ranks.
std::vector<ParallelLayout> layouts() {
  std::vector<ParallelLayout> out = {ParallelLayout(1, world_size(), 1)};
  if (world_size() == 4) out.emplace_back(2, 2, 1);
  if (world_size() == 2) out.emplace_back(2, 1, 1);
  return out;
}

float value(int rank, size_t i) {
  return static_cast<float>((rank * 13 + i * 7) % 97);
}

// Runs every kind of call on `g` and returns what this rank ended up with, byte for byte.
std::vector<uint8_t> exercise(ProcessGroup& g) {
  std::vector<uint8_t> out;
  auto append = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  };
  for (size_t count : {size_t{1}, size_t{3}, size_t{1000}, size_t{100003}}) {
    std::vector<float> sum(count), max(count);
    for (size_t i = 0; i < count; ++i) sum[i] = max[i] = value(g.rank(), i);
    g.all_reduce(sum.data(), count, ReduceOp::Sum);
    g.all_reduce(max.data(), count, ReduceOp::Max);
    append(sum.data(), count * 4);
    append(max.data(), count * 4);
    // Independent expectation: every rank knows every contribution.
    for (size_t i = 0; i < count; ++i) {
      float s = 0, m = -1;
      for (int r = 0; r < g.size(); ++r) s += value(r, i), m = std::max(m, value(r, i));
      EXPECT_EQ(sum[i], s) << g.name() << " all_reduce sum at " << i;
      EXPECT_EQ(max[i], m) << g.name() << " all_reduce max at " << i;
      if (sum[i] != s || max[i] != m) break;
    }
  }
  for (size_t bytes : {size_t{1}, size_t{4096}, size_t{70001}}) {
    std::vector<uint8_t> mine(bytes), all(bytes * static_cast<size_t>(g.size()));
    for (size_t i = 0; i < bytes; ++i) mine[i] = static_cast<uint8_t>(g.rank() * 31 + i);
    g.all_gather(mine.data(), bytes, all.data());
    append(all.data(), all.size());
    for (int r = 0; r < g.size(); ++r)
      EXPECT_EQ(all[static_cast<size_t>(r) * bytes + bytes - 1],
                static_cast<uint8_t>(r * 31 + bytes - 1));
    for (int root = 0; root < g.size(); ++root) {
      std::vector<uint8_t> data(bytes, 0);
      if (g.rank() == root)
        for (size_t i = 0; i < bytes; ++i) data[i] = static_cast<uint8_t>(root + i * 3);
      g.broadcast(data.data(), bytes, root);
      append(data.data(), data.size());
      EXPECT_EQ(data[bytes - 1], static_cast<uint8_t>(root + (bytes - 1) * 3));
    }
  }
  if (g.size() > 1) {  // a ring of sends on two tags, even ranks first
    const int right = (g.rank() + 1) % g.size(), left = (g.rank() + g.size() - 1) % g.size();
    for (int tag : {7, 8}) {
      std::vector<uint8_t> msg(5000, static_cast<uint8_t>(g.rank() + tag)), got(5000);
      if (g.rank() % 2 == 0) {
        g.send(msg.data(), msg.size(), right, tag);
        g.recv(got.data(), got.size(), left, tag);
      } else {
        g.recv(got.data(), got.size(), left, tag);
        g.send(msg.data(), msg.size(), right, tag);
      }
      EXPECT_EQ(got[4999], static_cast<uint8_t>(left + tag));
      append(got.data(), got.size());
    }
  }
  return out;
}

TEST(SecureChannel, EncryptedCollectivesEqualTheClearPath) {
  ALEM_REQUIRE_RANKS(2);
  for (const ParallelLayout& layout : layouts()) {
    ParallelContext clear = make_mpi_context(layout);
    ParallelContext secure = make_mpi_context(layout);
    const cc::ConfidentialSession session =
        cc::establish_confidential_session(secure, sandbox_always());
    bool ok =
        session.bundle.ranks_size() == world_size() && session.peers_keyed == world_size() - 1;
    EXPECT_TRUE(ok) << "peers keyed " << session.peers_keyed;
    EXPECT_EQ(session.sealing_key.has_value(), world_rank() == 0);
    ProcessGroup* clear_groups[] = {clear.world.get(), clear.tp.get(), clear.pp.get(),
                                    clear.dp.get()};
    ProcessGroup* secure_groups[] = {secure.world.get(), secure.tp.get(), secure.pp.get(),
                                     secure.dp.get()};
    for (int i = 0; i < 4; ++i) {
      auto* wrapped = dynamic_cast<SecureProcessGroup*>(secure_groups[i]);
      // Groups of one member need nothing; every larger group must be encrypted.
      const bool expect_wrapped = secure_groups[i]->size() > 1;
      EXPECT_EQ(wrapped != nullptr, expect_wrapped) << secure_groups[i]->name();
      ok = ok && (wrapped != nullptr) == expect_wrapped;
      const std::vector<uint8_t> a = exercise(*clear_groups[i]);
      const std::vector<uint8_t> b = exercise(*secure_groups[i]);
      EXPECT_EQ(a, b) << "group " << secure_groups[i]->name() << " of " << layout.describe();
      ok = ok && a == b && !::testing::Test::HasFailure();
      if (wrapped) {
        EXPECT_GT(wrapped->messages_encrypted(), 0u);
        EXPECT_GT(wrapped->messages_decrypted(), 0u);
      }
    }
    // Node placement still sees the hosts through the wrapper.
    EXPECT_EQ(node_placement(secure).hosts.size(), static_cast<size_t>(world_size()));
    ASSERT_TRUE(all_ranks_agree(ok));
  }
}

TEST(SecureChannel, NeverLeavesGroupsInTheClearAndOffModeDoesNotEncrypt) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, world_size(), 1));
  cc::ConfidentialOptions o = sandbox_always();
  o.encryption = cc::InterconnectEncryption::kNever;
  const cc::ConfidentialSession s = cc::establish_confidential_session(ctx, o);
  // All ranks share this host: auto would not encrypt either; never must not.
  bool ok =
      dynamic_cast<SecureProcessGroup*>(ctx.world.get()) == nullptr && s.groups_encrypted == 0;
  ParallelContext ctx2 = make_mpi_context(ParallelLayout(1, world_size(), 1));
  o.encryption = cc::InterconnectEncryption::kAuto;
  const cc::ConfidentialSession s2 = cc::establish_confidential_session(ctx2, o);
  ok = ok && dynamic_cast<SecureProcessGroup*>(ctx2.world.get()) == nullptr &&
       s2.groups_encrypted == 0 && s2.bundle.ranks_size() == world_size();
  EXPECT_TRUE(ok);
  ASSERT_TRUE(all_ranks_agree(ok));
}

// Every rank gets a key with every other rank from a fixed rule (this test is about the
// channel, not the key agreement), and groups that record their nonces.
std::shared_ptr<SecureChannelKeys> test_keys() {
  auto keys = std::make_shared<SecureChannelKeys>(world_rank());
  for (int r = 0; r < world_size(); ++r) {
    if (r == world_rank()) continue;
    ChannelKey k{};
    k[0] = static_cast<uint8_t>(std::min(r, world_rank()));
    k[1] = static_cast<uint8_t>(std::max(r, world_rank()));
    keys->set_pair_key(r, k);
  }
  return keys;
}

TEST(SecureChannel, NoncesNeverRepeatAndCountersCountEveryMessage) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, world_size(), 1));
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  options.record_nonces = true;
  secure_parallel_context(ctx, test_keys(), options);
  auto* g = dynamic_cast<SecureProcessGroup*>(ctx.world.get());
  ASSERT_NE(g, nullptr);
  exercise(*g);
  exercise(*g);
  bool ok = true;
  // Unique per key, i.e. per (peer, nonce): every pair of ranks has its own key.
  const std::vector<std::pair<int, GcmNonce>>& nonces = g->sent_nonces();
  std::set<std::pair<int, GcmNonce>> unique(nonces.begin(), nonces.end());
  EXPECT_EQ(unique.size(), nonces.size()) << "a nonce repeated under one key";
  ok = ok && unique.size() == nonces.size() && nonces.size() == g->messages_encrypted();
  uint64_t total = 0;
  for (int p = 0; p < g->size(); ++p) total += g->send_counter(p);
  EXPECT_EQ(total, g->messages_encrypted());
  ok = ok && total == g->messages_encrypted();
  // The first four bytes name this sender; the counters towards each peer run 0, 1, 2, ...
  std::vector<uint64_t> next(static_cast<size_t>(g->size()), 0);
  for (const auto& [peer, n] : nonces) {
    uint32_t sender = 0;
    uint64_t counter = 0;
    std::memcpy(&sender, n.data(), 4);
    std::memcpy(&counter, n.data() + 4, 8);
    ok = ok && sender == static_cast<uint32_t>(g->rank()) &&
         counter == next[static_cast<size_t>(peer)]++;
  }
  for (int p = 0; p < g->size(); ++p) ok = ok && next[static_cast<size_t>(p)] == g->send_counter(p);
  EXPECT_TRUE(ok);
  ASSERT_TRUE(all_ranks_agree(ok));
}

TEST(SecureChannel, NoDeviceGroupOverAnEncryptedTensorParallelGroup) {
  ALEM_REQUIRE_RANKS(2);
  // Clear: tp on one host may take an NCCL group (which needs a GPU here).
  ParallelContext clear = make_mpi_context(ParallelLayout(world_size(), 1, 1));
  EXPECT_FALSE(group_encrypts_between_hosts(*clear.tp));
  EXPECT_EQ(device_group_refusal(clear), "");
  // Encrypted between its members: refused, with the reason, before NCCL or CUDA is touched.
  ParallelContext ctx = make_mpi_context(ParallelLayout(world_size(), 1, 1));
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  secure_parallel_context(ctx, test_keys(), options);
  ASSERT_TRUE(group_encrypts_between_hosts(*ctx.tp));
  const std::string refusal = device_group_refusal(ctx);
  EXPECT_NE(refusal.find("encrypted"), std::string::npos) << refusal;
  EXPECT_NE(refusal.find("NCCL"), std::string::npos) << refusal;
  std::string why_not;
  EXPECT_FALSE(attach_device_groups(ctx, &why_not));
  EXPECT_EQ(ctx.tp_device, nullptr);
  EXPECT_FALSE(why_not.empty());
  ASSERT_TRUE(all_ranks_agree(!why_not.empty() && ctx.tp_device == nullptr));
}

TEST(SecureChannel, AFlippedCiphertextByteFailsTheReceiverNamingThePeer) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, world_size(), 1));
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  secure_parallel_context(ctx, test_keys(), options);
  auto* g = dynamic_cast<SecureProcessGroup*>(ctx.world.get());
  ASSERT_NE(g, nullptr);
  std::vector<float> data(256, 1.f);
  bool ok = true;
  if (world_rank() == 0) {
    g->corrupt_next_send_for_test(100);
    g->send(data.data(), data.size() * 4, 1, 3);
  } else if (world_rank() == 1) {
    std::string message;
    try {
      g->recv(data.data(), data.size() * 4, 0, 3);
    } catch (const Error& e) {
      message = e.message();
    }
    EXPECT_NE(message.find("from world rank 0"), std::string::npos) << message;
    EXPECT_NE(message.find("failed authentication"), std::string::npos) << message;
    ok = message.find("from world rank 0") != std::string::npos;
    // Nothing of the forged message is handed out.
    EXPECT_EQ(data[25], 0.f);
    ok = ok && data[25] == 0.f;
  }
  ASSERT_TRUE(all_ranks_agree(ok));
}

TEST(SecureChannel, AReplayedMessageFailsTheReceiver) {
  ALEM_REQUIRE_RANKS(2);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, world_size(), 1));
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  secure_parallel_context(ctx, test_keys(), options);
  auto* g = dynamic_cast<SecureProcessGroup*>(ctx.world.get());
  ASSERT_NE(g, nullptr);
  std::vector<uint8_t> data(64, 9);
  bool ok = true;
  if (world_rank() == 0) {
    g->send(data.data(), data.size(), 1, 4);
    g->replay_last_send_for_test();
  } else if (world_rank() == 1) {
    g->recv(data.data(), data.size(), 0, 4);  // the genuine one
    ok = data[63] == 9;
    std::string message;
    try {
      g->recv(data.data(), data.size(), 0, 4);
    } catch (const Error& e) {
      message = e.message();
    }
    EXPECT_NE(message.find("failed authentication (tag 4, sequence 1"), std::string::npos)
        << message;
    ok = ok && message.find("sequence 1") != std::string::npos;
  }
  ASSERT_TRUE(all_ranks_agree(ok));
}

// Greedy decoding with the encrypted channel equals the single-rank reference.
std::vector<int32_t> greedy(ShardedTransformer& model, ParallelContext& ctx,
                            const std::vector<int32_t>& prompt, int steps) {
  Generator generator(model, ctx, {});
  SamplingParams params;
  params.temperature = 0.f;
  params.ignore_eos = true;
  TokenCounts counts;
  Rng rng(1);
  StepSequence seq;
  seq.request_id = 1;
  seq.sample = true;
  for (int b = 0; b < model.num_kv_blocks(); ++b) seq.block_table.push_back(b);
  std::vector<int32_t> input = prompt, tokens;
  int32_t pos = 0;
  for (int s = 0; s < steps; ++s) {
    StepPlan plan;
    plan.tokens = input;
    seq.start_pos = pos;
    seq.num_tokens = static_cast<int32_t>(input.size());
    plan.sequences = {seq};
    StepLogits logits = model.forward(plan);
    const int32_t next = generator.sample_replicated(logits, params, counts, rng);
    tokens.push_back(next);
    pos += static_cast<int32_t>(input.size());
    input = {next};
  }
  return tokens;
}

bool tokens_match(const std::string& store_path, const ParallelLayout& layout,
                  const std::vector<int32_t>& prompt, int steps) {
  ModelStoreReader store(store_path);
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;  // exact comparison between layouts
  options.max_model_len = static_cast<int>(prompt.size()) + steps + 1;
  ParallelContext solo = make_solo_context();
  ShardedTransformer whole(store, solo, *backend, options);
  const std::vector<int32_t> expected = greedy(whole, solo, prompt, steps);

  ParallelContext ctx = make_mpi_context(layout);
  cc::ConfidentialOptions o = sandbox_always();
  o.model_digest = cc::from_hex(store.model_digest());
  const cc::ConfidentialSession session = cc::establish_confidential_session(ctx, o);
  ShardedTransformer sharded(store, ctx, *backend, options);
  const std::vector<int32_t> got = greedy(sharded, ctx, prompt, steps);
  EXPECT_EQ(got, expected) << layout.describe();
  uint64_t encrypted = 0;
  for (ProcessGroup* g : {ctx.tp.get(), ctx.pp.get()})
    if (auto* s = dynamic_cast<SecureProcessGroup*>(g)) encrypted += s->messages_encrypted();
  EXPECT_GT(encrypted, 0u) << "the model's traffic did not go through the encrypted channel";
  return got == expected && encrypted > 0;
}

TEST(SecureChannel, ShardedGreedyTokensAreIdenticalWithEncryption) {
  ALEM_REQUIRE_RANKS(2);
  bool ok = true;
  if (world_size() == 2) {
    const std::vector<int32_t> prompt = {504, 3575, 282, 4649, 314, 9493, 30, 378};
    ok = tokens_match(test::model_path(), ParallelLayout(1, 2, 1), prompt, 6);
  } else if (world_size() == 4) {
    const std::string path = (std::filesystem::temp_directory_path() /
                              ("alem-tiny-secure-" + std::to_string(::getpid()) + ".h5"))
                                 .string();
    ConvertOptions convert_options;
    convert_options.dtype = DType::F32;
    convert_safetensors(test::data_dir() + "/tiny-llama", path, convert_options);
    ok = tokens_match(path, ParallelLayout(2, 2, 1), {5, 17, 42, 99, 3, 250, 77}, 12);
    std::filesystem::remove(path);
  } else {
    GTEST_SKIP() << "runs at 2 and 4 ranks";
  }
  ASSERT_TRUE(all_ranks_agree(ok));
}

}  // namespace
}  // namespace alem
