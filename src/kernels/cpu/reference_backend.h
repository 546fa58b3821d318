// The "reference" kernel backend: plain scalar loops, accumulating in double where it is cheap.
// It is deliberately unoptimised so that it is obviously correct; every other backend (the
// vectorised CPU one, CUDA) is tested against it, and it is itself tested against independent
// math in tests/unit/test_kernels.cc.
#pragma once

#include "kernels/backend.h"

namespace alem {

class ReferenceBackend final : public KernelBackend {
 public:
  std::string name() const override { return "reference"; }
  void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
              float* y) const override;
  void rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
               float* y) const override;
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
};

}  // namespace alem
