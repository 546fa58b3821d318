// SecureMessageChannel: per-peer AES-256-GCM state for the data-parallel router's channel and
// the wire format of one sealed message. See secure_message_channel.h for the scheme.
#include "mpi/secure_message_channel.h"

#include <string>
#include <string_view>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "mpi/mpi_process_group.h"

namespace alem {

namespace {

constexpr std::string_view kChannelName = "dp-channel";
constexpr std::string_view kAadLabel = "alem-dp-channel-v1";

void put_u32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

GcmNonce make_nonce(int sender, uint64_t counter) {
  GcmNonce nonce{};
  put_u32(nonce.data(), static_cast<uint32_t>(sender));
  put_u64(nonce.data() + 4, counter);
  return nonce;
}

std::vector<uint8_t> make_aad(int source, int destination, uint64_t counter) {
  std::vector<uint8_t> aad(kAadLabel.begin(), kAadLabel.end());
  const size_t label = aad.size();
  aad.resize(label + 16);
  put_u32(aad.data() + label, static_cast<uint32_t>(source));
  put_u32(aad.data() + label + 4, static_cast<uint32_t>(destination));
  put_u64(aad.data() + label + 8, counter);
  return aad;
}

}  // namespace

struct SecureMessageChannel::Peer {
  std::mutex send_mutex;  // one sender at a time: counters go on the wire in order
  AesGcm sealer;
  uint64_t sent = 0;
  std::mutex recv_mutex;
  AesGcm opener;
  uint64_t received = 0;
  explicit Peer(const ChannelKey& key) : sealer(key, true), opener(key, false) {}
};

SecureMessageChannel::SecureMessageChannel(std::unique_ptr<MessageChannel> inner,
                                           std::vector<int> nodes,
                                           std::shared_ptr<SecureChannelKeys> keys)
    : inner_(std::move(inner)), nodes_(std::move(nodes)) {
  ALEM_CHECK(inner_ && keys, "SecureMessageChannel needs a channel and keys");
  ALEM_CHECK(static_cast<int>(nodes_.size()) == inner_->size(),
             "SecureMessageChannel: " + std::to_string(nodes_.size()) + " node entries for " +
                 std::to_string(inner_->size()) + " ranks");
  const uint64_t instance = keys->next_instance(std::string(kChannelName));
  const int me = inner_->rank();
  peers_.resize(nodes_.size());
  for (int r = 0; r < size(); ++r) {
    if (r == me || nodes_[static_cast<size_t>(r)] == nodes_[static_cast<size_t>(me)]) continue;
    ChannelKey key = keys->group_key(r, std::string(kChannelName), instance);
    peers_[static_cast<size_t>(r)] = std::make_unique<Peer>(key);
    secure_wipe(key.data(), key.size());
  }
}

SecureMessageChannel::~SecureMessageChannel() = default;

SecureMessageChannel::Peer* SecureMessageChannel::peer(int world_rank) const {
  if (world_rank < 0 || world_rank >= static_cast<int>(peers_.size())) return nullptr;
  return peers_[static_cast<size_t>(world_rank)].get();
}

bool SecureMessageChannel::encrypts_to(int world_rank) const {
  return peer(world_rank) != nullptr;
}

void SecureMessageChannel::send(int destination, const std::vector<uint8_t>& bytes) {
  Peer* p = peer(destination);
  if (!p) return inner_->send(destination, bytes);
  std::vector<uint8_t> wire(bytes.size() + kGcmTagBytes);
  std::lock_guard<std::mutex> lock(p->send_mutex);
  ALEM_CHECK(p->sent != UINT64_MAX, "dp channel: nonce counter towards world rank " +
                                        std::to_string(destination) + " is exhausted");
  const uint64_t counter = p->sent++;
  p->sealer.seal(make_nonce(rank(), counter), make_aad(rank(), destination, counter), bytes,
                 wire.data(), wire.data() + bytes.size());
  ++messages_encrypted_;
  inner_->send(destination, wire);
}

std::optional<ChannelMessage> SecureMessageChannel::recv() {
  std::optional<ChannelMessage> message = inner_->recv();
  if (!message) return message;
  Peer* p = peer(message->source);
  if (!p) return message;
  std::vector<uint8_t>& wire = message->bytes;
  ALEM_CHECK(wire.size() >= kGcmTagBytes,
             "dp channel: a message from world rank " + std::to_string(message->source) +
                 " is shorter than its authentication tag; aborting the job");
  const size_t length = wire.size() - kGcmTagBytes;
  std::lock_guard<std::mutex> lock(p->recv_mutex);
  const uint64_t counter = p->received;
  const bool ok = p->opener.open(make_nonce(message->source, counter),
                                 make_aad(message->source, rank(), counter), {wire.data(), length},
                                 wire.data() + length, wire.data());
  ALEM_CHECK(ok, "dp channel: message " + std::to_string(counter) + " from world rank " +
                     std::to_string(message->source) + " to world rank " + std::to_string(rank()) +
                     " failed authentication (" + std::to_string(length) +
                     " bytes): it was tampered with, replayed, dropped or reordered between the "
                     "nodes; aborting the job");
  p->received = counter + 1;
  secure_wipe(wire.data() + length, kGcmTagBytes);
  wire.resize(length);
  ++messages_decrypted_;
  return message;
}

std::unique_ptr<MessageChannel> make_secure_channel(std::unique_ptr<MessageChannel> channel,
                                                    const ParallelContext& ctx,
                                                    std::shared_ptr<SecureChannelKeys> keys,
                                                    const SecureGroupOptions& options) {
  if (!channel || !keys) return channel;
  const ProcessGroup* world = ctx.world.get();
  if (const auto* secure = dynamic_cast<const SecureProcessGroup*>(world)) world = &secure->inner();
  const auto* mpi = dynamic_cast<const MpiProcessGroup*>(world);
  if (!mpi) return channel;
  std::vector<int> nodes = mpi->members().nodes;
  if (options.treat_every_rank_as_own_node) {
    for (size_t r = 0; r < nodes.size(); ++r) nodes[r] = static_cast<int>(r);
  }
  bool spans = false;
  for (int n : nodes) spans = spans || n != nodes.front();
  if (!spans) return channel;
  return std::make_unique<SecureMessageChannel>(std::move(channel), std::move(nodes),
                                                std::move(keys));
}

}  // namespace alem
