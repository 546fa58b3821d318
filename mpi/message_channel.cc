// MessageChannel over MPI (a duplicate of MPI_COMM_WORLD, matched probes so that several
// threads may receive safely) and in-process (queues), see message_channel.h.
#include "mpi/message_channel.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "mpi/mpi_internal.h"

namespace alem {
namespace {

constexpr int kTag = 7301;

class MpiChannel final : public MessageChannel {
 public:
  MpiChannel() {
    int provided = 0;
    MPI_Query_thread(&provided);
    ALEM_CHECK(provided >= MPI_THREAD_MULTIPLE,
               "this MPI library does not provide MPI_THREAD_MULTIPLE, which data-parallel "
               "serving needs (the gateway and replica leaders talk from their own threads)");
    check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup (message channel)");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiChannel() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(int destination, const std::vector<uint8_t>& bytes) override {
    ALEM_CHECK(destination >= 0 && destination < size_,
               "message channel: no rank " + std::to_string(destination));
    ALEM_CHECK(bytes.size() < (size_t{1} << 31), "message channel: message over 2 GiB");
    check_mpi(
        MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, destination, kTag, comm_),
        "MPI_Send (message channel)");
  }

  // Polls with a matched probe and a short sleep: a blocking probe would spin a core.
  std::optional<ChannelMessage> recv() override {
    auto idle = std::chrono::microseconds(50);
    while (!closed_.load()) {
      int found = 0;
      MPI_Message message;
      MPI_Status status;
      check_mpi(MPI_Improbe(MPI_ANY_SOURCE, kTag, comm_, &found, &message, &status),
                "MPI_Improbe (message channel)");
      if (!found) {
        std::this_thread::sleep_for(idle);
        idle = std::min(idle * 2, std::chrono::microseconds(2000));
        continue;
      }
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      ChannelMessage out;
      out.source = status.MPI_SOURCE;
      out.bytes.resize(static_cast<size_t>(count));
      check_mpi(MPI_Mrecv(out.bytes.data(), count, MPI_BYTE, &message, MPI_STATUS_IGNORE),
                "MPI_Mrecv (message channel)");
      return out;
    }
    return std::nullopt;
  }

  void close() override { closed_.store(true); }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::atomic<bool> closed_{false};
};

// The in-process network: one mailbox per rank.
struct LocalHub {
  struct Mailbox {
    std::mutex mutex;
    std::condition_variable ready;
    std::deque<ChannelMessage> queue;
    bool closed = false;
  };
  explicit LocalHub(int n) : boxes(n) {
    for (auto& b : boxes) b = std::make_unique<Mailbox>();
  }
  std::vector<std::unique_ptr<Mailbox>> boxes;
};

class LocalChannel final : public MessageChannel {
 public:
  LocalChannel(std::shared_ptr<LocalHub> hub, int rank) : hub_(std::move(hub)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(hub_->boxes.size()); }
  void send(int destination, const std::vector<uint8_t>& bytes) override {
    ALEM_CHECK(destination >= 0 && destination < size(),
               "message channel: no rank " + std::to_string(destination));
    LocalHub::Mailbox& box = *hub_->boxes[destination];
    {
      std::lock_guard<std::mutex> lock(box.mutex);
      box.queue.push_back({rank_, bytes});
    }
    box.ready.notify_all();
  }
  std::optional<ChannelMessage> recv() override {
    LocalHub::Mailbox& box = *hub_->boxes[rank_];
    std::unique_lock<std::mutex> lock(box.mutex);
    box.ready.wait(lock, [&] { return box.closed || !box.queue.empty(); });
    if (box.queue.empty()) return std::nullopt;
    ChannelMessage m = std::move(box.queue.front());
    box.queue.pop_front();
    return m;
  }
  void close() override {
    LocalHub::Mailbox& box = *hub_->boxes[rank_];
    {
      std::lock_guard<std::mutex> lock(box.mutex);
      box.closed = true;
    }
    box.ready.notify_all();
  }

 private:
  std::shared_ptr<LocalHub> hub_;
  int rank_;
};

}  // namespace

std::unique_ptr<MessageChannel> make_mpi_channel() {
  return std::make_unique<MpiChannel>();
}

std::vector<std::unique_ptr<MessageChannel>> make_local_channels(int size) {
  ALEM_CHECK(size >= 1, "make_local_channels: size must be >= 1");
  auto hub = std::make_shared<LocalHub>(size);
  std::vector<std::unique_ptr<MessageChannel>> out;
  for (int r = 0; r < size; ++r) out.push_back(std::make_unique<LocalChannel>(hub, r));
  return out;
}

}  // namespace alem
