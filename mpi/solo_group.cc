// The one-member process group and the single-rank ParallelContext: every collective is a no-op,
// point-to-point is an error (there is nobody to talk to).
#include <cstring>

#include "core/error.h"
#include "mpi/parallel_context.h"

namespace alem {
namespace {

class SoloGroup final : public ProcessGroup {
 public:
  explicit SoloGroup(std::string name) : name_(std::move(name)) {}
  std::string name() const override { return name_; }
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce(float*, size_t, ReduceOp) override {}
  void all_gather(const void* send, size_t bytes, void* recv) override {
    if (send != recv && bytes > 0) std::memcpy(recv, send, bytes);
  }
  void broadcast(void*, size_t, int) override {}
  void send(const void*, size_t, int, int) override {
    ALEM_FAIL("send on the one-member group '" + name_ + "'");
  }
  void recv(void*, size_t, int, int) override {
    ALEM_FAIL("recv on the one-member group '" + name_ + "'");
  }
  void barrier() override {}
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    check_all_to_all_counts(*this, send_bytes, recv_bytes);
    ALEM_CHECK(send_bytes[0] == recv_bytes[0], "all_to_all on the one-member group '" + name_ +
                                                   "': sends " + std::to_string(send_bytes[0]) +
                                                   " bytes to itself but expects " +
                                                   std::to_string(recv_bytes[0]));
    if (send_bytes[0] > 0) std::memcpy(recv, send, send_bytes[0]);
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<ProcessGroup> make_solo_group(const std::string& name) {
  return std::make_unique<SoloGroup>(name);
}

ParallelContext make_solo_context() {
  ParallelContext ctx;
  ctx.layout = ParallelLayout(1, 1, 1);
  ctx.world = make_solo_group("world");
  ctx.tp = make_solo_group("tp");
  ctx.pp = make_solo_group("pp");
  ctx.dp = make_solo_group("dp");
  ctx.ep = make_solo_group("ep");
  return ctx;
}

}  // namespace alem
