// The secure channel's primitives and its process-group decorator without MPI: AES-256-GCM and
// HKDF-SHA256 against published test vectors (NIST GCM test cases, RFC 5869), and the
// SecureProcessGroup over in-process fake groups (one thread per member) with members placed on
// different "nodes": collectives equal the clear fake group's, same-node groups stay unwrapped,
// and tampering with the key, the tag, or the group name is caught.
#include <gtest/gtest.h>

#include <cstring>
#include <thread>

#include "core/error.h"
#include "mpi/fake_process_group.h"
#include "mpi/secure_crypto.h"
#include "mpi/secure_process_group.h"

namespace alem {
namespace {

std::vector<uint8_t> hex(const std::string& text) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < text.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(text.substr(i, 2), nullptr, 16)));
  return out;
}

TEST(SecureCrypto, AesGcmMatchesNistTestCases13And14) {
  const ChannelKey key{};  // 32 zero bytes
  const GcmNonce nonce{};  // 12 zero bytes
  AesGcm sealer(key, true), opener(key, false);
  uint8_t tag[16];
  // Test case 13: empty plaintext.
  sealer.seal(nonce, {}, {}, nullptr, tag);
  EXPECT_EQ(std::vector<uint8_t>(tag, tag + 16), hex("530f8afbc74536b9a963b4f1c4cb738b"));
  // Test case 14: 16 zero bytes.
  const std::vector<uint8_t> zeros(16, 0);
  std::vector<uint8_t> ct(16);
  sealer.seal(nonce, {}, zeros, ct.data(), tag);
  EXPECT_EQ(ct, hex("cea7403d4d606b6e074ec5d3baf39d18"));
  EXPECT_EQ(std::vector<uint8_t>(tag, tag + 16), hex("d0d1c8a799996bf0265b98b5d48ab919"));
  std::vector<uint8_t> back(16, 0xff);
  EXPECT_TRUE(opener.open(nonce, {}, ct, tag, back.data()));
  EXPECT_EQ(back, zeros);
  ct[3] ^= 1;
  EXPECT_FALSE(opener.open(nonce, {}, ct, tag, back.data()));
  ct[3] ^= 1;
  const std::vector<uint8_t> aad = {1};
  EXPECT_FALSE(opener.open(nonce, aad, ct, tag, back.data()));
}

TEST(SecureCrypto, HkdfMatchesRfc5869TestCase1) {
  const std::vector<uint8_t> ikm(22, 0x0b);
  const std::vector<uint8_t> salt = hex("000102030405060708090a0b0c");
  const std::vector<uint8_t> info = hex("f0f1f2f3f4f5f6f7f8f9");
  std::vector<uint8_t> okm(42);
  hkdf_sha256(ikm, salt, info, okm);
  EXPECT_EQ(okm, hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b8"
                     "87185865"));
}

// n members, each its own node (or all on one node), over fake groups; `body` runs per member.
void run_group(int n, bool separate_nodes, const std::string& name,
               const std::function<void(ProcessGroup&, ProcessGroup&, int)>& body,
               bool mismatched_key_for_rank1 = false) {
  auto clear = make_fake_group(n, name, 30);
  auto inner = make_fake_group(n, name, 30);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        GroupMembers members;
        for (int m = 0; m < n; ++m) {
          members.world_ranks.push_back(m);
          members.hosts.push_back(
              std::string(1, 'h').append(std::to_string(separate_nodes ? m : 0)));
          members.nodes.push_back(separate_nodes ? m : 0);
        }
        auto keys = std::make_shared<SecureChannelKeys>(r);
        for (int p = 0; p < n; ++p) {
          if (p == r) continue;
          ChannelKey k{};
          k[0] = static_cast<uint8_t>(std::min(p, r));
          k[1] = static_cast<uint8_t>(std::max(p, r));
          if (mismatched_key_for_rank1 && r == 1) k[2] = 1;
          keys->set_pair_key(p, k);
        }
        auto g = make_secure_group(std::move(inner[static_cast<size_t>(r)]), members, keys);
        body(*clear[static_cast<size_t>(r)], *g, r);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < n; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "member " << r;
}

TEST(SecureProcessGroup, CollectivesOverEncryptedRingsEqualTheClearGroup) {
  for (int n : {2, 3, 5}) {
    run_group(n, true, "tp", [&](ProcessGroup& clear, ProcessGroup& secure, int r) {
      ASSERT_NE(dynamic_cast<SecureProcessGroup*>(&secure), nullptr);
      for (size_t count : {size_t{1}, size_t{4}, size_t{1001}}) {
        std::vector<float> a(count), b(count);
        for (size_t i = 0; i < count; ++i) a[i] = b[i] = static_cast<float>((r * 5 + i) % 17);
        clear.all_reduce(a.data(), count);
        secure.all_reduce(b.data(), count);
        EXPECT_EQ(a, b) << "n=" << n << " count=" << count;
        std::vector<uint8_t> mine(count, static_cast<uint8_t>(r + 1)), ga(count * n), gb(count * n);
        clear.all_gather(mine.data(), count, ga.data());
        secure.all_gather(mine.data(), count, gb.data());
        EXPECT_EQ(ga, gb);
        for (int root = 0; root < n; ++root) {
          std::vector<uint8_t> x(count, r == root ? 42 : 0), y = x;
          clear.broadcast(x.data(), count, root);
          secure.broadcast(y.data(), count, root);
          EXPECT_EQ(x, y);
        }
      }
    });
  }
}

TEST(SecureProcessGroup, AGroupOnOneNodeIsNotWrapped) {
  run_group(3, false, "tp", [](ProcessGroup&, ProcessGroup& secure, int) {
    EXPECT_EQ(dynamic_cast<SecureProcessGroup*>(&secure), nullptr);
  });
}

TEST(SecureProcessGroup, AWrongKeyIsCaughtAndNamesThePeer) {
  std::string seen;
  auto inner = make_fake_group(2, "pp", 30);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      GroupMembers members{{0, 1}, {"alpha", "beta"}, {0, 1}};
      auto keys = std::make_shared<SecureChannelKeys>(r);
      ChannelKey k{};
      k[0] = static_cast<uint8_t>(r);  // the two sides disagree
      keys->set_pair_key(1 - r, k);
      auto g = make_secure_group(std::move(inner[static_cast<size_t>(r)]), members, keys);
      std::vector<uint8_t> buf(32, 1);
      if (r == 0) {
        g->send(buf.data(), buf.size(), 1, 0);
      } else {
        try {
          g->recv(buf.data(), buf.size(), 0, 0);
        } catch (const Error& e) {
          seen = e.message();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_NE(seen.find("world rank 0 on host alpha"), std::string::npos) << seen;
  EXPECT_NE(seen.find("group 'pp'"), std::string::npos) << seen;
}

TEST(SecureProcessGroup, NoPairKeyMeansNoGroup) {
  auto inner = make_fake_group(2, "tp", 5);
  GroupMembers members{{0, 1}, {"a", "b"}, {0, 1}};
  auto keys = std::make_shared<SecureChannelKeys>(0);  // nothing agreed with rank 1
  try {
    make_secure_group(std::move(inner[0]), members, keys);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("no agreed key with world rank 1"), std::string::npos)
        << e.message();
  }
}

TEST(SecureProcessGroup, GroupKeysDifferPerGroupAndInstance) {
  SecureChannelKeys keys(0);
  keys.set_pair_key(1, ChannelKey{});
  EXPECT_NE(keys.group_key(1, "tp", 0), keys.group_key(1, "pp", 0));
  EXPECT_NE(keys.group_key(1, "tp", 0), keys.group_key(1, "tp", 1));
  EXPECT_EQ(keys.next_instance("tp"), 0u);
  EXPECT_EQ(keys.next_instance("tp"), 1u);
  EXPECT_EQ(keys.next_instance("pp"), 0u);
}

}  // namespace
}  // namespace alem
