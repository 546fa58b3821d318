// The data-parallel router's channel sealed between hosts (mpi/secure_message_channel.h), over
// in-process channels with ranks placed on different "nodes": what crosses a node is ciphertext
// (a canary never shows on the wire) and comes back byte for byte; inside a node the wire is the
// message itself; a flipped byte, a replayed, dropped or redirected message is refused; many
// threads sending at once stay in order; a missing key is an error at start.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "core/error.h"
#include "mpi/message_channel.h"
#include "mpi/secure_message_channel.h"

namespace alem {
namespace {

// Sits between the secure channel and the in-process one: keeps what was sent, and can flip a
// byte of, drop, repeat or redirect the next message.
struct Wire {
  std::mutex mutex;
  std::vector<std::pair<int, std::vector<uint8_t>>> sent;  // (destination, bytes)
  bool flip_next = false, drop_next = false, repeat_next = false;
  int redirect_next_to = -1;  // deliver the next message to this rank instead
};

class TapChannel final : public MessageChannel {
 public:
  TapChannel(std::unique_ptr<MessageChannel> inner, std::shared_ptr<Wire> wire)
      : inner_(std::move(inner)), wire_(std::move(wire)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void send(int destination, const std::vector<uint8_t>& bytes) override {
    std::vector<uint8_t> out = bytes;
    bool drop = false, repeat = false;
    int to = destination;
    {
      std::lock_guard<std::mutex> lock(wire_->mutex);
      wire_->sent.emplace_back(destination, bytes);
      if (wire_->flip_next && !out.empty()) out[out.size() / 2] ^= 0x01;
      drop = wire_->drop_next;
      repeat = wire_->repeat_next;
      if (wire_->redirect_next_to >= 0) to = wire_->redirect_next_to;
      wire_->redirect_next_to = -1;
      wire_->flip_next = wire_->drop_next = wire_->repeat_next = false;
    }
    if (drop) return;
    inner_->send(to, out);
    if (repeat) inner_->send(to, out);
  }
  std::optional<ChannelMessage> recv() override { return inner_->recv(); }
  void close() override { inner_->close(); }

 private:
  std::unique_ptr<MessageChannel> inner_;
  std::shared_ptr<Wire> wire_;
};

ChannelKey pair_key(int a, int b) {
  ChannelKey key{};
  for (size_t i = 0; i < key.size(); ++i)
    key[i] = static_cast<uint8_t>(17 * std::min(a, b) + 31 * std::max(a, b) + i);
  return key;
}

// Ranks 0 and 1 share node 0; rank 2 is on node 1. Keys exist for pairs across nodes.
struct Cluster {
  std::vector<std::shared_ptr<Wire>> wires;
  std::vector<std::unique_ptr<SecureMessageChannel>> channels;

  explicit Cluster(std::vector<int> nodes = {0, 0, 1}) {
    const int n = static_cast<int>(nodes.size());
    auto locals = make_local_channels(n);
    for (int r = 0; r < n; ++r) {
      auto keys = std::make_shared<SecureChannelKeys>(r);
      for (int p = 0; p < n; ++p)
        if (p != r && nodes[static_cast<size_t>(p)] != nodes[static_cast<size_t>(r)])
          keys->set_pair_key(p, pair_key(r, p));
      wires.push_back(std::make_shared<Wire>());
      channels.push_back(std::make_unique<SecureMessageChannel>(
          std::make_unique<TapChannel>(std::move(locals[static_cast<size_t>(r)]), wires.back()),
          nodes, keys));
    }
  }
};

std::vector<uint8_t> bytes_of(const std::string& text) {
  return {text.begin(), text.end()};
}

bool contains(const std::vector<uint8_t>& haystack, const std::string& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) !=
         haystack.end();
}

const std::string kCanary = "canary-7f3a91c2-the-prompt-text";

TEST(SecureMessageChannel, SealsAcrossNodesAndLeavesANodeInTheClear) {
  Cluster c;
  EXPECT_FALSE(c.channels[0]->encrypts_to(1));
  EXPECT_TRUE(c.channels[0]->encrypts_to(2));
  EXPECT_TRUE(c.channels[2]->encrypts_to(1));

  c.channels[0]->send(2, bytes_of(kCanary));
  c.channels[2]->send(0, bytes_of(kCanary + " answer"));
  c.channels[0]->send(1, bytes_of(kCanary + " local"));

  auto at2 = c.channels[2]->recv();
  ASSERT_TRUE(at2);
  EXPECT_EQ(at2->source, 0);
  EXPECT_EQ(at2->bytes, bytes_of(kCanary));
  auto at0 = c.channels[0]->recv();
  ASSERT_TRUE(at0);
  EXPECT_EQ(at0->source, 2);
  EXPECT_EQ(at0->bytes, bytes_of(kCanary + " answer"));
  auto at1 = c.channels[1]->recv();
  ASSERT_TRUE(at1);
  EXPECT_EQ(at1->bytes, bytes_of(kCanary + " local"));

  // Rank 0 sent one sealed message (to rank 2) and one clear (to rank 1).
  ASSERT_EQ(c.wires[0]->sent.size(), 2u);
  EXPECT_EQ(c.wires[0]->sent[0].first, 2);
  EXPECT_FALSE(contains(c.wires[0]->sent[0].second, "canary"));
  EXPECT_EQ(c.wires[0]->sent[0].second.size(), kCanary.size() + kGcmTagBytes);
  EXPECT_EQ(c.wires[0]->sent[1].second, bytes_of(kCanary + " local"));
  EXPECT_FALSE(contains(c.wires[2]->sent[0].second, "canary"));
  EXPECT_EQ(c.channels[0]->messages_encrypted(), 1u);
  EXPECT_EQ(c.channels[0]->messages_decrypted(), 1u);
}

TEST(SecureMessageChannel, TheSameTextTwiceLooksDifferentOnTheWire) {
  Cluster c;
  c.channels[0]->send(2, bytes_of(kCanary));
  c.channels[0]->send(2, bytes_of(kCanary));
  EXPECT_NE(c.wires[0]->sent[0].second, c.wires[0]->sent[1].second);
  EXPECT_EQ(c.channels[2]->recv()->bytes, bytes_of(kCanary));
  EXPECT_EQ(c.channels[2]->recv()->bytes, bytes_of(kCanary));
}

TEST(SecureMessageChannel, RefusesAFlippedByte) {
  Cluster c;
  c.wires[0]->flip_next = true;
  c.channels[0]->send(2, bytes_of(kCanary));
  try {
    c.channels[2]->recv();
    FAIL() << "a tampered message was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("failed authentication"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("world rank 0"), std::string::npos) << e.what();
  }
}

TEST(SecureMessageChannel, RefusesAReplayedMessage) {
  Cluster c;
  c.wires[0]->repeat_next = true;
  c.channels[0]->send(2, bytes_of(kCanary));
  EXPECT_EQ(c.channels[2]->recv()->bytes, bytes_of(kCanary));
  EXPECT_THROW(c.channels[2]->recv(), Error);
}

TEST(SecureMessageChannel, RefusesTheMessageAfterADroppedOne) {
  Cluster c;
  c.wires[0]->drop_next = true;
  c.channels[0]->send(2, bytes_of("first"));
  c.channels[0]->send(2, bytes_of("second"));
  EXPECT_THROW(c.channels[2]->recv(), Error);
}

TEST(SecureMessageChannel, RefusesAMessageSealedForAnotherRank) {
  // Ranks 0, 1, 2 on three nodes: what rank 0 sealed for rank 1 is delivered to rank 2.
  Cluster c({0, 1, 2});
  c.wires[0]->redirect_next_to = 2;
  c.channels[0]->send(1, bytes_of(kCanary));
  EXPECT_THROW(c.channels[2]->recv(), Error);
}

std::string label(int thread, int index) {
  char text[32];
  std::snprintf(text, sizeof(text), "t%d-%d", thread, index);
  return text;
}

TEST(SecureMessageChannel, ManySendersStayInOrder) {
  Cluster c;
  constexpr int kThreads = 4, kPerThread = 50;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t)
    senders.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) c.channels[0]->send(2, bytes_of(label(t, i)));
    });
  std::vector<int> next(kThreads, 0);
  for (int k = 0; k < kThreads * kPerThread; ++k) {
    auto m = c.channels[2]->recv();
    ASSERT_TRUE(m);
    const std::string text(m->bytes.begin(), m->bytes.end());
    const int t = text[1] - '0';
    ASSERT_EQ(text, label(t, next[static_cast<size_t>(t)]));
    ++next[static_cast<size_t>(t)];
  }
  for (auto& s : senders) s.join();
}

TEST(SecureMessageChannel, AMissingKeyIsAnErrorAtStart) {
  auto locals = make_local_channels(2);
  auto keys = std::make_shared<SecureChannelKeys>(0);  // no pair key with rank 1
  try {
    SecureMessageChannel channel(std::move(locals[0]), {0, 1}, keys);
    FAIL() << "a channel without keys was made";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no agreed key with world rank 1"), std::string::npos)
        << e.what();
  }
}

TEST(SecureMessageChannel, CloseWakesABlockedReceiver) {
  Cluster c;
  std::thread closer([&] { c.channels[2]->close(); });
  EXPECT_FALSE(c.channels[2]->recv().has_value());
  closer.join();
}

}  // namespace
}  // namespace alem
