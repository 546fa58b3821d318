// The in-process fake process group: members are threads meeting at a generation-counted
// rendezvous (mutex + condition variable). A collective is two meetings: after the first every
// member has posted its buffers and reads the others' (nobody writes a posted buffer then); after
// the second every member writes only its own result, so nothing is read while it changes.
#include "mpi/fake_process_group.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>

#include "core/error.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;

// What one member brings to a collective; checked against the others before any data moves.
struct Post {
  const char* op = "";
  size_t size = 0;  // element count or bytes
  int root = -1;    // broadcast root, or the reduce operation
  const void* in = nullptr;
  uint64_t calls = 0;                  // collectives this member has started, this one included
  const size_t* send_bytes = nullptr;  // all_to_all: bytes for each member, then from each
  const size_t* recv_bytes = nullptr;
};

struct Rendezvous {
  std::string name;
  int size = 1;
  std::chrono::duration<double> timeout;
  std::mutex mutex;
  std::condition_variable changed;
  int arrived = 0;
  uint64_t generation = 0;
  std::string broken;  // why the group cannot be used any more (empty while healthy)
  std::vector<Post> posts;
  std::map<std::tuple<int, int, int>, std::deque<std::vector<char>>> mailboxes;  // src, dst, tag

  void throw_if_broken() const {
    if (!broken.empty()) ALEM_FAIL(broken);
  }

  // Waits (lock held) until `ready` or the timeout; on timeout the group is broken for everyone.
  // `what` describes the wait for the message and is only called then.
  template <class Ready, class What>
  void wait(std::unique_lock<std::mutex>& lock, int rank, What what, Ready ready) {
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(timeout);
    while (!ready()) {
      throw_if_broken();
      if (changed.wait_until(lock, deadline) == std::cv_status::timeout && !ready()) {
        throw_if_broken();
        broken = "fake " + name + " group: member " + std::to_string(rank) + " waited " +
                 std::to_string(timeout.count()) + " s in " + what();
        changed.notify_all();
        ALEM_FAIL(broken);
      }
    }
  }

  // Every member arrives before any leaves.
  void meet(int rank, const char* op) {
    std::unique_lock<std::mutex> lock(mutex);
    throw_if_broken();
    const uint64_t my_generation = generation;
    if (++arrived == size) {
      arrived = 0;
      ++generation;
      changed.notify_all();
      return;
    }
    wait(
        lock, rank, [&] { return std::string(op) + " (" + absent_members(rank) + ")"; },
        [&] { return generation != my_generation; });
  }

  std::string absent_members(int rank) const {
    std::string absent;
    for (int i = 0; i < size; ++i)
      if (posts[static_cast<size_t>(i)].calls < posts[static_cast<size_t>(rank)].calls) {
        if (!absent.empty()) absent += ",";
        absent += std::to_string(i);
      }
    return absent.empty() ? "a member left" : "members not arrived: " + absent;
  }

  // Posts this member's part, waits for all, and checks that all called the same collective.
  const std::vector<Post>& post_and_meet(int rank, const Post& post) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      throw_if_broken();
      Post& mine = posts[static_cast<size_t>(rank)];
      const uint64_t calls = mine.calls + 1;
      mine = post;
      mine.calls = calls;
    }
    meet(rank, post.op);
    const Post& first = posts[0];
    for (int i = 1; i < size; ++i) {
      const Post& other = posts[static_cast<size_t>(i)];
      if (std::strcmp(other.op, first.op) != 0 || other.size != first.size ||
          other.root != first.root) {
        std::lock_guard<std::mutex> lock(mutex);
        broken = "fake " + name + " group: members disagree on the collective: member 0 called " +
                 describe(first) + ", member " + std::to_string(i) + " called " + describe(other);
        changed.notify_all();
        ALEM_FAIL(broken);
      }
    }
    return posts;
  }

  static std::string describe(const Post& post) {
    return std::string(post.op) + "(size " + std::to_string(post.size) + ", root/op " +
           std::to_string(post.root) + ")";
  }
};

class FakeProcessGroup final : public ProcessGroup {
 public:
  FakeProcessGroup(std::shared_ptr<Rendezvous> shared, int rank)
      : shared_(std::move(shared)), rank_(rank) {}

  std::string name() const override { return shared_->name; }
  int rank() const override { return rank_; }
  int size() const override { return shared_->size; }

  void all_reduce(float* data, size_t count, ReduceOp op) override {
    if (size() == 1) return;
    const auto& posts =
        shared_->post_and_meet(rank_, Post{"all_reduce", count, static_cast<int>(op), data});
    // Every member reduces in member order, so all get bit-identical sums.
    std::vector<float> result(static_cast<const float*>(posts[0].in),
                              static_cast<const float*>(posts[0].in) + count);
    for (int member = 1; member < size(); ++member) {
      const auto* other = static_cast<const float*>(posts[static_cast<size_t>(member)].in);
      for (size_t i = 0; i < count; ++i)
        result[i] = op == ReduceOp::Max ? std::max(result[i], other[i]) : result[i] + other[i];
    }
    shared_->meet(rank_, "all_reduce (end)");
    if (count > 0) std::memcpy(data, result.data(), count * sizeof(float));
  }

  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    auto* out = static_cast<char*>(recv);
    if (size() == 1) {
      if (send != recv && bytes_per_rank > 0) std::memcpy(recv, send, bytes_per_rank);
      return;
    }
    const auto& posts = shared_->post_and_meet(rank_, Post{"all_gather", bytes_per_rank, -1, send});
    // Each member writes only its own recv; its own slot may be its send buffer (in place).
    for (int member = 0; member < size(); ++member) {
      char* slot = out + static_cast<size_t>(member) * bytes_per_rank;
      const void* from = posts[static_cast<size_t>(member)].in;
      if (slot != from && bytes_per_rank > 0) std::memcpy(slot, from, bytes_per_rank);
    }
    shared_->meet(rank_, "all_gather (end)");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    ALEM_CHECK(root >= 0 && root < size(), "broadcast root " + std::to_string(root) +
                                               " is not a member of the fake " + name() +
                                               " group of " + std::to_string(size()));
    if (size() == 1) return;
    const auto& posts = shared_->post_and_meet(rank_, Post{"broadcast", bytes, root, data});
    if (rank_ != root && bytes > 0) std::memcpy(data, posts[static_cast<size_t>(root)].in, bytes);
    shared_->meet(rank_, "broadcast (end)");
  }

  void send(const void* data, size_t bytes, int dst, int tag) override {
    check_peer(dst, tag, "send");
    const auto* p = static_cast<const char*>(data);
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->throw_if_broken();
    shared_->mailboxes[{rank_, dst, tag}].emplace_back(p, p + bytes);
    shared_->changed.notify_all();
  }

  void recv(void* data, size_t bytes, int src, int tag) override {
    check_peer(src, tag, "recv");
    std::unique_lock<std::mutex> lock(shared_->mutex);
    auto& box = shared_->mailboxes[{src, rank_, tag}];
    shared_->wait(
        lock, rank_,
        [&] { return "recv from member " + std::to_string(src) + " tag " + std::to_string(tag); },
        [&] { return !box.empty(); });
    std::vector<char> message = std::move(box.front());
    box.pop_front();
    lock.unlock();
    ALEM_CHECK(message.size() == bytes,
               "fake " + name() + " group: member " + std::to_string(rank_) + " expected " +
                   std::to_string(bytes) + " bytes from member " + std::to_string(src) + " tag " +
                   std::to_string(tag) + " but the message has " + std::to_string(message.size()));
    if (bytes > 0) std::memcpy(data, message.data(), bytes);
  }

  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    check_all_to_all_counts(*this, send_bytes, recv_bytes);
    Post post{"all_to_all", static_cast<size_t>(size()), -1, send};
    post.send_bytes = send_bytes.data();
    post.recv_bytes = recv_bytes.data();
    const auto& posts = shared_->post_and_meet(rank_, post);
    // Every member checks every pair, so all throw alike on a mismatch.
    const size_t n = static_cast<size_t>(size());
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        if (posts[i].send_bytes[j] == posts[j].recv_bytes[i]) continue;
        std::string why = "fake " + name() + " group: all_to_all counts disagree: member " +
                          std::to_string(i) + " sends " + std::to_string(posts[i].send_bytes[j]) +
                          " bytes to member " + std::to_string(j) + ", which expects " +
                          std::to_string(posts[j].recv_bytes[i]);
        shared_->meet(rank_, "all_to_all (end)");
        ALEM_FAIL(why);
      }
    }
    auto* out = static_cast<char*>(recv);
    size_t at = 0;
    for (size_t j = 0; j < n; ++j) {
      size_t from = 0;  // offset of this member's block in member j's send buffer
      for (size_t k = 0; k < static_cast<size_t>(rank_); ++k) from += posts[j].send_bytes[k];
      if (recv_bytes[j] > 0) {
        std::memcpy(out + at, static_cast<const char*>(posts[j].in) + from, recv_bytes[j]);
      }
      at += recv_bytes[j];
    }
    shared_->meet(rank_, "all_to_all (end)");
  }

  void barrier() override {
    if (size() == 1) return;
    shared_->post_and_meet(rank_, Post{"barrier", 0, -1, nullptr});
    shared_->meet(rank_, "barrier (end)");  // nobody posts again while others still check
  }

 private:
  void check_peer(int peer, int tag, const char* op) const {
    ALEM_CHECK(peer >= 0 && peer < size() && peer != rank_,
               std::string(op) + " peer " + std::to_string(peer) +
                   " is not another member of the fake " + name() + " group of " +
                   std::to_string(size()) + " (this is member " + std::to_string(rank_) + ")");
    ALEM_CHECK(tag >= 0, std::string(op) + " tag must be >= 0, got " + std::to_string(tag));
  }

  std::shared_ptr<Rendezvous> shared_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<ProcessGroup>> make_fake_group(int size, const std::string& name,
                                                           double timeout_s) {
  ALEM_CHECK(size >= 1, "a fake group needs at least one member, got " + std::to_string(size));
  ALEM_CHECK(timeout_s > 0, "the fake group timeout must be > 0 s");
  auto shared = std::make_shared<Rendezvous>();
  shared->name = name;
  shared->size = size;
  shared->timeout = std::chrono::duration<double>(timeout_s);
  shared->posts.resize(static_cast<size_t>(size));
  std::vector<std::unique_ptr<ProcessGroup>> members;
  for (int rank = 0; rank < size; ++rank)
    members.push_back(std::make_unique<FakeProcessGroup>(shared, rank));
  return members;
}

std::vector<ParallelContext> make_fake_contexts(const ParallelLayout& layout, double timeout_s) {
  const int world_size = layout.world_size();
  std::vector<ParallelContext> contexts(static_cast<size_t>(world_size));
  for (int rank = 0; rank < world_size; ++rank) {
    ParallelContext& ctx = contexts[static_cast<size_t>(rank)];
    ctx.layout = layout;
    ctx.world_rank = rank;
    ctx.coords = layout.coords(rank);
  }
  auto world = make_fake_group(world_size, "world", timeout_s);
  for (int rank = 0; rank < world_size; ++rank)
    contexts[static_cast<size_t>(rank)].world = std::move(world[static_cast<size_t>(rank)]);
  // One fake group per group of each dimension, built when its member 0 is met.
  for (int rank = 0; rank < world_size; ++rank) {
    const ParallelCoords c = layout.coords(rank);
    struct Dimension {
      const char* name;
      bool first_member;
      std::vector<int> ranks;
      std::unique_ptr<ProcessGroup> ParallelContext::*slot;
    };
    const Dimension dimensions[] = {
        {"tp", c.tp == 0, layout.tp_group(rank), &ParallelContext::tp},
        {"pp", c.pp == 0, layout.pp_group(rank), &ParallelContext::pp},
        {"dp", c.dp == 0, layout.dp_group(rank), &ParallelContext::dp},
        {"ep", layout.ep_group(rank).front() == rank, layout.ep_group(rank), &ParallelContext::ep},
    };
    for (const Dimension& dim : dimensions) {
      if (!dim.first_member) continue;
      auto members = make_fake_group(static_cast<int>(dim.ranks.size()), dim.name, timeout_s);
      for (size_t i = 0; i < dim.ranks.size(); ++i)
        contexts[static_cast<size_t>(dim.ranks[i])].*dim.slot = std::move(members[i]);
    }
  }
  return contexts;
}

}  // namespace alem
