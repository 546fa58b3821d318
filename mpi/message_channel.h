// MessageChannel: variable-size messages between world ranks, sent and received from any thread,
// for control traffic that does not follow the lock-step pattern of a ProcessGroup: the
// data-parallel router on the gateway posts requests to other replicas' leaders and receives
// their token events whenever they come (engine/dp_router.h).
//
// The MPI version owns a duplicate of MPI_COMM_WORLD, so its traffic never mixes with the
// process groups', and needs MPI_THREAD_MULTIPLE (make_mpi_channel checks). The in-process
// version connects the channels of one process, for unit tests without MPI.
//
// Messages between two ranks arrive in the order they were sent. recv() blocks until a message
// for this rank arrives; close() (local) makes a blocked recv() return std::nullopt.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace alem {

struct ChannelMessage {
  int source = -1;  // world rank of the sender
  std::vector<uint8_t> bytes;
};

class MessageChannel {
 public:
  virtual ~MessageChannel() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Thread-safe. Sends to world rank `destination` (may be this rank).
  virtual void send(int destination, const std::vector<uint8_t>& bytes) = 0;
  // Blocks until a message arrives or close() was called (then std::nullopt).
  virtual std::optional<ChannelMessage> recv() = 0;
  // Wakes a blocked recv() for good. Local: peers are not told.
  virtual void close() = 0;
};

// Collective over MPI_COMM_WORLD (every rank calls it in the same order with respect to other
// communicator creations). Throws alem::Error when MPI does not provide MPI_THREAD_MULTIPLE.
std::unique_ptr<MessageChannel> make_mpi_channel();

// `size` connected channels inside one process (index = rank), for tests.
std::vector<std::unique_ptr<MessageChannel>> make_local_channels(int size);

}  // namespace alem
