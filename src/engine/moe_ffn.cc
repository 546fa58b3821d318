// The grouped expert FFN of one sparse layer (see moe_ffn.h); the routing rule itself is
// engine/moe_routing.cc.
#include "engine/moe_ffn.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/architecture.h"

namespace alem {

DType stored_expert_dtype(const ModelStoreReader& store, const ModelConfig& config) {
  auto block = [](DType t) { return t == DType::I8 ? kInt8GroupSize : dtype_block_elements(t); };
  bool found = false;
  DType strictest = DType::F32;
  for (int layer = 0; layer < config.num_layers; ++layer) {
    if (!config.is_moe_layer(layer)) continue;
    for (int e = 0; e < config.num_experts; ++e) {
      const DType t =
          store.tensor_info(expert_tensor_name(config, layer, e, ExpertMatrix::kDown)).dtype;
      if (!found || block(t) > block(strictest)) strictest = t;
      found = true;
    }
  }
  return strictest;
}

MoeFfn::MoeFfn(const ModelStoreReader& store, const ModelConfig& config, const ShardPlan& shard,
               int layer)
    : hidden_(config.hidden_size),
      num_experts_(config.num_experts),
      top_k_(config.num_experts_per_tok),
      expert_begin_(shard.expert_begin),
      ffn_size_(shard.expert_ffn_size),
      routing_(config, moe_family(config).router_bias.empty()
                           ? std::vector<float>{}
                           : store.read_vector(router_bias_tensor_name(config, layer))) {
  ALEM_CHECK(shard.num_local_experts > 0 && ffn_size_ > 0,
             "layer " + std::to_string(layer) + " is sparse but the shard plan holds no experts");
  router_ = store.read_matrix(router_tensor_name(config, layer), 0, num_experts_);
  for (int e = shard.expert_begin; e < shard.expert_begin + shard.num_local_experts; ++e) {
    Expert expert;
    std::vector<WeightMatrix> parts;
    parts.push_back(store.read_matrix(expert_tensor_name(config, layer, e, ExpertMatrix::kGate),
                                      shard.expert_ffn_begin, ffn_size_));
    parts.push_back(store.read_matrix(expert_tensor_name(config, layer, e, ExpertMatrix::kUp),
                                      shard.expert_ffn_begin, ffn_size_));
    expert.gate_up = concat_rows(parts);
    expert.down = store.read_matrix(expert_tensor_name(config, layer, e, ExpertMatrix::kDown), 0,
                                    hidden_, shard.expert_ffn_begin, ffn_size_);
    experts_.push_back(std::move(expert));
  }
  if (shard.shared_ffn_size > 0) {
    shared_size_ = shard.shared_ffn_size;
    std::vector<WeightMatrix> parts;
    for (ExpertMatrix which : {ExpertMatrix::kGate, ExpertMatrix::kUp}) {
      parts.push_back(store.read_matrix(shared_expert_tensor_name(config, layer, which),
                                        shard.shared_ffn_begin, shared_size_));
    }
    shared_.gate_up = concat_rows(parts);
    shared_.down = store.read_matrix(shared_expert_tensor_name(config, layer, ExpertMatrix::kDown),
                                     0, hidden_, shard.shared_ffn_begin, shared_size_);
    if (!moe_family(config).shared_expert_gate.empty()) {
      shared_gate_ = store.read_matrix(shared_expert_gate_tensor_name(config, layer), 0, 1);
    }
  }
}

void MoeFfn::adopt_weights(const KernelBackend& backend) {
  if (backend.memory_space() != MemorySpace::kHost) return;
  for (Expert& e : experts_) {
    backend.adopt_weight(e.gate_up);
    backend.adopt_weight(e.down);
  }
  backend.adopt_weight(shared_.gate_up);
  backend.adopt_weight(shared_.down);
}

uint64_t MoeFfn::expert_weight_bytes() const {
  uint64_t total = 0;
  for (const Expert& e : experts_) total += e.gate_up.bytes() + e.down.bytes();
  return total;
}

uint64_t MoeFfn::weight_bytes() const {
  return router_.bytes() + expert_weight_bytes() + shared_.gate_up.bytes() + shared_.down.bytes() +
         shared_gate_.bytes();
}

void MoeFfn::run_local_expert(const KernelBackend& backend, size_t local, const float* in,
                              int64_t n, float* out) {
  const int64_t F = ffn_size_;
  gate_up_.resize(n * 2 * F);
  act_.resize(n * F);
  const Expert& w = experts_[local];
  backend.matmul(in, n, w.gate_up, nullptr, gate_up_.data());
  backend.silu_mul(gate_up_.data(), n, F, act_.data());
  backend.matmul(act_.data(), n, w.down, nullptr, out);
}

void MoeFfn::forward(const KernelBackend& backend, const float* x, int64_t T, float* out,
                     MoeRoutingCounts& counts, ProcessGroup* ep_group,
                     ExpertDispatchStats* dispatch) {
  const int64_t H = hidden_, E = num_experts_, K = top_k_;
  const bool across = ep_group && ep_group->size() > 1;
  std::fill(out, out + T * H, 0.f);
  if (T == 0 && !across) return;
  if (counts.tokens_per_expert.size() != static_cast<size_t>(E)) {
    counts.tokens_per_expert.assign(E, 0);
  }
  logits_.resize(T * E);
  chosen_.resize(T * K);
  weights_.resize(T * K);
  if (T > 0) backend.matmul(x, T, router_, nullptr, logits_.data());

  routing_.route(logits_.data(), T, chosen_.data(), weights_.data());
  for (int64_t i = 0; i < T * K; ++i) ++counts.tokens_per_expert[chosen_[i]];
  counts.routed_tokens += static_cast<uint64_t>(T);
  if (T == 1) ++counts.single_token_calls;

  if (across) {
    ExpertDispatchStats unused;
    dispatch_and_combine(
        *ep_group, num_experts_, H, x, T, top_k_, chosen_.data(), weights_.data(),
        [&](int local, const float* in, int64_t n, float* result) {
          // A decode step here reads the experts the group's rows chose on this rank.
          const Expert& w = experts_[static_cast<size_t>(local)];
          if (T == 1) counts.single_token_expert_bytes += w.gate_up.bytes() + w.down.bytes();
          run_local_expert(backend, static_cast<size_t>(local), in, n, result);
        },
        out, dispatch ? *dispatch : unused);
  } else {
    // Grouped expert FFN: gather each local expert's tokens, run them as one batch, scatter back.
    for (size_t local = 0; local < experts_.size(); ++local) {
      const int32_t expert = expert_begin_ + static_cast<int32_t>(local);
      rows_.clear();
      row_weights_.clear();
      for (int64_t i = 0; i < T * K; ++i) {
        if (chosen_[i] == expert) {
          rows_.push_back(static_cast<int32_t>(i / K));
          row_weights_.push_back(weights_[i]);
        }
      }
      const int64_t n = static_cast<int64_t>(rows_.size());
      if (n == 0) continue;
      gathered_.resize(n * H);
      expert_out_.resize(n * H);
      for (int64_t r = 0; r < n; ++r) {
        std::copy(x + rows_[r] * H, x + (rows_[r] + 1) * H, gathered_.data() + r * H);
      }
      const Expert& w = experts_[local];
      if (T == 1) counts.single_token_expert_bytes += w.gate_up.bytes() + w.down.bytes();
      run_local_expert(backend, local, gathered_.data(), n, expert_out_.data());
      for (int64_t r = 0; r < n; ++r) {
        float* dst = out + rows_[r] * H;
        const float* src = expert_out_.data() + r * H;
        const float weight = row_weights_[r];
        for (int64_t h = 0; h < H; ++h) dst[h] += weight * src[h];
      }
    }
  }
  if (T == 0) return;

  // Shared expert: all T tokens, this rank's columns, scaled per token by the gate's sigmoid.
  if (shared_size_ > 0) {
    const int64_t S = shared_size_;
    gate_up_.resize(T * 2 * S);
    act_.resize(T * S);
    expert_out_.resize(T * H);
    shared_scale_.resize(T);
    backend.matmul(x, T, shared_.gate_up, nullptr, gate_up_.data());
    backend.silu_mul(gate_up_.data(), T, S, act_.data());
    backend.matmul(act_.data(), T, shared_.down, nullptr, expert_out_.data());
    if (shared_gate_.rows > 0) {
      backend.matmul(x, T, shared_gate_, nullptr, shared_scale_.data());
      for (int64_t t = 0; t < T; ++t) shared_scale_[t] = 1.f / (1.f + std::exp(-shared_scale_[t]));
    } else {  // DeepSeek-V3 style shared experts: no gate
      std::fill(shared_scale_.begin(), shared_scale_.end(), 1.f);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float scale = shared_scale_[t];
      const float* src = expert_out_.data() + t * H;
      float* dst = out + t * H;
      for (int64_t h = 0; h < H; ++h) dst[h] += scale * src[h];
    }
  }
}

}  // namespace alem
