// The NCCL process group (built when CUDA and NCCL are found): GPU collectives and point-to-point
// transfers on one NCCL communicator, bootstrapped by broadcasting an ncclUniqueId over an
// existing process group. Failures of NCCL or CUDA calls abort the job, as MPI failures do:
// they mean a lost peer or a broken GPU, and the other ranks would otherwise wait forever.
#include "mpi/nccl_process_group.h"
#include "mpi/parallel_context.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <exception>
#include <string>

#include "core/error.h"
#include "mpi/failure_watchdog.h"

namespace alem {
namespace {

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(ProcessGroup& bootstrap, const NcclGroupOptions& options)
      : name_(bootstrap.name()), rank_(bootstrap.rank()), size_(bootstrap.size()) {
    if (options.cuda_device >= 0) check_cuda(cudaSetDevice(options.cuda_device), "cudaSetDevice");
    check_cuda(cudaGetDevice(&device_), "cudaGetDevice");
    if (options.stream) {
      stream_ = reinterpret_cast<cudaStream_t>(options.stream);
    } else {
      check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
      own_stream_ = true;
    }
    if (size_ == 1) return;  // nothing to talk to: every call returns at once
    check_cuda(cudaMalloc(&barrier_word_, sizeof(float)), "cudaMalloc (barrier)");
    ncclUniqueId id{};
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bootstrap.broadcast(&id, sizeof(id), 0);
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  }

  ~NcclProcessGroup() override {
    if (comm_) {
      // Unwinding from a failure: peers may never finish pending work, so do not wait for it.
      if (std::uncaught_exceptions() > 0) {
        ncclCommAbort(comm_);
      } else {
        ncclCommFinalize(comm_);
        ncclCommDestroy(comm_);
      }
    }
    if (barrier_word_) cudaFree(barrier_word_);
    if (own_stream_) cudaStreamDestroy(stream_);
  }

  NcclProcessGroup(const NcclProcessGroup&) = delete;
  NcclProcessGroup& operator=(const NcclProcessGroup&) = delete;

  std::string name() const override { return name_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  bool takes_device_memory() const override { return true; }

  void all_reduce(float* data, size_t count, ReduceOp op) override {
    if (size_ == 1 || count == 0) return;
    check_nccl(ncclAllReduce(data, data, count, ncclFloat32,
                             op == ReduceOp::Max ? ncclMax : ncclSum, comm_, stream_),
               "ncclAllReduce");
    finish_call("all_reduce");
  }

  void all_gather(const void* send, size_t bytes_per_rank, void* recv) override {
    if (size_ == 1) {
      if (send != recv && bytes_per_rank > 0)
        check_cuda(cudaMemcpyAsync(recv, send, bytes_per_rank, cudaMemcpyDeviceToDevice, stream_),
                   "cudaMemcpyAsync (all_gather)");
      finish_call("all_gather");
      return;
    }
    if (bytes_per_rank == 0) return;
    // In place when send is this member's slot of recv, which NCCL handles itself.
    check_nccl(ncclAllGather(send, recv, bytes_per_rank, ncclUint8, comm_, stream_),
               "ncclAllGather");
    finish_call("all_gather");
  }

  void broadcast(void* data, size_t bytes, int root) override {
    ALEM_CHECK(root >= 0 && root < size_, "broadcast root " + std::to_string(root) +
                                              " is not a member of the NCCL " + name_ +
                                              " group of " + std::to_string(size_));
    if (size_ == 1 || bytes == 0) return;
    check_nccl(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    finish_call("broadcast");
  }

  void send(const void* data, size_t bytes, int dst, int tag) override {
    check_peer(dst, tag, "send");
    if (bytes == 0) return;  // NCCL skips empty transfers on both sides alike
    check_nccl(ncclSend(data, bytes, ncclUint8, dst, comm_, stream_), "ncclSend");
    finish_call("send");
  }

  void recv(void* data, size_t bytes, int src, int tag) override {
    check_peer(src, tag, "recv");
    if (bytes == 0) return;
    check_nccl(ncclRecv(data, bytes, ncclUint8, src, comm_, stream_), "ncclRecv");
    finish_call("recv");
  }

  // One NCCL group call: a send and a receive per peer with a non-empty block; this member's
  // own block is a device copy. Counts must agree pairwise (NCCL cannot tell; a mismatch hangs
  // or corrupts, so callers exchange counts with all_to_all_counts over a host group first).
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    check_all_to_all_counts(*this, send_bytes, recv_bytes);
    const size_t own = static_cast<size_t>(rank_);
    ALEM_CHECK(send_bytes[own] == recv_bytes[own],
               "all_to_all on the NCCL " + name_ + " group: sends " +
                   std::to_string(send_bytes[own]) + " bytes to itself but expects " +
                   std::to_string(recv_bytes[own]));
    const auto* in = static_cast<const char*>(send);
    auto* out = static_cast<char*>(recv);
    size_t send_at = 0, recv_at = 0;
    if (size_ > 1) check_nccl(ncclGroupStart(), "ncclGroupStart (all_to_all)");
    for (int peer = 0; peer < size_; ++peer) {
      const size_t s = send_bytes[static_cast<size_t>(peer)];
      const size_t r = recv_bytes[static_cast<size_t>(peer)];
      if (peer == rank_) {
        if (s > 0)
          check_cuda(
              cudaMemcpyAsync(out + recv_at, in + send_at, s, cudaMemcpyDeviceToDevice, stream_),
              "cudaMemcpyAsync (all_to_all)");
      } else {
        if (s > 0)
          check_nccl(ncclSend(in + send_at, s, ncclUint8, peer, comm_, stream_),
                     "ncclSend (all_to_all)");
        if (r > 0)
          check_nccl(ncclRecv(out + recv_at, r, ncclUint8, peer, comm_, stream_),
                     "ncclRecv (all_to_all)");
      }
      send_at += s;
      recv_at += r;
    }
    if (size_ > 1) check_nccl(ncclGroupEnd(), "ncclGroupEnd (all_to_all)");
    finish_call("all_to_all");
  }

  void barrier() override {
    if (size_ == 1) return;
    check_nccl(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclFloat32, ncclSum, comm_, stream_),
               "ncclAllReduce (barrier)");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (barrier)");
  }

 private:
  // With the group's own stream, calls are blocking: wait for the work to finish.
  void finish_call(const char* op) {
    if (own_stream_) check_cuda(cudaStreamSynchronize(stream_), op);
  }

  void check_peer(int peer, int tag, const char* op) const {
    ALEM_CHECK(peer >= 0 && peer < size_ && peer != rank_,
               std::string(op) + " peer " + std::to_string(peer) +
                   " is not another member of the NCCL " + name_ + " group of " +
                   std::to_string(size_) + " (this is member " + std::to_string(rank_) + ")");
    ALEM_CHECK(tag >= 0, std::string(op) + " tag must be >= 0, got " + std::to_string(tag));
  }

  void check_nccl(ncclResult_t result, const char* what) const {
    if (result == ncclSuccess) return;
    std::string detail = ncclGetErrorString(result);
    if (comm_) {
      const char* last = ncclGetLastError(comm_);
      if (last && *last) detail += " (" + std::string(last) + ")";
    }
    abort_job(std::string(what) + " failed on the NCCL " + name_ + " group (member " +
              std::to_string(rank_) + " of " + std::to_string(size_) + ", GPU " +
              std::to_string(device_) + "): " + detail);
  }

  void check_cuda(cudaError_t result, const char* what) const {
    if (result == cudaSuccess) return;
    abort_job(std::string(what) + " failed on the NCCL " + name_ + " group (GPU " +
              std::to_string(device_) + "): " + cudaGetErrorString(result));
  }

  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  bool own_stream_ = false;
  ncclComm_t comm_ = nullptr;
  float* barrier_word_ = nullptr;  // device scratch for barrier()
};

}  // namespace

std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& bootstrap,
                                              const NcclGroupOptions& options) {
  int devices = 0;
  const cudaError_t probe = cudaGetDeviceCount(&devices);
  ALEM_CHECK(probe == cudaSuccess && devices > 0, "an NCCL " + bootstrap.name() +
                                                      " group needs a GPU, but CUDA finds none (" +
                                                      cudaGetErrorString(probe) + ")");
  ALEM_CHECK(options.cuda_device < devices, "GPU " + std::to_string(options.cuda_device) +
                                                " requested but this node has " +
                                                std::to_string(devices));
  return std::make_unique<NcclProcessGroup>(bootstrap, options);
}

bool nccl_available() {
  return true;
}

bool attach_device_groups(ParallelContext& ctx, std::string* why_not) {
  if (why_not) why_not->clear();
  if (!ctx.tp || ctx.tp->size() <= 1) return false;
  const std::string refusal = device_group_refusal(ctx);
  if (!refusal.empty()) {
    if (why_not) *why_not = refusal;
    return false;
  }
  ctx.tp_device = make_nccl_group(*ctx.tp);
  return true;
}

}  // namespace alem
