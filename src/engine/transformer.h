// ShardedTransformer: one rank's part of a Llama-family model (its tensor-parallel heads, FFN
// columns and vocabulary slice, for its pipeline stage's layers) plus that part's paged KV
// cache. Every rank of a replica calls forward() with the same StepPlan; the first stage embeds
// the tokens, later stages receive hidden states from the stage before, and the last stage
// returns logits for the rows the plan samples. All communication goes through the
// ParallelContext's process groups; with one rank they are no-ops.
//
// Memory: activations, norm weights, biases and the KV cache are Tensors allocated by the kernel
// backend (kernels/tensor.h), in its memory space; the only copies between the host and that
// space are the step's tokens, positions and block tables going in and the sampled rows' logits
// coming out (plus hidden states and partial sums when a process group takes host memory only).
// Weight matrices are read from the store one tensor at a time and handed to the backend at once
// (KernelBackend::adopt_weight): a device backend moves each into device memory and the host copy
// is released, so a GPU rank never holds its shard on the host.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/moe_ffn.h"
#include "engine/shard_plan.h"
#include "engine/step_plan.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"
#include "model/model_store.h"
#include "mpi/parallel_context.h"

namespace alem {

struct EngineOptions {
  int block_size = 16;                // tokens per KV cache block
  int num_kv_blocks = 0;              // 0: enough for one max_model_len sequence
  int max_model_len = 0;              // 0: the model's max_position_embeddings
  int micro_batches = 0;              // pipeline micro-batches per step; 0: pp size (when pp > 1)
  std::vector<int> layers_per_stage;  // empty: balanced pipeline stages
  // KV cache element type: BF16 (half the memory of F32; logits move by about 1e-2, greedy
  // tokens of the golden tests stay equal) or F32 (bit-for-bit the attention inputs; exactness
  // tests). `--kv-cache-dtype` on the command line.
  DType kv_cache_dtype = DType::BF16;
  // Called while this rank reads its shard: (steps done, steps in all), one step per layer and
  // one for the embedding and head. The CLI shows it (cli/progress.h); empty: nothing.
  std::function<void(int64_t done, int64_t total)> load_progress;
};

// Logits of the sampled rows, for this rank's vocabulary slice (tensor-parallel ranks hold
// different slices; the sampler merges candidates instead of gathering whole rows). They are
// either copied to the host (`values`, LogitsOut::kHost) or left in the kernel backend's memory
// (`backend_values`, LogitsOut::kBackend: valid until the model's next forward()), where the
// sampler asks the backend for candidates (KernelBackend::sampling_candidates) and copies whole
// rows only for the rows that need them (engine/replica_sampling.h).
struct StepLogits {
  std::vector<int64_t> request_ids;  // one per row, in plan order of sampled sequences
  int64_t vocab_begin = 0;
  int64_t vocab_size = 0;
  std::vector<float> values;              // [rows][vocab_size], host; empty for kBackend
  const float* backend_values = nullptr;  // [rows][vocab_size] in backend's memory, for kBackend
  const KernelBackend* backend = nullptr;
  int64_t rows() const { return static_cast<int64_t>(request_ids.size()); }
  bool on_backend() const { return backend_values != nullptr; }
  // Host rows only (LogitsOut::kHost).
  const float* row(int64_t i) const { return values.data() + i * vocab_size; }
  // Row i copied to host memory (vocab_size floats), wherever the logits are.
  void copy_row(int64_t i, float* host) const;
};

// Where forward() leaves the step's logits.
enum class LogitsOut : uint8_t { kHost = 0, kBackend = 1 };

// Time spent in each part of forward(), accumulated; for benchmarks.
struct ForwardTimings {
  double compute_seconds = 0;
  double communication_seconds = 0;
  int64_t steps = 0;
};

class ShardedTransformer {
 public:
  // Reads this rank's shard from the store. Throws alem::Error if the layout cannot shard the
  // model (see make_shard_plan) or the store lacks a tensor.
  ShardedTransformer(const ModelStoreReader& store, ParallelContext& ctx,
                     const KernelBackend& backend, const EngineOptions& options);
  ~ShardedTransformer();
  ShardedTransformer(const ShardedTransformer&) = delete;
  ShardedTransformer& operator=(const ShardedTransformer&) = delete;

  // Runs one step. Returns logits on the last pipeline stage (empty elsewhere), copied to the
  // host or, with LogitsOut::kBackend, left in the backend's memory until the next forward().
  // When the experts span replicas (ParallelLayout::experts_across_replicas) every call is
  // collective over the ep group: its replicas call forward() in lockstep, one with an empty plan
  // when it has no tokens (it then only serves the others' rows in each MoE layer).
  StepLogits forward(const StepPlan& plan, LogitsOut where = LogitsOut::kHost);

  const ModelConfig& config() const { return config_; }
  const ShardPlan& shard() const { return shard_; }
  int block_size() const { return options_.block_size; }
  int num_kv_blocks() const { return num_kv_blocks_; }
  int max_model_len() const { return options_.max_model_len; }
  double load_seconds() const { return load_seconds_; }
  uint64_t bytes_loaded() const { return bytes_loaded_; }
  uint64_t weight_bytes() const;
  uint64_t kv_cache_bytes() const;
  DType kv_cache_dtype() const { return options_.kv_cache_dtype; }
  const ForwardTimings& timings() const { return timings_; }
  // Mixture-of-experts routing counts over this rank's sparse layers since construction (empty
  // for dense models); identical on the ranks of a tp group.
  const MoeRoutingCounts& moe_routing() const { return moe_routing_; }
  // Experts across replicas: the all_to_all traffic and time of this rank's MoE layers since
  // construction (all zero otherwise).
  const ExpertDispatchStats& expert_dispatch() const { return dispatch_stats_; }
  // Bytes of this rank's expert weights, and the number of its sparse layers.
  uint64_t expert_weight_bytes() const;
  int num_moe_layers() const;
  void reset_timings() { timings_ = {}; }
  // Zeroes the given KV cache blocks (called when a request's blocks are released).
  // forward() first wipes the plan's wipe_blocks this way, before any KV write of the step.
  void wipe_kv_blocks(const std::vector<int32_t>& blocks);
  // The bytes of one KV block of one of this rank's layers (local index), keys or values, copied
  // to the host; for tests and inspection.
  std::vector<uint8_t> kv_block(int local_layer, int32_t block, bool values) const;
  // The whole cache is one kSensitive backend buffer (on the host: out of core dumps, mlock'ed
  // where allowed; in every space wiped on release).
  const BackendBuffer& kv_buffer() const { return *kv_cache_.buffer(); }
  const KernelBackend& backend() const { return backend_; }

 private:
  struct Layer;
  void run_micro_batch(const StepPlan& plan, size_t seq_begin, size_t seq_end, LogitsOut where,
                       StepLogits& out);
  // Moves a matrix just read from the store into the backend's memory (a no-op on the host).
  void adopt(WeightMatrix& w) const { backend_.adopt_weight(w); }
  void run_layer(Layer& layer, int64_t T);
  // One sparse layer's FFN (collective over the ep group when the experts span replicas).
  void run_moe(MoeFfn& moe, const float* h, int64_t T, float* out);
  // Host vector -> backend tensor (norm weights, biases), at load time.
  Tensor to_backend(const std::vector<float>& host) const;
  // Collectives and pipeline transfers on backend tensors; staged through host memory when the
  // backend's memory is on a device and the group takes host memory only.
  void all_reduce_tp(Tensor& t, int64_t count);
  void send_hidden(const Tensor& t, int64_t count);
  void recv_hidden(Tensor& t, int64_t count);
  size_t kv_block_bytes() const;

  ModelConfig config_;
  ShardPlan shard_;
  EngineOptions options_;
  ParallelContext& ctx_;
  const KernelBackend& backend_;
  RopeTable rope_;
  std::vector<std::unique_ptr<Layer>> layers_;
  WeightMatrix embedding_;  // vocab slice, first stage (and last stage when tied)
  WeightMatrix lm_head_;    // vocab slice, last stage, when untied
  Tensor final_norm_;
  int num_kv_blocks_ = 0;
  Tensor kv_cache_;  // every layer's K and V (kSensitive); Layer holds pointers into it
  size_t kv_bytes_per_layer_ = 0;  // K and V of one layer together
  double load_seconds_ = 0;
  uint64_t bytes_loaded_ = 0;
  ForwardTimings timings_;
  MoeRoutingCounts moe_routing_;
  ExpertDispatchStats dispatch_stats_;

  // Per-step scratch in the backend's memory, sized for the largest step seen.
  Tensor x_, h_, qkv_, q_, k_, v_, attn_, proj_, gate_up_, act_, logits_;
  Tensor stacked_part_;  // one part's output, for stacked matrices kept in parts
  Tensor tokens_, positions_, block_tables_;  // int32, uploaded once per micro-batch
  // Host-side staging of the per-micro-batch metadata (uploaded into the tensors above).
  std::vector<int32_t> positions_host_, block_tables_host_;
  std::vector<AttentionSequence> attention_seqs_;  // host array; block_table points into
                                                   // block_tables_ (the backend's memory)
  std::vector<float> host_staging_;  // only for host-only process groups with a device backend
};

}  // namespace alem
