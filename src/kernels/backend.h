// The kernel interface every compute backend implements (plain reference, optimised CPU, CUDA).
// Model code calls only these operations, so a backend can be swapped without touching it.
// All pointers are in the backend's own memory space (host memory for the CPU backends), and
// that memory comes from the backend: allocate_buffer() hands out buffers in its space and
// upload()/download()/copy_2d() are the only ways data crosses between the host and that space
// (kernels/tensor.h wraps a buffer with a dtype and an element count). Model code is thereby the
// same for every backend. Shapes are row-major; "T" is the number of tokens in the step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/weights.h"

namespace alem {

class SensitiveBuffer;  // core/aligned_buffer.h

// Cos/sin tables for rotary embeddings, HF "rotate_half" convention: for i < head_dim/2,
//   y[i]              = x[i] * cos[p][i] - x[i + half] * sin[p][i]
//   y[i + half]       = x[i + half] * cos[p][i] + x[i] * sin[p][i]
// Built once per model by make_rope_table (engine/rope_table.h), including Llama-3 scaling.
struct RopeTable {
  int max_positions = 0;
  int half_dim = 0;
  std::vector<float> cos;  // [max_positions][half_dim]
  std::vector<float> sin;
};

// One sequence's slice of an attention step: its query rows are q[q_begin .. q_begin+q_count),
// at positions start_pos .. start_pos+q_count-1; it attends causally over cache positions
// [0, start_pos + q_count). block_table maps position/block_size to a physical cache block.
struct AttentionSequence {
  int32_t q_begin = 0;
  int32_t q_count = 0;
  int32_t start_pos = 0;
  const int32_t* block_table = nullptr;
};

struct AttentionShape {
  int num_heads = 0;     // query heads held by this rank
  int num_kv_heads = 0;  // kv heads held by this rank; num_heads % num_kv_heads == 0
  int head_dim = 0;
  int block_size = 0;  // tokens per KV cache block
  float scale = 0.f;   // usually 1/sqrt(head_dim)
};

// Paged KV cache of one layer: k and v are [num_blocks][block_size][num_kv_heads][head_dim] of
// `dtype`: F32, or BF16 (the engine's default: half the memory; kv_cache_write rounds to nearest
// even, attention reads widen to f32 and accumulate in f32).
struct KVCacheLayerView {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::F32;
};
// Throws alem::Error unless `dtype` is a KV cache type this build's kernels handle (F32, BF16).
void check_kv_cache_dtype(DType dtype);

// Sampling candidates of a step's logit rows, made where the logits are (kernels write them; the
// host reads them): per row the k best logits, best first (ties to the lower index), and the
// row's statistics, so the sampler (engine/sampler.h) can choose from k values per row instead of
// whole rows. Indices are into the row (0..vocab-1).
struct SamplingCandidates {
  int k = 0;
  std::vector<float> values;     // [rows][k]
  std::vector<int32_t> indices;  // [rows][k]
  std::vector<float> max_logit;  // [rows] max of the row (-inf when every logit is -inf)
  std::vector<double> sum_exp;   // [rows] sum of exp(logit - max_logit) over the row (0 if -inf)
  std::vector<uint8_t> invalid;  // [rows] 1 when the row holds NaN or +inf (nothing else is set)
};
// Largest k sampling_candidates takes.
constexpr int kMaxSamplingCandidates = 1024;
// Throws alem::Error unless rows >= 0, 0 < vocab < 2^31 and 1 <= k <= min(vocab, the maximum).
void check_sampling_candidates_args(int64_t rows, int64_t vocab, int k);
// Checks the arguments and sizes `out` for `rows` rows: values NaN, indices -1, maxima -inf,
// sums 0, no row flagged (what a backend then fills in).
void start_sampling_candidates(int64_t rows, int64_t vocab, int k, SamplingCandidates& out);
// One row of logits summarised for sampling: `invalid` when it holds NaN or +inf (nothing else
// is set); otherwise its maximum, the first index holding it, and the sum of exp(x - max) over
// the row in double (0 when every logit is -inf).
struct LogitRowStats {
  bool invalid = false;
  float max_logit = 0.f;
  int32_t argmax = 0;
  double sum_exp = 0.0;
};
using LogitRowStatsFn = void (*)(const float* x, int64_t n, LogitRowStats* out);
// The portable form (a scalar loop, exp in double); the CPU backend has a vector one.
void logit_row_stats(const float* x, int64_t n, LogitRowStats* out);
// Rows [row_begin, row_end) of `out` (sized by start_sampling_candidates) from host logits:
// each row's statistics by `stats`, then its k best entries, ties to the lower index.
void fill_sampling_candidates(const float* logits, int64_t row_begin, int64_t row_end,
                              int64_t vocab, int k, LogitRowStatsFn stats, SamplingCandidates& out);

// Where a backend's buffers live. The CPU backends use host memory; CUDA uses device memory.
enum class MemorySpace : uint8_t { kHost = 0, kDevice = 1 };
const char* memory_space_name(MemorySpace space);

// What a buffer holds, which decides how it is allocated and released.
//   kScratch: activations and other short-lived data.
//   kSensitive: request data kept for long (the KV cache). On the host it is a SensitiveBuffer
//     (core/aligned_buffer.h: out of core dumps, mlock'ed where allowed); in every space it is
//     wiped before it is released.
enum class BufferKind : uint8_t { kScratch = 0, kSensitive = 1 };

// A block of memory owned by a backend, zeroed when allocated, released (and for kSensitive
// wiped) by its destructor. Must not outlive the backend that made it.
class BackendBuffer {
 public:
  virtual ~BackendBuffer() = default;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  MemorySpace space() const { return space_; }
  BufferKind kind() const { return kind_; }
  // The host mapping behind a kSensitive host buffer (for hygiene checks); null otherwise.
  virtual const SensitiveBuffer* host_sensitive() const { return nullptr; }

 protected:
  BackendBuffer(void* data, size_t bytes, MemorySpace space, BufferKind kind)
      : data_(data), bytes_(bytes), space_(space), kind_(kind) {}
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;

 private:
  void* data_;
  size_t bytes_;
  MemorySpace space_;
  BufferKind kind_;
};

class KernelBackend {
 public:
  virtual ~KernelBackend() = default;
  virtual std::string name() const = 0;
  // Host threads one op may use (1 for backends that do not thread on the host). Settable after
  // construction, so `alem bench generate --threads N` controls the backend it already built;
  // call it only between ops, never while one runs. Values below 1 mean 1.
  virtual int max_threads() const { return 1; }
  virtual void set_max_threads(int threads) { (void)threads; }

  // Memory. The defaults serve the host backends (plain memcpy); CUDA overrides every one.
  virtual MemorySpace memory_space() const { return MemorySpace::kHost; }
  // A zeroed buffer of `bytes` (at least 64-byte aligned) in this backend's space.
  virtual std::unique_ptr<BackendBuffer> allocate_buffer(size_t bytes, BufferKind kind) const;
  // dst (this backend's space) <- src (host), and dst (host) <- src (this backend's space).
  virtual void upload(void* dst, const void* src_host, size_t bytes) const;
  virtual void download(void* dst_host, const void* src, size_t bytes) const;
  // Strided copy inside this backend's space: `rows` rows of `row_bytes`, like cudaMemcpy2D.
  virtual void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                       size_t row_bytes, size_t rows) const;
  // Zeroes bytes inside this backend's space so the write cannot be elided (KV block release).
  virtual void wipe(void* dst, size_t bytes) const;

  // Weights. Moves `w` into this backend's memory for good: afterwards this backend's ops read
  // it from there (WeightMatrix::backend_copy) and w's host bytes are released, keeping its
  // dtype and shape. The engine calls it on each matrix as soon as it is read from the store, so
  // a device rank holds at most one layer's weights on the host, never its shard. Host backends
  // keep `w` as it is (the default).
  virtual void adopt_weight(WeightMatrix& w) const { (void)w; }

  // Sampling where the logits are: fills `out` for logits[rows][vocab] (this backend's memory)
  // with each row's k best entries and statistics (see SamplingCandidates); only those cross to
  // the host. 1 <= k <= min(vocab, kMaxSamplingCandidates). The default serves host memory.
  virtual void sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                                   SamplingCandidates& out) const;

  // y[M][N] = x[M][K] * W^T (+ bias[N] when bias != nullptr), W is [N][K] of any weight dtype.
  virtual void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                      float* y) const = 0;
  // y[M][D] = x / rms(x) * gamma, row-wise. y may alias x.
  virtual void rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
                       float* y) const = 0;
  // The residual add and the norm after it, fused where a backend can: x[M][D] += residual, then
  // y = rmsnorm(x) * gamma row-wise (x keeps the sum; y must not alias x or residual). The
  // default is add_inplace then rmsnorm, so host backends give exactly those two ops' results.
  virtual void add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M,
                           int64_t D, float eps, float* y) const;
  // In place on x[T][num_heads * head_dim], rotating every head of row t by positions[t].
  virtual void rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                    const RopeTable& table) const = 0;
  // out[M][I] = silu(gate_up[M][0:I]) * gate_up[M][I:2I].
  virtual void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const = 0;
  // y[i] += x[i] for n elements.
  virtual void add_inplace(float* y, const float* x, int64_t n) const = 0;
  // Writes k[T][kv_heads*head_dim], v[...] into the cache at each sequence's positions.
  virtual void kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                              int num_seqs, const float* k, const float* v,
                              KVCacheLayerView cache) const = 0;
  // out[T][num_heads*head_dim] = causal softmax(q k^T * scale) v over the cache (which already
  // holds this step's keys and values). Grouped-query: head h reads kv head h / (heads/kv_heads).
  virtual void paged_attention(const AttentionShape& shape, const AttentionSequence* seqs,
                               int num_seqs, const float* q, KVCacheLayerView cache,
                               float* out) const = 0;
  // out[T][D] = rows of an embedding table for tokens in [row_begin, row_begin + table.rows);
  // tokens outside that range give zero rows (vocab-parallel embedding, summed across ranks).
  virtual void embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens,
                         int64_t T, float* out) const = 0;
};

// "reference": plain scalar loops, the ground truth for kernel tests.
// "cpu": vectorised (AVX2/FMA, AVX-512 when the CPU has it) and threaded with OpenMP.
// "cuda": only when built with CUDA and a GPU is present.
std::unique_ptr<KernelBackend> make_backend(const std::string& name);
std::vector<std::string> available_backends();

}  // namespace alem
