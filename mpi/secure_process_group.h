// The encrypted inter-node channel: a ProcessGroup decorator that encrypts and authenticates
// every message between members on different hosts (AES-256-GCM, OpenSSL EVP with AES-NI), and
// leaves messages inside a host in the clear. A group whose members all share a host is not
// wrapped at all (zero cost). Collectives of a wrapped group run over encrypted point-to-point
// messages (ring all-reduce and all-gather, binomial-tree broadcast), so no clear tensor ever
// leaves a host.
//
// Keys: every pair of world ranks that needs one has a 32-byte pairwise key, agreed by attested
// ranks (src/confidential/key_agreement.h). Each wrapped group derives its own key per pair with
// HKDF-SHA256 over (pair key, group name, group instance), so several groups (world, tp, pp, dp,
// and groups made later) never share a key. Under a group key:
//   nonce (96 bits) = sender's group rank (32 bits, little-endian) || per-peer, per-direction
//                     message counter (64 bits, little-endian), so nonces never repeat;
//   AAD             = "alem-channel-v1" || group name || src || dst || tag || sequence, where the
//                     sequence counts messages per (peer, tag) and is tracked by the receiver, so
//                     a replayed, reordered or redirected message fails authentication.
// A message that fails authentication throws alem::Error naming the peer (world rank and host);
// the job's failure handling turns that into an abort of the whole job.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mpi/mpi_process_group.h"
#include "mpi/parallel_context.h"
#include "mpi/secure_crypto.h"

namespace alem {

// Pairwise keys of this rank and the bookkeeping shared by the groups it wraps. Thread-safe.
class SecureChannelKeys {
 public:
  explicit SecureChannelKeys(int world_rank) : world_rank_(world_rank) {}
  ~SecureChannelKeys();
  SecureChannelKeys(const SecureChannelKeys&) = delete;
  SecureChannelKeys& operator=(const SecureChannelKeys&) = delete;

  int world_rank() const { return world_rank_; }
  void set_pair_key(int peer_world_rank, const ChannelKey& key);
  bool has_pair_key(int peer_world_rank) const;
  // The key for this group instance and peer: HKDF(pair key, "alem-group-key-v1" || name ||
  // instance). Throws alem::Error naming the peer when no pair key was agreed with it.
  ChannelKey group_key(int peer_world_rank, const std::string& group_name, uint64_t instance) const;
  // Numbers the groups of one name in the order they are wrapped (all ranks wrap in the same
  // order, so members of a group agree on its instance).
  uint64_t next_instance(const std::string& group_name);

 private:
  int world_rank_;
  mutable std::mutex mutex_;
  std::map<int, ChannelKey> pair_keys_;
  std::map<std::string, uint64_t> instances_;
};

struct SecureGroupOptions {
  // Test and benchmark knob: treat every rank as its own node, so that every pair of members is
  // encrypted even when all ranks share one machine. Off in production.
  bool treat_every_rank_as_own_node = false;
  // Keep every nonce this group sends (for the nonce-uniqueness test). Off in production.
  bool record_nonces = false;
};

class SecureProcessGroup final : public ProcessGroup {
 public:
  // Tags >= kFirstReservedTag are used by the collectives; user messages must stay below.
  static constexpr int kFirstReservedTag = 32000;

  SecureProcessGroup(std::unique_ptr<ProcessGroup> inner, GroupMembers members,
                     std::shared_ptr<SecureChannelKeys> keys, const SecureGroupOptions& options);
  ~SecureProcessGroup() override;

  std::string name() const override { return inner_->name(); }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }

  void all_reduce(float* data, size_t count, ReduceOp op = ReduceOp::Sum) override;
  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override;
  void broadcast(void* data, size_t bytes, int root) override;
  void send(const void* data, size_t bytes, int dst, int tag) override;
  void recv(void* data, size_t bytes, int src, int tag) override;
  void barrier() override { inner_->barrier(); }
  // Pairwise exchanges in all_to_all_rounds() rounds (process_group.h), encrypted towards
  // members on other hosts and in the clear (through the inner group) within a host.
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override;

  const ProcessGroup& inner() const { return *inner_; }
  const GroupMembers& members() const { return members_; }
  // True when messages to group rank `peer` are encrypted.
  bool encrypts_to(int peer) const;

  // Observability and test hooks.
  uint64_t send_counter(int peer) const;  // messages sent to `peer` so far (next nonce)
  uint64_t messages_encrypted() const { return messages_encrypted_; }
  uint64_t messages_decrypted() const { return messages_decrypted_; }
  // (peer group rank, nonce) of every message sent, with record_nonces. Nonces are unique per
  // peer: each peer pair has its own key.
  const std::vector<std::pair<int, GcmNonce>>& sent_nonces() const { return sent_nonces_; }
  // The next encrypted message sent gets byte `offset` of its ciphertext (or tag) flipped.
  void corrupt_next_send_for_test(size_t offset);
  // Sends the last encrypted message again, byte for byte (a replay).
  void replay_last_send_for_test();

 private:
  struct Peer;
  Peer& peer(int group_rank);
  void send_encrypted(const void* data, size_t bytes, int dst, int tag);
  void recv_encrypted(void* data, size_t bytes, int src, int tag);
  // Even ranks send first, odd ranks receive first: a ring never deadlocks.
  void exchange(const void* out, size_t out_bytes, int dst, void* in, size_t in_bytes, int src,
                int tag);
  std::string describe_peer(int group_rank) const;

  std::unique_ptr<ProcessGroup> inner_;
  GroupMembers members_;
  std::shared_ptr<SecureChannelKeys> keys_;
  SecureGroupOptions options_;
  uint64_t instance_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;  // by group rank; null for self and clear peers
  uint64_t messages_encrypted_ = 0, messages_decrypted_ = 0;
  std::vector<std::pair<int, GcmNonce>> sent_nonces_;
  std::vector<uint8_t> wire_;  // staging buffer for one message
  bool corrupt_next_ = false;
  size_t corrupt_offset_ = 0;
  std::vector<uint8_t> last_wire_;
  int last_dst_ = -1, last_tag_ = -1;
};

// True when the group `members` has at least one pair of members on different nodes (or, with
// the test knob, at least two members).
bool group_needs_encryption(const GroupMembers& members, const SecureGroupOptions& options);

// Wraps `inner` when group_needs_encryption, else returns it unchanged (zero cost).
std::unique_ptr<ProcessGroup> make_secure_group(std::unique_ptr<ProcessGroup> inner,
                                                const GroupMembers& members,
                                                std::shared_ptr<SecureChannelKeys> keys,
                                                const SecureGroupOptions& options = {});

// Wraps ctx.world, tp, pp, dp and ep (in that order, on every rank: collective in effect). The
// groups must be MPI groups made by make_mpi_context. Returns how many groups were wrapped here.
int secure_parallel_context(ParallelContext& ctx, std::shared_ptr<SecureChannelKeys> keys,
                            const SecureGroupOptions& options = {});

// True when `group` is a SecureProcessGroup that encrypts messages to at least one of its
// members (they are on another host, or the test knob is on). A device group (NCCL) made over
// such a group would carry its tensors between hosts in the clear, so none is made
// (attach_device_groups, mpi/nccl_process_group.h).
bool group_encrypts_between_hosts(const ProcessGroup& group);

// The world ranks this rank needs a pairwise key with: members of its world group on another
// node (every other rank with the test knob).
std::vector<int> peers_needing_keys(const ParallelContext& ctx, const SecureGroupOptions& options);

}  // namespace alem
