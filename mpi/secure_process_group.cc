// SecureProcessGroup: per-peer AES-256-GCM state, the wire format of one encrypted message
// (8-byte counter || ciphertext || 16-byte tag), and the collectives over point-to-point
// messages used when a group spans hosts. See secure_process_group.h for the scheme.
#include "mpi/secure_process_group.h"

#include <algorithm>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "mpi/nccl_process_group.h"

namespace alem {

namespace {

constexpr std::string_view kAadLabel = "alem-channel-v1";
constexpr size_t kCounterBytes = 8;
constexpr int kTagAllReduce = SecureProcessGroup::kFirstReservedTag + 1;
constexpr int kTagAllGather = SecureProcessGroup::kFirstReservedTag + 2;
constexpr int kTagBroadcast = SecureProcessGroup::kFirstReservedTag + 3;
constexpr int kTagAllToAll = SecureProcessGroup::kFirstReservedTag + 4;

void put_u32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get_u64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{in[i]} << (8 * i);
  return v;
}

GcmNonce make_nonce(int sender_group_rank, uint64_t counter) {
  GcmNonce nonce{};
  put_u32(nonce.data(), static_cast<uint32_t>(sender_group_rank));
  put_u64(nonce.data() + 4, counter);
  return nonce;
}

}  // namespace

// ---- keys ---------------------------------------------------------------------------------

SecureChannelKeys::~SecureChannelKeys() {
  for (auto& [rank, key] : pair_keys_) secure_wipe(key.data(), key.size());
}

void SecureChannelKeys::set_pair_key(int peer_world_rank, const ChannelKey& key) {
  std::lock_guard<std::mutex> lock(mutex_);
  pair_keys_[peer_world_rank] = key;
}

bool SecureChannelKeys::has_pair_key(int peer_world_rank) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pair_keys_.count(peer_world_rank) > 0;
}

ChannelKey SecureChannelKeys::group_key(int peer_world_rank, const std::string& group_name,
                                        uint64_t instance) const {
  ChannelKey pair{};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pair_keys_.find(peer_world_rank);
    ALEM_CHECK(it != pair_keys_.end(), "secure channel: world rank " + std::to_string(world_rank_) +
                                           " has no agreed key with world rank " +
                                           std::to_string(peer_world_rank) +
                                           " (its evidence was not verified), so group '" +
                                           group_name + "' cannot be encrypted");
    pair = it->second;
  }
  static constexpr std::string_view kLabel = "alem-group-key-v1";
  std::vector<uint8_t> info(kLabel.begin(), kLabel.end());
  info.push_back(0);
  info.insert(info.end(), group_name.begin(), group_name.end());
  info.push_back(0);
  uint8_t n[8];
  put_u64(n, instance);
  info.insert(info.end(), n, n + 8);
  ChannelKey out{};
  hkdf_sha256(pair, {}, info, out);
  secure_wipe(pair.data(), pair.size());
  return out;
}

uint64_t SecureChannelKeys::next_instance(const std::string& group_name) {
  std::lock_guard<std::mutex> lock(mutex_);
  return instances_[group_name]++;
}

// ---- one peer -----------------------------------------------------------------------------

struct SecureProcessGroup::Peer {
  AesGcm sealer;
  AesGcm opener;
  uint64_t send_counter = 0;         // next nonce counter towards this peer
  std::map<int, uint64_t> send_seq;  // per tag: messages sent
  std::map<int, uint64_t> recv_seq;  // per tag: messages received and authenticated
  Peer(const ChannelKey& key) : sealer(key, true), opener(key, false) {}
};

bool group_needs_encryption(const GroupMembers& members, const SecureGroupOptions& options) {
  if (members.world_ranks.size() < 2) return false;
  return options.treat_every_rank_as_own_node || members.spans_nodes();
}

SecureProcessGroup::SecureProcessGroup(std::unique_ptr<ProcessGroup> inner, GroupMembers members,
                                       std::shared_ptr<SecureChannelKeys> keys,
                                       const SecureGroupOptions& options)
    : inner_(std::move(inner)),
      members_(std::move(members)),
      keys_(std::move(keys)),
      options_(options) {
  ALEM_CHECK(inner_ && keys_, "SecureProcessGroup needs a group and keys");
  ALEM_CHECK(static_cast<int>(members_.world_ranks.size()) == inner_->size() &&
                 members_.nodes.size() == members_.world_ranks.size(),
             "SecureProcessGroup: member list of group '" + inner_->name() + "' has " +
                 std::to_string(members_.world_ranks.size()) + " entries for " +
                 std::to_string(inner_->size()) + " members");
  instance_ = keys_->next_instance(inner_->name());
  const int me = inner_->rank();
  peers_.resize(static_cast<size_t>(inner_->size()));
  for (int p = 0; p < inner_->size(); ++p) {
    if (p == me || !encrypts_to(p)) continue;
    ChannelKey key =
        keys_->group_key(members_.world_ranks[static_cast<size_t>(p)], inner_->name(), instance_);
    peers_[static_cast<size_t>(p)] = std::make_unique<Peer>(key);
    secure_wipe(key.data(), key.size());
  }
}

SecureProcessGroup::~SecureProcessGroup() {
  if (!wire_.empty()) secure_wipe(wire_.data(), wire_.size());
}

bool SecureProcessGroup::encrypts_to(int peer) const {
  if (peer == inner_->rank()) return false;
  if (options_.treat_every_rank_as_own_node) return true;
  return members_.nodes[static_cast<size_t>(peer)] != members_.nodes[static_cast<size_t>(rank())];
}

SecureProcessGroup::Peer& SecureProcessGroup::peer(int group_rank) {
  ALEM_CHECK(group_rank >= 0 && group_rank < size() && peers_[static_cast<size_t>(group_rank)],
             "secure channel: no encrypted state for group rank " + std::to_string(group_rank));
  return *peers_[static_cast<size_t>(group_rank)];
}

std::string SecureProcessGroup::describe_peer(int group_rank) const {
  const size_t i = static_cast<size_t>(group_rank);
  std::string text = "world rank " + std::to_string(members_.world_ranks[i]);
  if (i < members_.hosts.size()) text += " on host " + members_.hosts[i];
  return text + " (rank " + std::to_string(group_rank) + " of group '" + name() + "')";
}

uint64_t SecureProcessGroup::send_counter(int p) const {
  const auto& state = peers_.at(static_cast<size_t>(p));
  return state ? state->send_counter : 0;
}

void SecureProcessGroup::corrupt_next_send_for_test(size_t offset) {
  corrupt_next_ = true;
  corrupt_offset_ = offset;
}

void SecureProcessGroup::replay_last_send_for_test() {
  ALEM_CHECK(last_dst_ >= 0, "replay_last_send_for_test: nothing was sent yet");
  inner_->send(last_wire_.data(), last_wire_.size(), last_dst_, last_tag_);
}

// AAD = label || group name || src || dst || tag || sequence.
static std::vector<uint8_t> make_aad(const std::string& group, int src, int dst, int tag,
                                     uint64_t seq) {
  std::vector<uint8_t> aad(kAadLabel.begin(), kAadLabel.end());
  aad.push_back(0);
  aad.insert(aad.end(), group.begin(), group.end());
  aad.push_back(0);
  uint8_t buf[20];
  put_u32(buf, static_cast<uint32_t>(src));
  put_u32(buf + 4, static_cast<uint32_t>(dst));
  put_u32(buf + 8, static_cast<uint32_t>(tag));
  put_u64(buf + 12, seq);
  aad.insert(aad.end(), buf, buf + 20);
  return aad;
}

void SecureProcessGroup::send_encrypted(const void* data, size_t bytes, int dst, int tag) {
  Peer& state = peer(dst);
  ALEM_CHECK(state.send_counter != UINT64_MAX,
             "secure channel: nonce counter towards " + describe_peer(dst) + " is exhausted");
  const uint64_t counter = state.send_counter++;
  const uint64_t seq = state.send_seq[tag]++;
  const GcmNonce nonce = make_nonce(rank(), counter);
  if (options_.record_nonces) sent_nonces_.emplace_back(dst, nonce);
  wire_.resize(kCounterBytes + bytes + kGcmTagBytes);
  put_u64(wire_.data(), counter);
  const std::vector<uint8_t> aad = make_aad(name(), rank(), dst, tag, seq);
  state.sealer.seal(nonce, aad, {static_cast<const uint8_t*>(data), bytes},
                    wire_.data() + kCounterBytes, wire_.data() + kCounterBytes + bytes);
  if (corrupt_next_) {
    corrupt_next_ = false;
    wire_[kCounterBytes + corrupt_offset_ % (bytes + kGcmTagBytes)] ^= 0x01;
  }
  ++messages_encrypted_;
  inner_->send(wire_.data(), wire_.size(), dst, tag);
  last_wire_ = wire_;  // ciphertext only: safe to keep for the replay hook
  last_dst_ = dst;
  last_tag_ = tag;
}

void SecureProcessGroup::recv_encrypted(void* data, size_t bytes, int src, int tag) {
  Peer& state = peer(src);
  wire_.resize(kCounterBytes + bytes + kGcmTagBytes);
  inner_->recv(wire_.data(), wire_.size(), src, tag);
  const uint64_t counter = get_u64(wire_.data());
  const uint64_t seq = state.recv_seq[tag];
  const GcmNonce nonce = make_nonce(src, counter);
  const std::vector<uint8_t> aad = make_aad(name(), src, rank(), tag, seq);
  const bool ok =
      state.opener.open(nonce, aad, {wire_.data() + kCounterBytes, bytes},
                        wire_.data() + kCounterBytes + bytes, static_cast<uint8_t*>(data));
  ALEM_CHECK(ok, "secure channel: a message from " + describe_peer(src) + " to world rank " +
                     std::to_string(members_.world_ranks[static_cast<size_t>(rank())]) +
                     " failed authentication (tag " + std::to_string(tag) + ", sequence " +
                     std::to_string(seq) + ", " + std::to_string(bytes) +
                     " bytes): it was tampered with, replayed or reordered on the network "
                     "between the nodes; aborting the job");
  state.recv_seq[tag] = seq + 1;
  ++messages_decrypted_;
}

void SecureProcessGroup::send(const void* data, size_t bytes, int dst, int tag) {
  ALEM_CHECK(dst >= 0 && dst < size() && dst != rank(),
             "send: destination " + std::to_string(dst) + " is not another member of group '" +
                 name() + "' (size " + std::to_string(size()) + ")");
  if (!encrypts_to(dst)) return inner_->send(data, bytes, dst, tag);
  send_encrypted(data, bytes, dst, tag);
}

void SecureProcessGroup::recv(void* data, size_t bytes, int src, int tag) {
  ALEM_CHECK(src >= 0 && src < size() && src != rank(),
             "recv: source " + std::to_string(src) + " is not another member of group '" + name() +
                 "' (size " + std::to_string(size()) + ")");
  if (!encrypts_to(src)) return inner_->recv(data, bytes, src, tag);
  recv_encrypted(data, bytes, src, tag);
}

void SecureProcessGroup::exchange(const void* out, size_t out_bytes, int dst, void* in,
                                  size_t in_bytes, int src, int tag) {
  if (rank() % 2 == 0) {
    if (out_bytes) send(out, out_bytes, dst, tag);
    if (in_bytes) recv(in, in_bytes, src, tag);
  } else {
    if (in_bytes) recv(in, in_bytes, src, tag);
    if (out_bytes) send(out, out_bytes, dst, tag);
  }
}

// Ring all-reduce: reduce-scatter then all-gather, n-1 steps each. Every chunk is reduced once,
// by one rank, then copied: every member ends with bitwise identical data.
void SecureProcessGroup::all_reduce(float* data, size_t count, ReduceOp op) {
  const int n = size();
  if (n == 1 || count == 0) return;
  const int r = rank(), right = (r + 1) % n, left = (r - 1 + n) % n;
  auto chunk_begin = [&](int c) {
    const size_t base = count / n, extra = count % n;
    return static_cast<size_t>(c) * base + std::min(static_cast<size_t>(c), extra);
  };
  auto chunk_size = [&](int c) { return chunk_begin(c + 1) - chunk_begin(c); };
  std::vector<float> incoming(chunk_size(0));
  for (int s = 0; s < n - 1; ++s) {
    const int out_c = ((r - s) % n + n) % n, in_c = ((r - s - 1) % n + n) % n;
    exchange(data + chunk_begin(out_c), chunk_size(out_c) * sizeof(float), right, incoming.data(),
             chunk_size(in_c) * sizeof(float), left, kTagAllReduce);
    float* target = data + chunk_begin(in_c);
    const size_t m = chunk_size(in_c);
    if (op == ReduceOp::Sum) {
      for (size_t i = 0; i < m; ++i) target[i] += incoming[i];
    } else {
      for (size_t i = 0; i < m; ++i) target[i] = std::max(target[i], incoming[i]);
    }
  }
  for (int s = 0; s < n - 1; ++s) {
    const int out_c = ((r + 1 - s) % n + n) % n, in_c = ((r - s) % n + n) % n;
    exchange(data + chunk_begin(out_c), chunk_size(out_c) * sizeof(float), right,
             data + chunk_begin(in_c), chunk_size(in_c) * sizeof(float), left, kTagAllReduce);
  }
  secure_wipe(incoming.data(), incoming.size() * sizeof(float));  // activations of a request
}

void SecureProcessGroup::all_gather(const void* send_buf, size_t bytes_per_rank, void* recv_buf) {
  const int n = size(), r = rank();
  auto* out = static_cast<uint8_t*>(recv_buf);
  const uint8_t* mine = static_cast<const uint8_t*>(send_buf);
  uint8_t* my_slot = out + static_cast<size_t>(r) * bytes_per_rank;
  if (mine != my_slot && bytes_per_rank) std::memmove(my_slot, mine, bytes_per_rank);
  if (n == 1 || bytes_per_rank == 0) return;
  const int right = (r + 1) % n, left = (r - 1 + n) % n;
  for (int s = 0; s < n - 1; ++s) {
    const int out_b = ((r - s) % n + n) % n, in_b = ((r - s - 1) % n + n) % n;
    exchange(out + static_cast<size_t>(out_b) * bytes_per_rank, bytes_per_rank, right,
             out + static_cast<size_t>(in_b) * bytes_per_rank, bytes_per_rank, left, kTagAllGather);
  }
}

// Binomial tree from `root`: log2(n) rounds.
void SecureProcessGroup::broadcast(void* data, size_t bytes, int root) {
  const int n = size();
  ALEM_CHECK(root >= 0 && root < n, "broadcast: root " + std::to_string(root) +
                                        " is not a member of group '" + name() + "'");
  if (n == 1 || bytes == 0) return;
  const int vr = (rank() - root + n) % n;
  int mask = 1;
  while (mask < n) {
    if (vr & mask) {
      recv(data, bytes, (vr - mask + root) % n, kTagBroadcast);
      break;
    }
    mask <<= 1;
  }
  mask >>= 1;
  while (mask > 0) {
    if (vr + mask < n) send(data, bytes, (vr + mask + root) % n, kTagBroadcast);
    mask >>= 1;
  }
}

void SecureProcessGroup::all_to_all(const void* send_buf, const std::vector<size_t>& send_bytes,
                                    void* recv_buf, const std::vector<size_t>& recv_bytes) {
  check_all_to_all_counts(*this, send_bytes, recv_bytes);
  const int n = size(), r = rank();
  std::vector<size_t> send_at(static_cast<size_t>(n) + 1, 0), recv_at(send_at);
  for (size_t j = 0; j < static_cast<size_t>(n); ++j) {
    send_at[j + 1] = send_at[j] + send_bytes[j];
    recv_at[j + 1] = recv_at[j] + recv_bytes[j];
  }
  const auto* in = static_cast<const uint8_t*>(send_buf);
  auto* out = static_cast<uint8_t*>(recv_buf);
  const size_t me = static_cast<size_t>(r);
  ALEM_CHECK(send_bytes[me] == recv_bytes[me],
             "all_to_all on group '" + name() + "': sends " + std::to_string(send_bytes[me]) +
                 " bytes to itself but expects " + std::to_string(recv_bytes[me]));
  if (send_bytes[me] > 0) std::memcpy(out + recv_at[me], in + send_at[me], send_bytes[me]);
  // One partner per round; the lower rank of a pair sends first, so blocking sends never wait
  // on each other. Empty blocks are skipped on both sides (the counts agree pairwise).
  for (int round = 0; round < all_to_all_rounds(n); ++round) {
    const int p = all_to_all_partner(r, n, round);
    if (p < 0) continue;
    const size_t q = static_cast<size_t>(p);
    auto send_block = [&] {
      if (send_bytes[q] > 0) send(in + send_at[q], send_bytes[q], p, kTagAllToAll);
    };
    auto recv_block = [&] {
      if (recv_bytes[q] > 0) recv(out + recv_at[q], recv_bytes[q], p, kTagAllToAll);
    };
    if (r < p) {
      send_block();
      recv_block();
    } else {
      recv_block();
      send_block();
    }
  }
}

// ---- wrapping -----------------------------------------------------------------------------

std::unique_ptr<ProcessGroup> make_secure_group(std::unique_ptr<ProcessGroup> inner,
                                                const GroupMembers& members,
                                                std::shared_ptr<SecureChannelKeys> keys,
                                                const SecureGroupOptions& options) {
  if (!group_needs_encryption(members, options)) return inner;
  return std::make_unique<SecureProcessGroup>(std::move(inner), members, std::move(keys), options);
}

int secure_parallel_context(ParallelContext& ctx, std::shared_ptr<SecureChannelKeys> keys,
                            const SecureGroupOptions& options) {
  int wrapped = 0;
  for (std::unique_ptr<ProcessGroup>* group : {&ctx.world, &ctx.tp, &ctx.pp, &ctx.dp, &ctx.ep}) {
    if (group == &ctx.ep && !*group) continue;  // contexts made before the ep group existed
    ALEM_CHECK(*group, "secure_parallel_context: the context lacks a group");
    if (dynamic_cast<SecureProcessGroup*>(group->get())) continue;  // already wrapped
    const auto* mpi = dynamic_cast<const MpiProcessGroup*>(group->get());
    if (!mpi) {
      ALEM_CHECK((*group)->size() == 1, "secure_parallel_context: group '" + (*group)->name() +
                                            "' is not an MPI group; cannot tell its hosts");
      continue;
    }
    const GroupMembers members = mpi->members();
    *group = make_secure_group(std::move(*group), members, keys, options);
    if (dynamic_cast<SecureProcessGroup*>(group->get())) ++wrapped;
  }
  return wrapped;
}

bool group_encrypts_between_hosts(const ProcessGroup& group) {
  const auto* secure = dynamic_cast<const SecureProcessGroup*>(&group);
  if (!secure) return false;
  for (int peer = 0; peer < secure->size(); ++peer) {
    if (secure->encrypts_to(peer)) return true;
  }
  return false;
}

std::string device_group_refusal(const ParallelContext& ctx) {
  if (!ctx.tp || !group_encrypts_between_hosts(*ctx.tp)) return "";
  return "no NCCL group for the " + ctx.tp->name() +
         " group: its members are on different hosts and the interconnect is encrypted, but "
         "NCCL traffic is not; its GPU tensors go through host memory over the encrypted "
         "channel instead (slower). Keep each tensor-parallel group on one host for NCCL";
}

std::vector<int> peers_needing_keys(const ParallelContext& ctx, const SecureGroupOptions& options) {
  const ProcessGroup* world = ctx.world.get();
  if (const auto* secure = dynamic_cast<const SecureProcessGroup*>(world)) world = &secure->inner();
  const auto* mpi = dynamic_cast<const MpiProcessGroup*>(world);
  std::vector<int> peers;
  if (!mpi) return peers;
  const GroupMembers& m = mpi->members();
  const int my_node = m.nodes[static_cast<size_t>(ctx.world_rank)];
  for (size_t r = 0; r < m.world_ranks.size(); ++r) {
    if (static_cast<int>(r) == ctx.world_rank) continue;
    if (options.treat_every_rank_as_own_node || m.nodes[r] != my_node)
      peers.push_back(m.world_ranks[r]);
  }
  return peers;
}

}  // namespace alem
