// TimedBackend (see timed_backend.h): forwarding with a clock around each compute op.
#include "kernels/timed_backend.h"

namespace alem {

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kMatmul:
      return "matmul";
    case OpKind::kAttention:
      return "attention";
    case OpKind::kKvWrite:
      return "kv write";
    case OpKind::kNormRopeActivation:
      return "norm/rope/silu/add";
    case OpKind::kEmbedding:
      return "embedding";
    case OpKind::kSampling:
      return "sampling";
  }
  return "?";
}

double OpTimes::total() const {
  double sum = 0;
  for (double s : seconds) sum += s;
  return sum;
}

template <typename Call>
void TimedBackend::timed(OpKind kind, int64_t rows, const Call& call) const {
  const auto start = std::chrono::steady_clock::now();
  call();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  OpTimes& times = rows <= 1 ? single_ : many_;
  times.seconds[static_cast<int>(kind)] += seconds;
  ++times.calls[static_cast<int>(kind)];
}

void TimedBackend::sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                                       SamplingCandidates& out) const {
  timed(OpKind::kSampling, rows, [&] { inner_.sampling_candidates(logits, rows, vocab, k, out); });
}

void TimedBackend::matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                          float* y) const {
  timed(OpKind::kMatmul, M, [&] { inner_.matmul(x, M, w, bias, y); });
}

void TimedBackend::rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
                           float* y) const {
  timed(OpKind::kNormRopeActivation, M, [&] { inner_.rmsnorm(x, gamma, M, D, eps, y); });
}

void TimedBackend::add_rmsnorm(float* x, const float* residual, const float* gamma, int64_t M,
                               int64_t D, float eps, float* y) const {
  timed(OpKind::kNormRopeActivation, M,
        [&] { inner_.add_rmsnorm(x, residual, gamma, M, D, eps, y); });
}

void TimedBackend::rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                        const RopeTable& table) const {
  timed(OpKind::kNormRopeActivation, T,
        [&] { inner_.rope(x, T, num_heads, head_dim, positions, table); });
}

void TimedBackend::silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const {
  timed(OpKind::kNormRopeActivation, M, [&] { inner_.silu_mul(gate_up, M, I, out); });
}

void TimedBackend::add_inplace(float* y, const float* x, int64_t n) const {
  timed(OpKind::kNormRopeActivation, n <= width_ ? 1 : 2, [&] { inner_.add_inplace(y, x, n); });
}

namespace {
int64_t query_rows(const AttentionSequence* seqs, int num_seqs) {
  int64_t rows = 0;
  for (int i = 0; i < num_seqs; ++i) rows += seqs[i].q_count;
  return rows;
}
}  // namespace

void TimedBackend::kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                                  int num_seqs, const float* k, const float* v,
                                  KVCacheLayerView cache) const {
  timed(OpKind::kKvWrite, query_rows(seqs, num_seqs),
        [&] { inner_.kv_cache_write(shape, seqs, num_seqs, k, v, cache); });
}

void TimedBackend::paged_attention(const AttentionShape& shape, const AttentionSequence* seqs,
                                   int num_seqs, const float* q, KVCacheLayerView cache,
                                   float* out) const {
  timed(OpKind::kAttention, query_rows(seqs, num_seqs),
        [&] { inner_.paged_attention(shape, seqs, num_seqs, q, cache, out); });
}

void TimedBackend::embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens,
                             int64_t T, float* out) const {
  timed(OpKind::kEmbedding, T, [&] { inner_.embedding(table, row_begin, tokens, T, out); });
}

}  // namespace alem
