// The planner's performance model (see cost_model.h for what it covers and docs/planner.md for
// the derivation and its measured accuracy).
#include "plan/cost_model.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"
#include "engine/shard_plan.h"
#include "model/model_config.h"

namespace alem::plan {

std::string Layout::describe() const {
  std::ostringstream s;
  s << "tp" << tp << " pp" << pp << " ep" << ep << " dp" << dp;
  return s.str();
}

void Workload::validate() const {
  ALEM_CHECK(prompt_tokens >= 1, "workload: prompt tokens must be at least 1");
  ALEM_CHECK(output_tokens >= 1, "workload: output tokens must be at least 1");
  ALEM_CHECK(concurrency >= 0 && arrival_rate >= 0 && requests >= 0 && max_batch >= 0,
             "workload: concurrency, arrival rate, requests and batch cannot be negative");
  ALEM_CHECK((concurrency > 0) != (arrival_rate > 0),
             "workload: give either a concurrency or an arrival rate (one of them, not both)");
  ALEM_CHECK(max_batch_tokens >= 1, "workload: the step token budget must be at least 1");
  ALEM_CHECK(ttft_target_s >= 0 && itl_target_s >= 0, "workload: targets cannot be negative");
}

namespace {

// A config with the shape's sizes, so the engine's own shard rules can judge a layout.
ModelConfig config_for_shape(const ModelShape& m) {
  ModelConfig c;
  c.architecture = m.is_moe() ? "qwen3moe" : "llama";
  c.name = m.name;
  c.vocab_size = m.vocab_size;
  c.hidden_size = m.hidden_size;
  c.num_layers = m.num_layers;
  c.num_heads = m.num_heads;
  c.num_kv_heads = m.num_kv_heads;
  c.head_dim = m.head_dim;
  c.intermediate_size = m.intermediate_size;
  c.tie_word_embeddings = m.tie_word_embeddings;
  if (m.is_moe()) {
    c.num_experts = m.num_experts;
    c.num_experts_per_tok = m.experts_per_token;
    c.moe_intermediate_size = m.moe_intermediate_size;
    if (m.shared_expert_intermediate_size > 0) {  // tp must divide the shared experts too
      c.architecture = "qwen2moe";
      c.shared_expert_intermediate_size = m.shared_expert_intermediate_size;
    }
    // The shape keeps only the count of sparse layers: make the first ones dense.
    c.decoder_sparse_step = 1;
    for (int l = 0; l < m.dense_layers(); ++l) c.mlp_only_layers.push_back(l);
  }
  return c;
}

}  // namespace

std::string sharding_problem(const ModelShape& m, const Layout& l) {
  if (l.tp < 1 || l.pp < 1 || l.ep < 1 || l.dp < 1) return "every size must be at least 1";
  if (l.pp > m.num_layers) return "pp " + std::to_string(l.pp) + " exceeds the layers";
  // The engine's own rules (engine/shard_plan.h): tp splits heads, FFN and vocabulary; ep
  // divides tp and the experts, each expert split over tp / ep ranks.
  try {
    (void)make_shard_plan(config_for_shape(m), l.tp, 0, l.pp, 0, m.weight_dtype == "int8", {},
                          l.ep);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

// Where the ranks land and what each gets of its node.
struct Placement {
  int ranks_per_node = 1;
  int nodes_used = 1;
  double core_share = 1;     // CPU: cores (or fraction) one rank streams weights on
  double compute_share = 1;  // CPU: the same for compute-bound work (a batch, attention, fixed)
  double flops = 0;          // per rank, for the model's dtype
  double bandwidth = 0;      // bytes/s of weights, per rank
  double attention_flops = 0;
  double sync_s = 0;   // waiting per collective (ranks drift or are descheduled)
  int sync_ranks = 1;  // ranks whose waiting was measured together (the node's, or the job's)
  bool tp_crosses_nodes = false;
  bool pp_crosses_nodes = false;
};

// `computing`: ranks of the job that compute at once (0: all of them). Where idle ranks take
// no core (they yield while they wait), an idle pipeline stage leaves its share to the others.
Placement place(const ModelShape& m, const ClusterSpec& c, const Layout& l, double computing = 0) {
  Placement p;
  const int world = l.world();
  p.nodes_used = std::min(c.nodes, world);
  p.ranks_per_node = (world + p.nodes_used - 1) / p.nodes_used;
  const double peak = c.peak_flops(m.weight_dtype) * c.compute_efficiency;
  const double bw = c.weight_bandwidth(m.weight_dtype);
  // Ranks that compete for the same cores: a node's, or every rank where the nodes share them.
  const int sharing = c.nodes_share_cores ? world : p.ranks_per_node;
  p.sync_ranks = sharing;
  double competing = sharing;
  if (c.ranks_yield(sharing) && computing > 0)
    competing = std::min<double>(sharing, computing * sharing / world);
  if (c.kind == "cpu") {
    p.core_share = c.core_share(competing);
    p.compute_share = c.compute_share(competing);
    p.flops = peak * p.compute_share;
    p.bandwidth = bw * p.core_share;
    if (c.node_bandwidth_gbs > 0)
      p.bandwidth = std::min(p.bandwidth, c.node_bandwidth_gbs * 1e9 / competing);
  } else {
    p.flops = peak;
    p.bandwidth = bw;
  }
  p.attention_flops = c.attention_tflops > 0
                          ? c.attention_tflops * 1e12 * (c.kind == "cpu" ? p.compute_share : 1)
                          : p.flops;
  p.sync_s = c.sync_seconds(sharing);
  p.tp_crosses_nodes = l.tp > p.ranks_per_node;
  p.pp_crosses_nodes = l.tp * l.pp > p.ranks_per_node;
  return p;
}

struct LinkCost {
  LinkSpec link;
  bool encrypted = false;
};

LinkCost link_for(const ClusterSpec& c, bool crosses_nodes) {
  if (crosses_nodes) return {c.inter_node, c.encrypt_inter_node};
  return {c.intra_node, c.encrypt_intra_node};
}

// Adds an all-reduce of `bytes` over n ranks: as calibration measured it for that many ranks
// on that kind of link (per message size), else a ring: 2(n-1) steps of bytes/n each.
void all_reduce(StepTime& t, const LinkCost& lc, const ClusterSpec& c, const Placement& p, int n,
                double bytes, bool crosses_nodes) {
  if (n <= 1) return;
  const double per_step = bytes / n;
  const double measured = c.measured_all_reduce_seconds(n, crosses_nodes, bytes);
  if (measured >= 0 && !c.all_reduce_loaded.empty()) {
    t.communication += measured;  // measured under load: the waiting included
  } else {
    t.communication += (measured >= 0 ? measured : 2.0 * (n - 1) * lc.link.seconds(per_step)) +
                       c.sync_seconds(p.sync_ranks, bytes);
  }
  t.wire += 2.0 * (n - 1) * per_step / lc.link.sustained_bytes_per_s();
  if (lc.encrypted) t.encryption += 2.0 * (n - 1) * 2.0 * per_step / (c.aes_gcm_gbs * 1e9);
}

// Adds one point-to-point message.
void send(StepTime& t, const LinkCost& lc, const ClusterSpec& c, const Placement& p, double bytes) {
  t.communication += lc.link.seconds(bytes) + c.sync_seconds(p.sync_ranks, bytes);
  t.wire += bytes / lc.link.sustained_bytes_per_s();
  if (lc.encrypted) t.encryption += 2.0 * bytes / (c.aes_gcm_gbs * 1e9);
}

// Expected number of distinct experts of `local` (of E) that `tokens` tokens touch when each
// picks k of E uniformly.
double experts_touched(const ModelShape& m, double tokens, double local) {
  const double miss = std::pow(1.0 - double(m.experts_per_token) / m.num_experts, tokens);
  return local * (1.0 - miss);
}

int stage_layers(const ModelShape& m, const Layout& l) {
  return (m.num_layers + l.pp - 1) / l.pp;
}

// Weight bytes one rank of the busiest stage holds. The engine's expert parallelism (ep divides
// tp) gives each rank E / ep experts, each split over tp / ep ranks: E / tp experts' worth of
// weights, whatever ep is. Routers are replicated.
double weight_bytes_per_rank(const ModelShape& m, const Layout& l) {
  const double b = m.weight_bytes_per_param;
  const double stage_share = double(stage_layers(m, l)) / m.num_layers;
  const double layers = (m.dense_split_params_total() + m.expert_params_total()) / double(l.tp) +
                        m.router_params_total();
  double tables = 0;
  if (l.pp == 1) {
    tables = (m.embedding_params() + m.lm_head_params()) / double(l.tp);
  } else {
    tables = std::max(m.embedding_params(),
                      m.tie_word_embeddings ? m.embedding_params() : m.lm_head_params()) /
             double(l.tp);
  }
  return (layers * stage_share + tables) * b;
}

double kv_heads_per_rank(const ModelShape& m, const Layout& l) {
  return l.tp <= m.num_kv_heads ? double(m.num_kv_heads) / l.tp : 1.0;
}

// One micro-batch of `tokens` tokens over `seqs` sequences whose attention sees `context`
// positions on average, through one pipeline stage of `layers` layers of one replica (the last
// stage also runs the final norm and the LM head).
StepTime stage_time(const ModelShape& m, const ClusterSpec& c, const Layout& l, const Placement& p,
                    double tokens, double seqs, double context, int layers, bool last_stage) {
  StepTime t;
  const double stage_share = double(layers) / m.num_layers;
  const double wb = m.weight_bytes_per_param;
  // FLOPs: matmuls with the active parameters (tp splits attention, dense FFNs and experts
  // alike: ep only regroups the experts over the tp ranks), the routers on every rank. With
  // ep > 1 the tp group waits for its busiest slice: the tokens' T x k expert choices fall on
  // the ep slices at random, and the largest share exceeds the mean by about
  // sqrt(2 ln ep) standard deviations (binomial).
  const double spread = l.ep > 1 ? std::sqrt(2.0 * std::log(double(l.ep))) : 0.0;
  double expert_imbalance = 1;
  if (m.is_moe() && l.ep > 1) {
    const double choices = tokens * m.experts_per_token;
    expert_imbalance = std::min<double>(
        l.ep, 1 + spread * std::sqrt((1 - 1.0 / l.ep) * l.ep / std::max(choices, 1.0)));
  }
  const double active =
      (m.dense_split_params_total() + m.active_expert_params_total() * expert_imbalance) / l.tp +
      double(m.router_params_total());
  double flops = 2.0 * tokens * active * stage_share;
  if (last_stage) flops += 2.0 * seqs * double(m.vocab_size) / l.tp * m.hidden_size;
  const double attention_flops =
      4.0 * tokens * context * (double(m.num_heads) / l.tp) * m.head_dim * layers;
  // Bytes: the rank's weights (MoE: the experts this step's tokens touch among the E / ep it
  // holds, each 1 / (tp / ep) of an expert), then the KV cache read.
  const double dense_bytes =
      (m.dense_split_params_total() / double(l.tp) + m.router_params_total()) * wb * stage_share;
  double expert_bytes = 0, rows_per_expert = tokens;
  if (m.is_moe()) {
    const double local = double(m.num_experts) / l.ep;
    const double slice = m.expert_params() * double(l.ep) / l.tp;
    const double q = experts_touched(m, tokens, 1.0);  // chance one expert is touched
    const double touched =
        std::min(local, local * q + spread * std::sqrt(local * q * (1 - q)));  // busiest slice
    expert_bytes = m.num_moe_layers * touched * slice * wb * stage_share;
    rows_per_expert =
        std::max(1.0, tokens * m.experts_per_token / experts_touched(m, tokens, m.num_experts));
  }
  const double head_bytes = last_stage ? double(m.vocab_size) / l.tp * m.hidden_size * wb : 0;
  const double kv_bytes =
      seqs * context * layers * 2.0 * kv_heads_per_rank(m, l) * m.head_dim * m.kv_bytes_per_value;
  const double cpu_share = c.kind == "cpu" ? p.core_share : 1.0;
  const double cpu_compute_share = c.kind == "cpu" ? p.compute_share : 1.0;
  const double attention_s = attention_flops / p.attention_flops;
  const double curve_one = c.curve_matmul_seconds(m.weight_dtype, 1.0, 1.0);
  if (curve_one > 0) {
    // The measured matmul curve: time per weight byte at this many rows. Its streaming part
    // (the one-row time) runs on the rank's share of the memory bandwidth, the rest (the
    // batch's arithmetic) on its share of a core.
    const double weights = dense_bytes + expert_bytes + head_bytes;
    const double matmul = c.curve_matmul_seconds(m.weight_dtype, dense_bytes, tokens) +
                          c.curve_matmul_seconds(m.weight_dtype, expert_bytes, rows_per_expert) +
                          c.curve_matmul_seconds(m.weight_dtype, head_bytes, seqs);
    const double streaming = weights * curve_one;
    t.memory = streaming / cpu_share + kv_bytes / p.bandwidth;
    t.compute = std::max(0.0, matmul - streaming) / cpu_compute_share + attention_s;
  } else {
    // Weight bytes as the device stores them (bf16 at 12 bits on CPU nodes).
    const double stored = c.weight_storage_ratio(m.weight_dtype);
    t.compute = flops / p.flops + attention_s;
    t.memory = ((dense_bytes + expert_bytes + head_bytes) * stored + kv_bytes) / p.bandwidth;
  }
  // TP: two all-reduces per layer, after attention and after the FFN (for MoE layers that one
  // is the experts' combine: every rank of the tp group routes every token, so no all-to-all;
  // the embedding's is added by the caller on stage 0).
  const LinkCost tp_link = link_for(c, p.tp_crosses_nodes);
  const double act_bytes = tokens * m.hidden_size * m.activation_bytes;
  StepTime one_layer;
  all_reduce(one_layer, tp_link, c, p, l.tp, act_bytes, p.tp_crosses_nodes);
  all_reduce(one_layer, tp_link, c, p, l.tp, act_bytes, p.tp_crosses_nodes);
  t.communication = layers * one_layer.communication;
  t.wire = layers * one_layer.wire;
  t.encryption = layers * one_layer.encryption;
  // Fixed and per-token work besides the matmuls, on the rank's share of a core.
  t.overhead =
      layers * (c.layer_overhead_us + tokens * c.token_overhead_us) * 1e-6 / cpu_compute_share;
  const double roofline =
      c.additive_roofline || curve_one > 0 ? t.compute + t.memory : std::max(t.compute, t.memory);
  t.total = roofline + t.communication + t.encryption + t.overhead;
  return t;
}

void add(StepTime& into, const StepTime& x, double times) {
  into.compute += x.compute * times;
  into.memory += x.memory * times;
  into.communication += x.communication * times;
  into.encryption += x.encryption * times;
  into.overhead += x.overhead * times;
  into.wire += x.wire * times;
  into.total += x.total * times;
}

// One engine step of a replica: `tokens` over `seqs` sequences.
StepTime step_time(const ModelShape& m, const ClusterSpec& c, const Layout& l, double tokens,
                   double seqs, double context) {
  const int micro = l.pp > 1 ? std::max(1, std::min<int>(l.pp, static_cast<int>(seqs))) : 1;
  const double mt = tokens / micro, ms = seqs / micro;
  // The engine's own split of the layers over the stages (the first stages take the extra
  // layers); only the last stage runs the LM head, so the stages differ.
  const std::vector<StageRange> ranges = split_layers(m.num_layers, l.pp);
  // Each stage computes its micro-batches in turn with blocking send/recv between them, a flow
  // shop: the step takes every stage once plus (micro - 1) times the slowest, plus the hops
  // (pp - 1 of them on the path; a link slower than every stage adds one per further
  // micro-batch). The core share depends on how many stages are busy at once, which is the
  // work (micro x the stages' sum) over that span: start from equal stages and settle it once
  // more with the stage times found.
  double busy_stages = double(micro) * l.pp / (micro + l.pp - 1);
  Placement p;
  std::vector<StepTime> stage(l.pp);
  double slowest = 0;
  size_t slowest_stage = 0;
  for (int pass = 0; pass < 2; ++pass) {
    p = place(m, c, l, l.tp * l.dp * busy_stages);
    double sum = 0;
    slowest = 0;
    for (int s = 0; s < l.pp; ++s) {
      stage[s] = stage_time(m, c, l, p, mt, ms, context, ranges[s].num_layers, s == l.pp - 1);
      sum += stage[s].total;
      if (stage[s].total > slowest) {
        slowest = stage[s].total;
        slowest_stage = s;
      }
    }
    busy_stages = double(micro) * sum / (sum + (micro - 1) * slowest);
  }
  StepTime hop;
  if (l.pp > 1)
    send(hop, link_for(c, p.pp_crosses_nodes), c, p, mt * m.hidden_size * m.activation_bytes);
  hop.total = hop.communication + hop.encryption;
  StepTime t;
  for (const StepTime& s : stage) add(t, s, 1);
  add(t, stage[slowest_stage], micro - 1);
  add(t, hop, l.pp - 1 + (hop.total > slowest ? micro - 1 : 0));
  // Stage 0's embedding all-reduce, the sampling gather over tp, the token broadcast over pp and
  // the step plan broadcast to the replica's ranks: latency-bound small messages.
  StepTime small;
  const LinkCost tp_link = link_for(c, p.tp_crosses_nodes);
  all_reduce(small, tp_link, c, p, l.tp, tokens * m.hidden_size * m.activation_bytes,
             p.tp_crosses_nodes);
  const double sync = p.sync_s;
  if (l.tp > 1) small.communication += (l.tp - 1) * tp_link.link.seconds(seqs * 64) + sync;
  const int replica_ranks = l.tp * l.pp;
  if (replica_ranks > 1) {
    const LinkCost wide = link_for(c, p.pp_crosses_nodes);
    small.communication +=
        std::ceil(std::log2(replica_ranks)) * wide.link.seconds(seqs * 16 + 64) + sync;
    if (l.pp > 1)
      small.communication += std::ceil(std::log2(l.pp)) * wide.link.seconds(seqs * 4) + sync;
  }
  const double cpu_share = c.kind == "cpu" ? p.compute_share : 1.0;
  small.overhead = (c.step_overhead_us + seqs * c.sequence_overhead_us) * 1e-6 / cpu_share;
  small.total = small.communication + small.encryption + small.overhead;
  add(t, small, 1);
  // A link kept busy sends no faster than its sustained rate (a token bucket once the burst is
  // spent): the step's communication is at least its bytes at that rate.
  if (t.wire > t.communication) {
    t.total += t.wire - t.communication;
    t.communication = t.wire;
  }
  return t;
}

}  // namespace

Prediction predict(const ModelShape& m, const ClusterSpec& c, const Workload& w, const Layout& l) {
  Prediction pr;
  pr.layout = l;
  if (std::string why = sharding_problem(m, l); !why.empty()) {
    pr.why_not = why;
    return pr;
  }
  if (l.world() > c.total_devices() && c.kind == "gpu") {
    pr.why_not = "needs " + std::to_string(l.world()) + " GPUs, the cluster has " +
                 std::to_string(c.total_devices());
    return pr;
  }
  const Placement p = place(m, c, l);
  pr.nodes_used = p.nodes_used;

  // Sequences per replica in a step.
  const int per_replica_cap = w.max_batch > 0 ? w.max_batch : 1 << 20;
  int in_flight = 0;
  if (w.concurrency > 0) in_flight = (w.concurrency + l.dp - 1) / l.dp;
  if (w.requests > 0) in_flight = std::min(in_flight, (w.requests + l.dp - 1) / l.dp);
  const int context = w.prompt_tokens + w.output_tokens;

  // Memory of the busiest rank at the largest batch it may run.
  auto memory_at = [&](int batch) {
    MemoryUse mu;
    mu.weights = weight_bytes_per_rank(m, l) * c.weight_storage_ratio(m.weight_dtype);
    mu.kv_cache = double(batch) * context * stage_layers(m, l) * 2.0 * kv_heads_per_rank(m, l) *
                  m.head_dim * m.kv_bytes_per_value;
    const double rows = std::min<double>(w.max_batch_tokens, double(batch) * w.prompt_tokens);
    const double width =
        m.hidden_size * 3.0 + (double(m.num_heads) + 2.0 * m.num_kv_heads) * m.head_dim / l.tp +
        3.0 *
            std::max<double>(
                m.is_moe() ? double(m.moe_intermediate_size) * m.experts_per_token : 0.0,
                m.dense_layers() > 0 ? m.intermediate_size : 0) /
            l.tp;
    mu.activations = rows * width * m.activation_bytes + double(batch) * m.vocab_size / l.tp * 4.0;
    mu.reserved = c.reserved_gib * kGiB;
    mu.capacity =
        c.kind == "gpu" ? c.device_memory_gib * kGiB : c.node_memory_gib * kGiB / p.ranks_per_node;
    return mu;
  };

  auto decode_at = [&](int batch) {
    return step_time(m, c, l, batch, batch, w.prompt_tokens + w.output_tokens / 2.0);
  };
  auto prefill_at = [&](int batch) {
    const double tokens = std::min<double>(double(batch) * w.prompt_tokens,
                                           std::max(w.max_batch_tokens, w.prompt_tokens));
    const double seqs = std::max(1.0, tokens / w.prompt_tokens);
    StepTime t = step_time(m, c, l, tokens, seqs, w.prompt_tokens / 2.0);
    const double chunks = std::ceil(double(batch) * w.prompt_tokens / tokens);
    add(t, t, chunks - 1);  // further chunks of the same size
    return t;
  };
  auto wave_seconds = [&](int batch) {
    return prefill_at(batch).total + (w.output_tokens - 1) * decode_at(batch).total;
  };

  int batch = 1;
  if (w.arrival_rate > 0) {
    // Open loop: the batch that Little's law settles at, batch = rate x time in system.
    const double rate = w.arrival_rate / l.dp;
    double b = 1;
    for (int i = 0; i < 50; ++i) {
      const int bi = std::max(1, std::min(per_replica_cap, static_cast<int>(std::ceil(b))));
      const double nb = rate * wave_seconds(bi);
      if (std::abs(nb - b) < 0.01) break;
      b = std::min<double>(nb, per_replica_cap + 1);
    }
    batch = std::max(1, std::min(per_replica_cap, static_cast<int>(std::ceil(b))));
    const double capacity = per_replica_cap / wave_seconds(per_replica_cap);
    pr.overloaded = rate > capacity;
  } else {
    batch = std::max(1, std::min(per_replica_cap, in_flight));
  }
  pr.batch = batch;
  pr.memory = memory_at(batch);
  if (pr.memory.total() > pr.memory.capacity) {
    std::ostringstream why;
    why.precision(3);
    why << "needs " << pr.memory.total() / kGiB << " GiB per rank (weights "
        << pr.memory.weights / kGiB << ", KV " << pr.memory.kv_cache / kGiB << "), has "
        << pr.memory.capacity / kGiB;
    pr.why_not = why.str();
    return pr;
  }
  pr.fits = true;
  pr.prefill = prefill_at(batch);
  pr.decode = decode_at(batch);
  const double wave = wave_seconds(batch);
  pr.itl_s = pr.decode.total;
  pr.ttft_s = pr.prefill.total;
  if (w.arrival_rate > 0) {
    pr.tokens_per_s = pr.overloaded
                          ? l.dp * per_replica_cap * w.output_tokens / wave_seconds(per_replica_cap)
                          : w.arrival_rate * w.output_tokens;
    pr.requests_per_s = pr.tokens_per_s / w.output_tokens;
  } else {
    // Closed loop: requests beyond the batch wait for a running wave to end.
    const int waiting_waves = (in_flight + batch - 1) / batch - 1;
    pr.ttft_s += waiting_waves / 2.0 * wave;
    double seconds = wave, done = batch;
    if (w.requests > 0) {
      const int per_replica = (w.requests + l.dp - 1) / l.dp;
      seconds = std::ceil(double(per_replica) / batch) * wave;
      done = per_replica;
    }
    pr.requests_per_s = l.dp * done / seconds;
    pr.tokens_per_s = pr.requests_per_s * w.output_tokens;
  }
  std::ostringstream note;
  if (w.ttft_target_s > 0 && pr.ttft_s > w.ttft_target_s) {
    pr.meets_targets = false;
    note << "TTFT over target";
  }
  if (w.itl_target_s > 0 && pr.itl_s > w.itl_target_s) {
    pr.meets_targets = false;
    note << (note.tellp() > 0 ? ", " : "") << "ITL over target";
  }
  if (pr.overloaded) {
    pr.meets_targets = false;
    note << (note.tellp() > 0 ? ", " : "") << "arrivals exceed capacity";
  }
  pr.target_note = note.str();
  return pr;
}

std::vector<Prediction> plan_layouts(const ModelShape& m, const ClusterSpec& c, const Workload& w,
                                     int max_ranks) {
  m.validate();
  c.validate();
  w.validate();
  if (max_ranks <= 0) max_ranks = c.total_devices();
  std::vector<Prediction> out;
  for (int tp = 1; tp <= max_ranks; ++tp) {
    for (int pp = 1; tp * pp <= max_ranks && pp <= m.num_layers; ++pp) {
      for (int dp = 1; tp * pp * dp <= max_ranks; ++dp) {
        for (int ep = 1; ep <= (m.is_moe() ? tp : 1); ++ep) {
          Layout l{tp, pp, ep, dp};
          // ep sizes the engine refuses (engine/shard_plan.h) are not layouts at all.
          if (ep > 1 && !sharding_problem(m, l).empty()) continue;
          // tp sizes the engine refuses are not layouts at all; list only sizes that divide.
          if (m.num_heads % tp != 0) continue;
          out.push_back(predict(m, c, w, l));
        }
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const Prediction& a, const Prediction& b) {
    if (a.fits != b.fits) return a.fits;
    if (a.meets_targets != b.meets_targets) return a.meets_targets;
    if (a.tokens_per_s != b.tokens_per_s) return a.tokens_per_s > b.tokens_per_s;
    return a.layout.world() < b.layout.world();
  });
  return out;
}

}  // namespace alem::plan
