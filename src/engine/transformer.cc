// The forward pass of one rank's shard: embedding (vocab-parallel), decoder layers with
// column-parallel QKV / gate-up and row-parallel O / down (one all-reduce each), paged
// attention, final norm and vocab-parallel LM head. Pipeline stages exchange hidden states
// with blocking send/recv per micro-batch, so stage s computes micro-batch m while stage s+1
// computes m-1.
#include "engine/transformer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/error.h"
#include "engine/moe_ffn.h"
#include "engine/rope_table.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename T>
void ensure_size(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

constexpr int kTagHidden = 100;

}  // namespace

struct ShardedTransformer::Layer {
  std::vector<float> input_norm, post_attention_norm;
  std::vector<float> q_norm, k_norm;  // Qwen3 QK-norm, per head_dim
  WeightMatrix qkv;                   // rows: local q heads, then local k, then local v
  std::vector<float> qkv_bias;        // Qwen2, same row order; empty when absent
  WeightMatrix o_proj;                // [hidden][local heads * head_dim]
  WeightMatrix gate_up;               // rows: local gate, then local up
  WeightMatrix down;                  // [hidden][local ffn]
  std::unique_ptr<MoeFfn> moe;        // sparse layers: router and local experts (no gate_up/down)
  float* k_cache = nullptr;           // kv_floats_per_layer_ each, inside kv_region_
  float* v_cache = nullptr;
};

ShardedTransformer::ShardedTransformer(const ModelStoreReader& store, ParallelContext& ctx,
                                       const KernelBackend& backend, const EngineOptions& options)
    : config_(store.config()), options_(options), ctx_(ctx), backend_(backend) {
  const auto t0 = Clock::now();
  const uint64_t bytes_before = store.bytes_read();
  config_.validate();
  const std::string q_name = layer_tensor_name(0, "self_attn.q_proj.weight");
  const bool int8 = store.tensor_info(q_name).dtype == DType::I8;
  shard_ = make_shard_plan(config_, ctx.layout.tp_size(), ctx.coords.tp, ctx.layout.pp_size(),
                           ctx.coords.pp, int8, options.layers_per_stage, ctx.layout.ep_size());
  if (options_.max_model_len <= 0) options_.max_model_len = config_.max_position_embeddings;
  ALEM_CHECK(options_.max_model_len <= config_.max_position_embeddings,
             "max_model_len " + std::to_string(options_.max_model_len) +
                 " exceeds the model's context of " +
                 std::to_string(config_.max_position_embeddings));
  ALEM_CHECK(options_.block_size > 0, "block_size must be positive");
  num_kv_blocks_ = options_.num_kv_blocks > 0
                       ? options_.num_kv_blocks
                       : (options_.max_model_len + options_.block_size - 1) / options_.block_size;
  rope_ = make_rope_table(config_, options_.max_model_len);

  const int hd = config_.head_dim;
  const int64_t hidden = config_.hidden_size;
  const ShardPlan& s = shard_;
  const size_t kv_floats =
      static_cast<size_t>(num_kv_blocks_) * options_.block_size * s.num_kv_heads * hd;
  kv_floats_per_layer_ = kv_floats;
  // One mapping for the whole KV cache: out of core dumps, mlock'ed where allowed, wiped on
  // release (core/aligned_buffer.h).
  kv_region_ = SensitiveBuffer(2 * kv_floats * static_cast<size_t>(s.num_layers) * sizeof(float));
  for (int l = s.first_layer; l < s.first_layer + s.num_layers; ++l) {
    auto layer = std::make_unique<Layer>();
    auto name = [&](const char* suffix) { return layer_tensor_name(l, suffix); };
    layer->input_norm = store.read_vector(name("input_layernorm.weight"));
    layer->post_attention_norm = store.read_vector(name("post_attention_layernorm.weight"));
    std::vector<WeightMatrix> qkv_parts;
    qkv_parts.push_back(store.read_matrix(name("self_attn.q_proj.weight"),
                                          int64_t{s.head_begin} * hd, int64_t{s.num_heads} * hd));
    qkv_parts.push_back(store.read_matrix(name("self_attn.k_proj.weight"),
                                          int64_t{s.kv_head_begin} * hd,
                                          int64_t{s.num_kv_heads} * hd));
    qkv_parts.push_back(store.read_matrix(name("self_attn.v_proj.weight"),
                                          int64_t{s.kv_head_begin} * hd,
                                          int64_t{s.num_kv_heads} * hd));
    layer->qkv = concat_rows(qkv_parts);
    if (config_.attention_bias) {
      for (const char* b :
           {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) {
        const bool is_q = std::string(b).find("q_proj") != std::string::npos;
        const int64_t begin = int64_t{is_q ? s.head_begin : s.kv_head_begin} * hd;
        const int64_t count = int64_t{is_q ? s.num_heads : s.num_kv_heads} * hd;
        std::vector<float> part = store.read_vector(name(b), begin, count);
        layer->qkv_bias.insert(layer->qkv_bias.end(), part.begin(), part.end());
      }
    }
    if (config_.qk_norm) {
      layer->q_norm = store.read_vector(name("self_attn.q_norm.weight"));
      layer->k_norm = store.read_vector(name("self_attn.k_norm.weight"));
    }
    layer->o_proj = store.read_matrix(name("self_attn.o_proj.weight"), 0, hidden,
                                      int64_t{s.head_begin} * hd, int64_t{s.num_heads} * hd);
    if (config_.is_moe_layer(l)) {
      layer->moe = std::make_unique<MoeFfn>(store, config_, s, l);
    } else {
      std::vector<WeightMatrix> gate_up_parts;
      gate_up_parts.push_back(
          store.read_matrix(name("mlp.gate_proj.weight"), s.ffn_begin, s.ffn_size));
      gate_up_parts.push_back(
          store.read_matrix(name("mlp.up_proj.weight"), s.ffn_begin, s.ffn_size));
      layer->gate_up = concat_rows(gate_up_parts);
      layer->down =
          store.read_matrix(name("mlp.down_proj.weight"), 0, hidden, s.ffn_begin, s.ffn_size);
    }
    const size_t local = layers_.size();
    layer->k_cache = kv_region_.as<float>() + (2 * local) * kv_floats;
    layer->v_cache = kv_region_.as<float>() + (2 * local + 1) * kv_floats;
    layers_.push_back(std::move(layer));
  }
  const bool tied = config_.tie_word_embeddings || !store.has_tensor("lm_head.weight");
  if (s.has_embedding() || (s.has_lm_head() && tied)) {
    embedding_ = store.read_matrix("model.embed_tokens.weight", s.vocab_begin, s.vocab_size);
  }
  if (s.has_lm_head()) {
    final_norm_ = store.read_vector("model.norm.weight");
    if (!tied) lm_head_ = store.read_matrix("lm_head.weight", s.vocab_begin, s.vocab_size);
  }
  bytes_loaded_ = store.bytes_read() - bytes_before;
  load_seconds_ = seconds_since(t0);
}

// The KV region wipes itself when it is unmapped.
ShardedTransformer::~ShardedTransformer() = default;

uint64_t ShardedTransformer::weight_bytes() const {
  uint64_t total = embedding_.bytes() + lm_head_.bytes();
  for (const auto& l : layers_) {
    total += l->qkv.bytes() + l->o_proj.bytes() + l->gate_up.bytes() + l->down.bytes();
    if (l->moe) total += l->moe->weight_bytes();
  }
  return total;
}

uint64_t ShardedTransformer::expert_weight_bytes() const {
  uint64_t total = 0;
  for (const auto& l : layers_) total += l->moe ? l->moe->expert_weight_bytes() : 0;
  return total;
}

int ShardedTransformer::num_moe_layers() const {
  int n = 0;
  for (const auto& l : layers_) n += l->moe ? 1 : 0;
  return n;
}

uint64_t ShardedTransformer::kv_cache_bytes() const {
  uint64_t total = 0;
  for (size_t l = 0; l < layers_.size(); ++l) total += 2 * kv_floats_per_layer_ * sizeof(float);
  return total;
}

void ShardedTransformer::wipe_kv_blocks(const std::vector<int32_t>& blocks) {
  const size_t block_floats =
      static_cast<size_t>(options_.block_size) * shard_.num_kv_heads * config_.head_dim;
  for (auto& l : layers_) {
    for (int32_t b : blocks) {
      ALEM_CHECK(b >= 0 && b < num_kv_blocks_, "KV block " + std::to_string(b) + " out of range");
      secure_wipe(l->k_cache + b * block_floats, block_floats * sizeof(float));
      secure_wipe(l->v_cache + b * block_floats, block_floats * sizeof(float));
    }
  }
}

std::span<const float> ShardedTransformer::kv_block(int local_layer, int32_t block,
                                                    bool values) const {
  ALEM_CHECK(local_layer >= 0 && local_layer < static_cast<int>(layers_.size()),
             "local layer " + std::to_string(local_layer) + " out of range");
  ALEM_CHECK(block >= 0 && block < num_kv_blocks_,
             "KV block " + std::to_string(block) + " out of range");
  const size_t block_floats =
      static_cast<size_t>(options_.block_size) * shard_.num_kv_heads * config_.head_dim;
  const Layer& l = *layers_[local_layer];
  return {(values ? l.v_cache : l.k_cache) + block * block_floats, block_floats};
}

StepLogits ShardedTransformer::forward(const StepPlan& plan) {
  StepLogits out;
  out.vocab_begin = shard_.vocab_begin;
  out.vocab_size = shard_.vocab_size;
  // Validate the plan against the cache before touching any memory.
  int64_t covered = 0;
  for (const StepSequence& seq : plan.sequences) {
    const int64_t end = int64_t{seq.start_pos} + seq.num_tokens;
    ALEM_CHECK(end <= options_.max_model_len, "sequence reaches position " + std::to_string(end) +
                                                  ", beyond max_model_len " +
                                                  std::to_string(options_.max_model_len));
    const int64_t blocks_needed = (end + options_.block_size - 1) / options_.block_size;
    ALEM_CHECK(static_cast<int64_t>(seq.block_table.size()) >= blocks_needed,
               "block table too short for the sequence");
    for (int64_t i = 0; i < blocks_needed; ++i) {
      ALEM_CHECK(seq.block_table[i] >= 0 && seq.block_table[i] < num_kv_blocks_,
                 "block table names block " + std::to_string(seq.block_table[i]) +
                     " outside the cache of " + std::to_string(num_kv_blocks_));
    }
    covered += seq.num_tokens;
  }
  ALEM_CHECK(covered == plan.total_tokens(), "plan sequences do not cover its tokens");
  // Blocks released since the last step are zeroed on every rank before this step writes KV
  // (a released block may already be in this step's tables, handed to another request).
  if (!plan.wipe_blocks.empty()) wipe_kv_blocks(plan.wipe_blocks);
  if (plan.sequences.empty()) return out;

  // Split sequences into micro-batches of roughly equal token counts (pipeline only).
  int micro = options_.micro_batches > 0 ? options_.micro_batches : ctx_.layout.pp_size();
  micro = std::max(1, std::min<int>(micro, static_cast<int>(plan.sequences.size())));
  const int64_t per_micro = (covered + micro - 1) / micro;
  size_t begin = 0;
  while (begin < plan.sequences.size()) {
    size_t end = begin;
    int64_t tokens = 0;
    while (end < plan.sequences.size() &&
           (tokens == 0 || tokens + plan.sequences[end].num_tokens <= per_micro)) {
      tokens += plan.sequences[end].num_tokens;
      ++end;
    }
    run_micro_batch(plan, begin, end, out);
    begin = end;
  }
  ++timings_.steps;
  return out;
}

void ShardedTransformer::run_micro_batch(const StepPlan& plan, size_t seq_begin, size_t seq_end,
                                         StepLogits& out) {
  const int64_t H = config_.hidden_size;
  int64_t token_offset = 0;
  for (size_t i = 0; i < seq_begin; ++i) token_offset += plan.sequences[i].num_tokens;
  int64_t T = 0;
  for (size_t i = seq_begin; i < seq_end; ++i) T += plan.sequences[i].num_tokens;

  // Positions and attention descriptors for this micro-batch.
  positions_.resize(T);
  attention_seqs_.clear();
  int64_t row = 0;
  for (size_t i = seq_begin; i < seq_end; ++i) {
    const StepSequence& seq = plan.sequences[i];
    AttentionSequence a;
    a.q_begin = static_cast<int32_t>(row);
    a.q_count = seq.num_tokens;
    a.start_pos = seq.start_pos;
    a.block_table = seq.block_table.data();
    attention_seqs_.push_back(a);
    for (int32_t j = 0; j < seq.num_tokens; ++j) positions_[row + j] = seq.start_pos + j;
    row += seq.num_tokens;
  }

  ensure_size(x_, T * H);
  auto t_comm = Clock::now();
  auto t_compute = Clock::now();
  if (shard_.has_embedding()) {
    t_compute = Clock::now();
    backend_.embedding(embedding_, shard_.vocab_begin, plan.tokens.data() + token_offset, T,
                       x_.data());
    timings_.compute_seconds += seconds_since(t_compute);
    t_comm = Clock::now();
    ctx_.tp->all_reduce(x_.data(), T * H);  // each rank filled only its vocab rows
    timings_.communication_seconds += seconds_since(t_comm);
  } else {
    t_comm = Clock::now();
    ctx_.pp->recv(x_.data(), T * H * sizeof(float), ctx_.coords.pp - 1, kTagHidden);
    timings_.communication_seconds += seconds_since(t_comm);
  }

  for (size_t l = 0; l < layers_.size(); ++l) run_layer(*layers_[l], T);

  if (!shard_.has_lm_head()) {
    t_comm = Clock::now();
    ctx_.pp->send(x_.data(), T * H * sizeof(float), ctx_.coords.pp + 1, kTagHidden);
    timings_.communication_seconds += seconds_since(t_comm);
    return;
  }
  // Last stage: final norm and LM head on the last row of every sampled sequence.
  t_compute = Clock::now();
  std::vector<int64_t> rows;
  row = 0;
  for (size_t i = seq_begin; i < seq_end; ++i) {
    const StepSequence& seq = plan.sequences[i];
    row += seq.num_tokens;
    if (seq.sample && seq.num_tokens > 0) {
      rows.push_back(row - 1);
      out.request_ids.push_back(seq.request_id);
    }
  }
  if (rows.empty()) return;
  const int64_t R = static_cast<int64_t>(rows.size());
  ensure_size(h_, R * H);
  for (int64_t r = 0; r < R; ++r) {
    std::copy(x_.begin() + rows[r] * H, x_.begin() + (rows[r] + 1) * H, h_.begin() + r * H);
  }
  backend_.rmsnorm(h_.data(), final_norm_.data(), R, H, config_.rms_norm_eps, h_.data());
  const WeightMatrix& head = lm_head_.rows > 0 ? lm_head_ : embedding_;
  const size_t old = out.values.size();
  out.values.resize(old + R * shard_.vocab_size);
  backend_.matmul(h_.data(), R, head, nullptr, out.values.data() + old);
  timings_.compute_seconds += seconds_since(t_compute);
}

void ShardedTransformer::run_layer(Layer& L, int64_t T) {
  const int64_t H = config_.hidden_size;
  const int hd = config_.head_dim;
  const int nh = shard_.num_heads, nkv = shard_.num_kv_heads;
  const int64_t q_width = int64_t{nh} * hd, kv_width = int64_t{nkv} * hd;
  const int64_t qkv_width = q_width + 2 * kv_width;
  const int64_t ffn = shard_.ffn_size;
  ensure_size(h_, T * H);
  ensure_size(qkv_, T * qkv_width);
  ensure_size(q_, T * q_width);
  ensure_size(k_, T * kv_width);
  ensure_size(v_, T * kv_width);
  ensure_size(attn_, T * q_width);
  ensure_size(proj_, T * H);
  ensure_size(gate_up_, T * 2 * ffn);
  ensure_size(act_, T * ffn);

  auto t0 = Clock::now();
  // Attention block.
  backend_.rmsnorm(x_.data(), L.input_norm.data(), T, H, config_.rms_norm_eps, h_.data());
  backend_.matmul(h_.data(), T, L.qkv, L.qkv_bias.empty() ? nullptr : L.qkv_bias.data(),
                  qkv_.data());
  for (int64_t t = 0; t < T; ++t) {
    const float* src = qkv_.data() + t * qkv_width;
    std::copy(src, src + q_width, q_.data() + t * q_width);
    std::copy(src + q_width, src + q_width + kv_width, k_.data() + t * kv_width);
    std::copy(src + q_width + kv_width, src + qkv_width, v_.data() + t * kv_width);
  }
  if (config_.qk_norm) {
    backend_.rmsnorm(q_.data(), L.q_norm.data(), T * nh, hd, config_.rms_norm_eps, q_.data());
    backend_.rmsnorm(k_.data(), L.k_norm.data(), T * nkv, hd, config_.rms_norm_eps, k_.data());
  }
  backend_.rope(q_.data(), T, nh, hd, positions_.data(), rope_);
  backend_.rope(k_.data(), T, nkv, hd, positions_.data(), rope_);
  AttentionShape shape;
  shape.num_heads = nh;
  shape.num_kv_heads = nkv;
  shape.head_dim = hd;
  shape.block_size = options_.block_size;
  shape.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  KVCacheLayerView cache{L.k_cache, L.v_cache};
  const int n_seqs = static_cast<int>(attention_seqs_.size());
  backend_.kv_cache_write(shape, attention_seqs_.data(), n_seqs, k_.data(), v_.data(), cache);
  backend_.paged_attention(shape, attention_seqs_.data(), n_seqs, q_.data(), cache, attn_.data());
  backend_.matmul(attn_.data(), T, L.o_proj, nullptr, proj_.data());
  timings_.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  ctx_.tp->all_reduce(proj_.data(), T * H);
  timings_.communication_seconds += seconds_since(t0);
  t0 = Clock::now();
  backend_.add_inplace(x_.data(), proj_.data(), T * H);

  // Feed-forward block.
  backend_.rmsnorm(x_.data(), L.post_attention_norm.data(), T, H, config_.rms_norm_eps, h_.data());
  if (L.moe) {  // sparse layer: this rank's experts; the all-reduce below combines them
    L.moe->forward(backend_, h_.data(), T, proj_.data(), moe_routing_);
  } else {
    backend_.matmul(h_.data(), T, L.gate_up, nullptr, gate_up_.data());
    backend_.silu_mul(gate_up_.data(), T, ffn, act_.data());
    backend_.matmul(act_.data(), T, L.down, nullptr, proj_.data());
  }
  timings_.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  ctx_.tp->all_reduce(proj_.data(), T * H);
  timings_.communication_seconds += seconds_since(t0);
  t0 = Clock::now();
  backend_.add_inplace(x_.data(), proj_.data(), T * H);
  timings_.compute_seconds += seconds_since(t0);
}

}  // namespace alem
