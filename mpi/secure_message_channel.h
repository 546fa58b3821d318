// The data-parallel router's channel, encrypted between hosts: a MessageChannel decorator that
// seals every message to or from a world rank on another node with AES-256-GCM, so requests
// (prompts) and their tokens never cross the wire in the clear, and leaves messages inside a node
// as they are. It uses the pairwise keys the confidential start-up agreed (the same keys as the
// secure process groups, mpi/secure_process_group.h), each derived once more for this channel:
//   key   = HKDF(pair key, "alem-group-key-v1" || "dp-channel" || instance)
//   nonce = sender's world rank (32 bits) || per-destination message counter (64 bits)
//   AAD   = "alem-dp-channel-v1" || source world rank || destination world rank || counter
// The receiver expects the counters of each sender in order (messages between two ranks arrive
// in the order they were sent), so a replayed, dropped, reordered or redirected message fails
// authentication; recv() then throws alem::Error naming the peer, and the job's failure handling
// ends the job. Wire format of a sealed message: ciphertext || 16-byte tag.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "mpi/message_channel.h"
#include "mpi/parallel_context.h"
#include "mpi/secure_process_group.h"

namespace alem {

class SecureMessageChannel final : public MessageChannel {
 public:
  // `nodes[r]`: the node of world rank r (ranks with the same number share a node and are not
  // encrypted between each other). Every rank must wrap its channel at the same point (the
  // channel's key instance is numbered like a group's).
  SecureMessageChannel(std::unique_ptr<MessageChannel> inner, std::vector<int> nodes,
                       std::shared_ptr<SecureChannelKeys> keys);
  ~SecureMessageChannel() override;

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void send(int destination, const std::vector<uint8_t>& bytes) override;
  std::optional<ChannelMessage> recv() override;
  void close() override { inner_->close(); }

  bool encrypts_to(int world_rank) const;
  uint64_t messages_encrypted() const { return messages_encrypted_; }
  uint64_t messages_decrypted() const { return messages_decrypted_; }

 private:
  struct Peer;
  Peer* peer(int world_rank) const;

  std::unique_ptr<MessageChannel> inner_;
  std::vector<int> nodes_;
  std::vector<std::unique_ptr<Peer>> peers_;  // by world rank; null where not encrypted
  std::atomic<uint64_t> messages_encrypted_{0}, messages_decrypted_{0};
};

// Wraps `channel` when the job spans nodes and `keys` holds keys (a confidential session that
// encrypts); returns it unchanged otherwise. Collective in effect: every rank calls it. The
// node of each world rank comes from ctx's world group.
std::unique_ptr<MessageChannel> make_secure_channel(std::unique_ptr<MessageChannel> channel,
                                                    const ParallelContext& ctx,
                                                    std::shared_ptr<SecureChannelKeys> keys,
                                                    const SecureGroupOptions& options = {});

}  // namespace alem
