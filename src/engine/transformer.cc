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
#include "kernels/stacked_matmul.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

constexpr int kTagHidden = 100;

}  // namespace

struct ShardedTransformer::Layer {
  Tensor input_norm, post_attention_norm;
  Tensor q_norm, k_norm;        // Qwen3 QK-norm, per head_dim
  StackedRows qkv;              // rows: local q heads, then local k, then local v
  Tensor qkv_bias;              // Qwen2, same row order; empty when absent
  WeightMatrix o_proj;          // [hidden][local heads * head_dim]
  StackedRows gate_up;          // rows: local gate, then local up
  WeightMatrix down;            // [hidden][local ffn]
  std::unique_ptr<MoeFfn> moe;  // sparse layers: router and local experts (no gate_up/down)
  void* k_cache = nullptr;      // half of kv_bytes_per_layer_ each, inside kv_cache_
  void* v_cache = nullptr;
};

ShardedTransformer::ShardedTransformer(const ModelStoreReader& store, ParallelContext& ctx,
                                       const KernelBackend& backend, const EngineOptions& options)
    : config_(store.config()), options_(options), ctx_(ctx), backend_(backend) {
  const auto t0 = Clock::now();
  const uint64_t bytes_before = store.bytes_read();
  config_.validate();
  const std::string q_name = layer_tensor_name(0, "self_attn.q_proj.weight");
  // int8 and the ggml block types: row-parallel splits must fall on 32-column boundaries.
  const DType q_dtype = store.tensor_info(q_name).dtype;
  const bool int8 = q_dtype == DType::I8 || dtype_is_block(q_dtype);
  // Experts may be stored in another type than attention (a GGUF's own expert blocks).
  // Experts across replicas: a tp 1 plan, then whole experts by the rank's place in its ep group.
  const bool across = ctx.layout.experts_across_replicas();
  shard_ = make_shard_plan(config_, ctx.layout.tp_size(), ctx.coords.tp, ctx.layout.pp_size(),
                           ctx.coords.pp, int8, options.layers_per_stage,
                           across ? 1 : ctx.layout.ep_size(), stored_expert_dtype(store, config_));
  if (across) {
    ALEM_CHECK(ctx.ep && ctx.ep->size() == ctx.layout.ep_size(),
               "experts across replicas need the context's ep group of " +
                   std::to_string(ctx.layout.ep_size()) + " members");
    place_experts_across_replicas(shard_, config_, ctx.layout.ep_size(), ctx.coords.ep);
  }
  if (options_.max_model_len <= 0) options_.max_model_len = config_.context_limit();
  ALEM_CHECK(options_.max_model_len <= config_.context_limit(),
             "max_model_len " + std::to_string(options_.max_model_len) +
                 " exceeds the model's context of " + std::to_string(config_.context_limit()) +
                 (config_.context_limit() < config_.max_position_embeddings
                      ? " (its sliding window: attention past the window is not implemented)"
                      : ""));
  ALEM_CHECK(options_.block_size > 0, "block_size must be positive");
  check_kv_cache_dtype(options_.kv_cache_dtype);
  num_kv_blocks_ = options_.num_kv_blocks > 0
                       ? options_.num_kv_blocks
                       : (options_.max_model_len + options_.block_size - 1) / options_.block_size;
  rope_ = make_rope_table(config_, options_.max_model_len);

  const int hd = config_.head_dim;
  const int64_t hidden = config_.hidden_size;
  const ShardPlan& s = shard_;
  const size_t kv_elements =
      static_cast<size_t>(num_kv_blocks_) * options_.block_size * s.num_kv_heads * hd;
  const bool kv_bf16 = options_.kv_cache_dtype == DType::BF16;
  const size_t kv_bytes = kv_elements * (kv_bf16 ? 2 : 4);  // K or V of one layer
  kv_bytes_per_layer_ = 2 * kv_bytes;
  // One backend buffer for the whole KV cache, of the sensitive kind: on the host out of core
  // dumps and mlock'ed where allowed; wiped on release in every memory space.
  kv_cache_ = Tensor(backend_, kv_bf16 ? TensorType::kBF16 : TensorType::kF32,
                     static_cast<int64_t>(2 * kv_elements) * s.num_layers, BufferKind::kSensitive);
  const int64_t load_steps = s.num_layers + 1;  // the layers, then embedding and head
  auto loaded = [&](int64_t done) {
    if (options_.load_progress) options_.load_progress(done, load_steps);
  };
  loaded(0);
  for (int l = s.first_layer; l < s.first_layer + s.num_layers; ++l) {
    loaded(l - s.first_layer);
    auto layer = std::make_unique<Layer>();
    auto name = [&](const char* suffix) { return layer_tensor_name(l, suffix); };
    layer->input_norm = to_backend(store.read_vector(name("input_layernorm.weight")));
    layer->post_attention_norm =
        to_backend(store.read_vector(name("post_attention_layernorm.weight")));
    std::vector<WeightMatrix> qkv_parts;
    qkv_parts.push_back(store.read_matrix(name("self_attn.q_proj.weight"),
                                          int64_t{s.head_begin} * hd, int64_t{s.num_heads} * hd));
    qkv_parts.push_back(store.read_matrix(name("self_attn.k_proj.weight"),
                                          int64_t{s.kv_head_begin} * hd,
                                          int64_t{s.num_kv_heads} * hd));
    qkv_parts.push_back(store.read_matrix(name("self_attn.v_proj.weight"),
                                          int64_t{s.kv_head_begin} * hd,
                                          int64_t{s.num_kv_heads} * hd));
    layer->qkv = stack_rows(std::move(qkv_parts));
    adopt_stacked(backend_, layer->qkv);
    if (config_.attention_bias) {
      std::vector<float> bias;
      for (const char* b :
           {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}) {
        const bool is_q = std::string(b).find("q_proj") != std::string::npos;
        const int64_t begin = int64_t{is_q ? s.head_begin : s.kv_head_begin} * hd;
        const int64_t count = int64_t{is_q ? s.num_heads : s.num_kv_heads} * hd;
        std::vector<float> part = store.read_vector(name(b), begin, count);
        bias.insert(bias.end(), part.begin(), part.end());
      }
      layer->qkv_bias = to_backend(bias);
    }
    if (config_.qk_norm) {
      layer->q_norm = to_backend(store.read_vector(name("self_attn.q_norm.weight")));
      layer->k_norm = to_backend(store.read_vector(name("self_attn.k_norm.weight")));
    }
    layer->o_proj = store.read_matrix(name("self_attn.o_proj.weight"), 0, hidden,
                                      int64_t{s.head_begin} * hd, int64_t{s.num_heads} * hd);
    adopt(layer->o_proj);
    if (config_.is_moe_layer(l)) {
      layer->moe = std::make_unique<MoeFfn>(store, config_, s, l);
      layer->moe->adopt_weights(backend_);
    } else {
      std::vector<WeightMatrix> gate_up_parts;
      gate_up_parts.push_back(
          store.read_matrix(name("mlp.gate_proj.weight"), s.ffn_begin, s.ffn_size));
      gate_up_parts.push_back(
          store.read_matrix(name("mlp.up_proj.weight"), s.ffn_begin, s.ffn_size));
      layer->gate_up = stack_rows(std::move(gate_up_parts));
      adopt_stacked(backend_, layer->gate_up);
      layer->down =
          store.read_matrix(name("mlp.down_proj.weight"), 0, hidden, s.ffn_begin, s.ffn_size);
      adopt(layer->down);
    }
    const size_t local = layers_.size();
    layer->k_cache = kv_cache_.data<uint8_t>() + (2 * local) * kv_bytes;
    layer->v_cache = kv_cache_.data<uint8_t>() + (2 * local + 1) * kv_bytes;
    layers_.push_back(std::move(layer));
  }
  const bool tied = config_.tie_word_embeddings || !store.has_tensor("lm_head.weight");
  if (s.has_embedding() || (s.has_lm_head() && tied)) {
    embedding_ = store.read_matrix("model.embed_tokens.weight", s.vocab_begin, s.vocab_size);
    adopt(embedding_);
  }
  if (s.has_lm_head()) {
    final_norm_ = to_backend(store.read_vector("model.norm.weight"));
    if (!tied) {
      lm_head_ = store.read_matrix("lm_head.weight", s.vocab_begin, s.vocab_size);
      adopt(lm_head_);
    }
  }
  bytes_loaded_ = store.bytes_read() - bytes_before;
  load_seconds_ = seconds_since(t0);
  loaded(load_steps);
}

// The KV cache buffer wipes itself when it is released.
ShardedTransformer::~ShardedTransformer() = default;

Tensor ShardedTransformer::to_backend(const std::vector<float>& host) const {
  Tensor t(backend_, TensorType::kF32, static_cast<int64_t>(host.size()));
  t.upload(backend_, host.data(), t.count());
  return t;
}

void ShardedTransformer::all_reduce_tp(Tensor& t, int64_t count) {
  const bool on_device = backend_.memory_space() == MemorySpace::kDevice;
  ProcessGroup& group = on_device && ctx_.tp_device ? *ctx_.tp_device : *ctx_.tp;
  if (group.size() == 1) return;
  if (backend_.memory_space() == MemorySpace::kHost || group.takes_device_memory()) {
    group.all_reduce(t.data<float>(), static_cast<size_t>(count));
    return;
  }
  host_staging_.resize(static_cast<size_t>(count));
  t.download(backend_, host_staging_.data(), count);
  group.all_reduce(host_staging_.data(), host_staging_.size());
  t.upload(backend_, host_staging_.data(), count);
}

void ShardedTransformer::send_hidden(const Tensor& t, int64_t count) {
  ProcessGroup& group = *ctx_.pp;
  const size_t bytes = static_cast<size_t>(count) * sizeof(float);
  if (backend_.memory_space() == MemorySpace::kHost || group.takes_device_memory()) {
    group.send(t.data<float>(), bytes, ctx_.coords.pp + 1, kTagHidden);
    return;
  }
  host_staging_.resize(static_cast<size_t>(count));
  t.download(backend_, host_staging_.data(), count);
  group.send(host_staging_.data(), bytes, ctx_.coords.pp + 1, kTagHidden);
}

void ShardedTransformer::recv_hidden(Tensor& t, int64_t count) {
  ProcessGroup& group = *ctx_.pp;
  const size_t bytes = static_cast<size_t>(count) * sizeof(float);
  if (backend_.memory_space() == MemorySpace::kHost || group.takes_device_memory()) {
    group.recv(t.data<float>(), bytes, ctx_.coords.pp - 1, kTagHidden);
    return;
  }
  host_staging_.resize(static_cast<size_t>(count));
  group.recv(host_staging_.data(), bytes, ctx_.coords.pp - 1, kTagHidden);
  t.upload(backend_, host_staging_.data(), count);
}

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
  return static_cast<uint64_t>(kv_bytes_per_layer_) * layers_.size();
}

// Bytes of one block of one layer's keys (or values).
size_t ShardedTransformer::kv_block_bytes() const {
  return kv_bytes_per_layer_ / 2 / static_cast<size_t>(num_kv_blocks_);
}

void ShardedTransformer::wipe_kv_blocks(const std::vector<int32_t>& blocks) {
  const size_t block_bytes = kv_block_bytes();
  for (int32_t b : blocks) {
    ALEM_CHECK(b >= 0 && b < num_kv_blocks_, "KV block " + std::to_string(b) + " out of range");
  }
  for (auto& l : layers_) {
    for (int32_t b : blocks) {
      backend_.wipe(static_cast<uint8_t*>(l->k_cache) + b * block_bytes, block_bytes);
      backend_.wipe(static_cast<uint8_t*>(l->v_cache) + b * block_bytes, block_bytes);
    }
  }
}

std::vector<uint8_t> ShardedTransformer::kv_block(int local_layer, int32_t block,
                                                  bool values) const {
  ALEM_CHECK(local_layer >= 0 && local_layer < static_cast<int>(layers_.size()),
             "local layer " + std::to_string(local_layer) + " out of range");
  ALEM_CHECK(block >= 0 && block < num_kv_blocks_,
             "KV block " + std::to_string(block) + " out of range");
  const size_t block_bytes = kv_block_bytes();
  const Layer& l = *layers_[local_layer];
  std::vector<uint8_t> bytes(block_bytes);
  backend_.download(
      bytes.data(),
      static_cast<const uint8_t*>(values ? l.v_cache : l.k_cache) + block * block_bytes,
      block_bytes);
  return bytes;
}

void StepLogits::copy_row(int64_t i, float* host) const {
  ALEM_CHECK(i >= 0 && i < rows(), "logit row " + std::to_string(i) + " out of range");
  if (on_backend()) {
    backend->download(host, backend_values + i * vocab_size,
                      static_cast<size_t>(vocab_size) * sizeof(float));
  } else {
    std::copy(row(i), row(i) + vocab_size, host);
  }
}

StepLogits ShardedTransformer::forward(const StepPlan& plan, LogitsOut where) {
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
  if (plan.sequences.empty()) {
    // Experts across replicas: a replica without tokens still serves the others' rows.
    if (ctx_.layout.experts_across_replicas()) {
      const auto t0 = Clock::now();
      for (auto& l : layers_) {
        if (l->moe) run_moe(*l->moe, nullptr, 0, nullptr);
      }
      timings_.compute_seconds += seconds_since(t0);  // less the all_to_all time run_moe moved
    }
    return out;
  }
  // Room for every sampled row of the step, so micro-batches fill it side by side.
  if (shard_.has_lm_head()) {
    int64_t sampled = 0;
    for (const StepSequence& seq : plan.sequences) sampled += seq.sample && seq.num_tokens > 0;
    logits_.reserve(backend_, TensorType::kF32, std::max<int64_t>(sampled, 1) * shard_.vocab_size);
    if (where == LogitsOut::kBackend) {
      out.backend = &backend_;
      out.backend_values = logits_.data<float>();
    }
  }

  // Split sequences into micro-batches of roughly equal token counts (pipeline only).
  // Experts across replicas: one micro-batch, so every replica makes one MoE call per layer.
  int micro = options_.micro_batches > 0 ? options_.micro_batches : ctx_.layout.pp_size();
  if (ctx_.layout.experts_across_replicas()) micro = 1;
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
    run_micro_batch(plan, begin, end, where, out);
    begin = end;
  }
  ++timings_.steps;
  return out;
}

void ShardedTransformer::run_micro_batch(const StepPlan& plan, size_t seq_begin, size_t seq_end,
                                         LogitsOut where, StepLogits& out) {
  const int64_t H = config_.hidden_size;
  int64_t token_offset = 0;
  for (size_t i = 0; i < seq_begin; ++i) token_offset += plan.sequences[i].num_tokens;
  int64_t T = 0;
  for (size_t i = seq_begin; i < seq_end; ++i) T += plan.sequences[i].num_tokens;

  // Positions and attention descriptors for this micro-batch, staged on the host and copied
  // into the backend's memory in one upload each.
  positions_host_.resize(T);
  block_tables_host_.clear();
  attention_seqs_.clear();
  std::vector<size_t> table_offsets;
  int64_t row = 0;
  for (size_t i = seq_begin; i < seq_end; ++i) {
    const StepSequence& seq = plan.sequences[i];
    AttentionSequence a;
    a.q_begin = static_cast<int32_t>(row);
    a.q_count = seq.num_tokens;
    a.start_pos = seq.start_pos;
    attention_seqs_.push_back(a);
    table_offsets.push_back(block_tables_host_.size());
    const int64_t blocks =
        (int64_t{seq.start_pos} + seq.num_tokens + options_.block_size - 1) / options_.block_size;
    block_tables_host_.insert(block_tables_host_.end(), seq.block_table.begin(),
                              seq.block_table.begin() + blocks);
    for (int32_t j = 0; j < seq.num_tokens; ++j) positions_host_[row + j] = seq.start_pos + j;
    row += seq.num_tokens;
  }
  positions_.reserve(backend_, TensorType::kI32, T);
  positions_.upload(backend_, positions_host_.data(), T);
  const auto table_ints = static_cast<int64_t>(block_tables_host_.size());
  block_tables_.reserve(backend_, TensorType::kI32, std::max<int64_t>(table_ints, 1));
  block_tables_.upload(backend_, block_tables_host_.data(), table_ints);
  for (size_t i = 0; i < attention_seqs_.size(); ++i) {
    attention_seqs_[i].block_table = block_tables_.data<int32_t>() + table_offsets[i];
  }

  x_.reserve(backend_, TensorType::kF32, T * H);
  auto t_comm = Clock::now();
  auto t_compute = Clock::now();
  if (shard_.has_embedding()) {
    t_compute = Clock::now();
    tokens_.reserve(backend_, TensorType::kI32, T);
    tokens_.upload(backend_, plan.tokens.data() + token_offset, T);
    backend_.embedding(embedding_, shard_.vocab_begin, tokens_.data<int32_t>(), T,
                       x_.data<float>());
    timings_.compute_seconds += seconds_since(t_compute);
    t_comm = Clock::now();
    all_reduce_tp(x_, T * H);  // each rank filled only its vocab rows
    timings_.communication_seconds += seconds_since(t_comm);
  } else {
    t_comm = Clock::now();
    recv_hidden(x_, T * H);
    timings_.communication_seconds += seconds_since(t_comm);
  }

  for (size_t l = 0; l < layers_.size(); ++l) run_layer(*layers_[l], T);

  if (!shard_.has_lm_head()) {
    t_comm = Clock::now();
    send_hidden(x_, T * H);
    timings_.communication_seconds += seconds_since(t_comm);
    return;
  }
  // Last stage: final norm and LM head on the last row of every sampled sequence.
  t_compute = Clock::now();
  std::vector<int64_t> rows;
  const int64_t first_row = out.rows();  // this micro-batch's rows follow the earlier ones'
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
  h_.reserve(backend_, TensorType::kF32, R * H);
  const size_t row_bytes = static_cast<size_t>(H) * sizeof(float);
  for (int64_t r = 0; r < R; ++r) {
    backend_.copy_2d(h_.data<float>() + r * H, row_bytes, x_.data<float>() + rows[r] * H, row_bytes,
                     row_bytes, 1);
  }
  backend_.rmsnorm(h_.data<float>(), final_norm_.data<float>(), R, H, config_.rms_norm_eps,
                   h_.data<float>());
  const WeightMatrix& head = lm_head_.rows > 0 ? lm_head_ : embedding_;
  float* const logits = logits_.data<float>() + first_row * shard_.vocab_size;  // sized by forward
  backend_.matmul(h_.data<float>(), R, head, nullptr, logits);
  if (where == LogitsOut::kHost) {  // logits out; kBackend leaves them for the sampler
    const size_t old = out.values.size();
    out.values.resize(old + R * shard_.vocab_size);
    logits_.download(backend_, out.values.data() + old, R * shard_.vocab_size,
                     first_row * shard_.vocab_size);
  }
  timings_.compute_seconds += seconds_since(t_compute);
}

void ShardedTransformer::run_moe(MoeFfn& moe, const float* h, int64_t T, float* out) {
  // The dispatch's all_to_all time counts as communication, the rest as compute (the caller's).
  const double before = dispatch_stats_.all_to_all_seconds;
  moe.forward(backend_, h, T, out, moe_routing_, ctx_.ep.get(), &dispatch_stats_);
  const double moved = dispatch_stats_.all_to_all_seconds - before;
  timings_.compute_seconds -= moved;
  timings_.communication_seconds += moved;
}

void ShardedTransformer::run_layer(Layer& L, int64_t T) {
  const int64_t H = config_.hidden_size;
  const int hd = config_.head_dim;
  const int nh = shard_.num_heads, nkv = shard_.num_kv_heads;
  const int64_t q_width = int64_t{nh} * hd, kv_width = int64_t{nkv} * hd;
  const int64_t qkv_width = q_width + 2 * kv_width;
  const int64_t ffn = shard_.ffn_size;
  constexpr TensorType f32 = TensorType::kF32;
  h_.reserve(backend_, f32, T * H);
  qkv_.reserve(backend_, f32, T * qkv_width);
  q_.reserve(backend_, f32, T * q_width);
  k_.reserve(backend_, f32, T * kv_width);
  v_.reserve(backend_, f32, T * kv_width);
  attn_.reserve(backend_, f32, T * q_width);
  proj_.reserve(backend_, f32, T * H);
  gate_up_.reserve(backend_, f32, T * 2 * ffn);
  act_.reserve(backend_, f32, T * ffn);
  float* const x = x_.data<float>();
  float* const h = h_.data<float>();
  float* const q = q_.data<float>();
  float* const k = k_.data<float>();
  float* const v = v_.data<float>();
  float* const proj = proj_.data<float>();
  const int32_t* const positions = positions_.data<int32_t>();

  auto t0 = Clock::now();
  // Attention block.
  backend_.rmsnorm(x, L.input_norm.data<float>(), T, H, config_.rms_norm_eps, h);
  matmul_stacked(backend_, h, T, L.qkv, L.qkv_bias.data<float>(), qkv_.data<float>(),
                 stacked_part_);
  // Split the fused rows into q, k and v (strided copies inside the backend's memory).
  const size_t f = sizeof(float);
  const float* qkv = qkv_.data<float>();
  backend_.copy_2d(q, q_width * f, qkv, qkv_width * f, q_width * f, T);
  backend_.copy_2d(k, kv_width * f, qkv + q_width, qkv_width * f, kv_width * f, T);
  backend_.copy_2d(v, kv_width * f, qkv + q_width + kv_width, qkv_width * f, kv_width * f, T);
  if (config_.qk_norm) {
    backend_.rmsnorm(q, L.q_norm.data<float>(), T * nh, hd, config_.rms_norm_eps, q);
    backend_.rmsnorm(k, L.k_norm.data<float>(), T * nkv, hd, config_.rms_norm_eps, k);
  }
  backend_.rope(q, T, nh, hd, positions, rope_);
  backend_.rope(k, T, nkv, hd, positions, rope_);
  AttentionShape shape;
  shape.num_heads = nh;
  shape.num_kv_heads = nkv;
  shape.head_dim = hd;
  shape.block_size = options_.block_size;
  shape.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const KVCacheLayerView cache{L.k_cache, L.v_cache, options_.kv_cache_dtype};
  const int n_seqs = static_cast<int>(attention_seqs_.size());
  backend_.kv_cache_write(shape, attention_seqs_.data(), n_seqs, k, v, cache);
  backend_.paged_attention(shape, attention_seqs_.data(), n_seqs, q, cache, attn_.data<float>());
  backend_.matmul(attn_.data<float>(), T, L.o_proj, nullptr, proj);
  timings_.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  all_reduce_tp(proj_, T * H);
  timings_.communication_seconds += seconds_since(t0);
  t0 = Clock::now();
  // Residual add and the feed-forward block's norm, fused where the backend can.
  backend_.add_rmsnorm(x, proj, L.post_attention_norm.data<float>(), T, H, config_.rms_norm_eps, h);

  // Feed-forward block.
  if (L.moe) {  // sparse layer: this rank's experts; the all-reduce below combines them
    run_moe(*L.moe, h, T, proj);
  } else {
    matmul_stacked(backend_, h, T, L.gate_up, nullptr, gate_up_.data<float>(), stacked_part_);
    backend_.silu_mul(gate_up_.data<float>(), T, ffn, act_.data<float>());
    backend_.matmul(act_.data<float>(), T, L.down, nullptr, proj);
  }
  timings_.compute_seconds += seconds_since(t0);
  t0 = Clock::now();
  all_reduce_tp(proj_, T * H);
  timings_.communication_seconds += seconds_since(t0);
  t0 = Clock::now();
  backend_.add_inplace(x, proj, T * H);
  timings_.compute_seconds += seconds_since(t0);
}

}  // namespace alem
