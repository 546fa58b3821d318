// NcclProcessGroup: the ProcessGroup for GPU tensors. Its NCCL communicator is made from an
// ncclUniqueId that member 0 creates and broadcasts over an existing (MPI) process group, so the
// NCCL group has the same members in the same rank order as that group. All pointers passed to
// it are device pointers on the group's GPU.
//
// Ordering: with a stream given, every call is enqueued on that stream and returns at once; the
// result is ready for later work on the same stream (put the model's kernels there). Without
// one, the group makes its own stream and waits for each call to finish before returning. Either
// way barrier() waits on the host. NCCL has no message tags: sends between two members match in
// the order they are made, and `tag` is only checked to be >= 0.
//
// Built only when CUDA and NCCL are found; otherwise make_nccl_group throws and nccl_available()
// is false. This header includes neither nccl.h nor cuda_runtime.h.
#pragma once

#include <memory>
#include <string>

#include "mpi/process_group.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace alem {

struct NcclGroupOptions {
  int cuda_device = -1;           // GPU of this member; -1: the current device
  CUstream_st* stream = nullptr;  // stream to enqueue on; null: own stream, each call blocks
};

// Collective over `bootstrap` (every member calls it): creates the NCCL communicator. The new
// group takes bootstrap's name; bootstrap is not kept.
std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup& bootstrap,
                                              const NcclGroupOptions& options = {});

// True when this build has NCCL (it may still find no GPU at run time).
bool nccl_available();

struct ParallelContext;
// Why no device group may be made over the context's tp group: "" when one may; otherwise the
// reason, which is that tp is wrapped by the secure channel and encrypts between its members
// (tp spans hosts with --encrypt-interconnect on): NCCL traffic is not encrypted, so GPU
// tensors must not leave a host through it. Pure; the same answer on every member.
std::string device_group_refusal(const ParallelContext& ctx);

// Collective over the context's tp group (every rank calls it): when this build has NCCL, tp
// has more than one member and device_group_refusal() is empty, sets ctx.tp_device to an NCCL
// group over the same members on the current GPU. Returns whether it did; otherwise the engine
// stages device tensors through the host over tp (encrypted between hosts where tp is), and
// `why_not`, when given, gets the reason ("" for a tp of one member).
bool attach_device_groups(ParallelContext& ctx, std::string* why_not = nullptr);

}  // namespace alem
