// TimedBackend: a KernelBackend that forwards every call to another backend and adds up the
// wall time each kind of op takes, separately for single-row calls (a one-sequence decode step)
// and many-row calls (prefill). `alem bench generate` wraps the engine's backend in it to report
// what share of a decode step the matmuls take and what is left to attention, norms, sampling
// and everything outside the kernels (issue: decode overhead must stay a small share). Timing a
// call costs two clock reads (tens of nanoseconds against microseconds per op).
#pragma once

#include <array>
#include <chrono>
#include <string>

#include "kernels/backend.h"

namespace alem {

enum class OpKind { kMatmul, kAttention, kKvWrite, kNormRopeActivation, kEmbedding, kSampling };
constexpr int kOpKinds = 6;
const char* op_kind_name(OpKind kind);

struct OpTimes {
  std::array<double, kOpKinds> seconds{};
  std::array<long long, kOpKinds> calls{};
  double total() const;
};

class TimedBackend final : public KernelBackend {
 public:
  // `inner` must outlive this. `width` is the model's hidden size: add_inplace, which takes only
  // an element count, is a single-row call when it adds at most one row.
  TimedBackend(KernelBackend& inner, int64_t width) : inner_(inner), width_(width) {}

  // Times of single-row calls and of many-row calls since the last reset.
  const OpTimes& single_row() const { return single_; }
  const OpTimes& many_rows() const { return many_; }
  void reset() { single_ = many_ = OpTimes{}; }

  std::string name() const override { return inner_.name(); }
  int max_threads() const override { return inner_.max_threads(); }
  void set_max_threads(int threads) override { inner_.set_max_threads(threads); }
  MemorySpace memory_space() const override { return inner_.memory_space(); }
  std::unique_ptr<BackendBuffer> allocate_buffer(size_t bytes, BufferKind kind) const override {
    return inner_.allocate_buffer(bytes, kind);
  }
  void upload(void* dst, const void* src_host, size_t bytes) const override {
    inner_.upload(dst, src_host, bytes);
  }
  void download(void* dst_host, const void* src, size_t bytes) const override {
    inner_.download(dst_host, src, bytes);
  }
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) const override {
    inner_.copy_2d(dst, dst_pitch, src, src_pitch, row_bytes, rows);
  }
  void wipe(void* dst, size_t bytes) const override { inner_.wipe(dst, bytes); }
  void adopt_weight(WeightMatrix& w) const override { inner_.adopt_weight(w); }

  void sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                           SamplingCandidates& out) const override;
  void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
              float* y) const override;
  void rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
               float* y) const override;
  void add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M, int64_t D,
                   float eps, float* y) const override;
  void rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
            const RopeTable& table) const override;
  void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const override;
  void add_inplace(float* y, const float* x, int64_t n) const override;
  void kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                      const float* k, const float* v, KVCacheLayerView cache) const override;
  void paged_attention(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                       const float* q, KVCacheLayerView cache, float* out) const override;
  void embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens, int64_t T,
                 float* out) const override;

 private:
  template <typename Call>
  void timed(OpKind kind, int64_t rows, const Call& call) const;

  KernelBackend& inner_;
  int64_t width_;
  mutable OpTimes single_, many_;
};

}  // namespace alem
