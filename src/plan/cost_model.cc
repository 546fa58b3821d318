// The planner's performance model (see cost_model.h for what it covers and docs/planner.md for
// the derivation and its measured accuracy).
#include "plan/cost_model.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/error.h"

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

std::string sharding_problem(const ModelShape& m, const Layout& l) {
  const std::string t = std::to_string(l.tp);
  if (l.tp < 1 || l.pp < 1 || l.ep < 1 || l.dp < 1) return "every size must be at least 1";
  if (m.num_heads % l.tp != 0)
    return "tp " + t + " does not divide the " + std::to_string(m.num_heads) + " attention heads";
  if (l.tp <= m.num_kv_heads ? m.num_kv_heads % l.tp != 0 : l.tp % m.num_kv_heads != 0)
    return "tp " + t + " neither divides nor is a multiple of the " +
           std::to_string(m.num_kv_heads) + " kv heads";
  const int ffn = m.is_moe() ? m.moe_intermediate_size : m.intermediate_size;
  if (ffn % l.tp != 0) return "tp " + t + " does not divide the FFN width " + std::to_string(ffn);
  if (m.vocab_size % l.tp != 0) return "tp " + t + " does not divide the vocabulary";
  if (m.weight_dtype == "int8" &&
      ((m.num_heads / l.tp * m.head_dim) % 32 != 0 || (ffn / l.tp) % 32 != 0))
    return "tp " + t + " splits int8 weights inside a 32-column scale group";
  if (l.pp > m.num_layers) return "pp " + std::to_string(l.pp) + " exceeds the layers";
  if (l.ep > 1) {
    if (!m.is_moe()) return "ep > 1 needs a mixture-of-experts model";
    if (m.num_experts % l.ep != 0)
      return "ep " + std::to_string(l.ep) + " does not divide the " +
             std::to_string(m.num_experts) + " experts";
    if ((l.tp * l.dp) % l.ep != 0) return "ep must divide tp x dp (experts spread over them)";
  }
  return "";
}

namespace {

constexpr double kGiB = 1024.0 * 1024 * 1024;

// Where the ranks land and what each gets of its node.
struct Placement {
  int ranks_per_node = 1;
  int nodes_used = 1;
  double core_share = 1;  // CPU: cores (or fraction) one rank computes on
  double flops = 0;       // per rank, for the model's dtype
  double bandwidth = 0;   // bytes/s of weights, per rank
  bool tp_crosses_nodes = false;
  bool pp_crosses_nodes = false;
  bool ep_crosses_nodes = false;
};

Placement place(const ModelShape& m, const ClusterSpec& c, const Layout& l) {
  Placement p;
  const int world = l.world();
  p.nodes_used = std::min(c.nodes, world);
  p.ranks_per_node = (world + p.nodes_used - 1) / p.nodes_used;
  const double peak = c.peak_flops(m.weight_dtype) * c.compute_efficiency;
  const double bw = c.weight_bandwidth(m.weight_dtype);
  if (c.kind == "cpu") {
    p.core_share = std::min<double>(c.threads_per_rank,
                                    static_cast<double>(c.devices_per_node) / p.ranks_per_node);
    p.flops = peak * p.core_share;
    p.bandwidth = bw * p.core_share;
    if (c.node_bandwidth_gbs > 0)
      p.bandwidth = std::min(p.bandwidth, c.node_bandwidth_gbs * 1e9 / p.ranks_per_node);
  } else {
    p.flops = peak;
    p.bandwidth = bw;
  }
  p.tp_crosses_nodes = l.tp > p.ranks_per_node;
  p.pp_crosses_nodes = l.tp * l.pp > p.ranks_per_node;
  p.ep_crosses_nodes = l.ep > 1 && world > p.ranks_per_node;
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

// Adds a ring all-reduce of `bytes` over n ranks: 2(n-1) steps of bytes/n each.
void all_reduce(StepTime& t, const LinkCost& lc, const ClusterSpec& c, int n, double bytes) {
  if (n <= 1) return;
  const double per_step = bytes / n;
  t.communication += 2.0 * (n - 1) * lc.link.seconds(per_step) + c.sync_us * 1e-6;
  if (lc.encrypted) t.encryption += 2.0 * (n - 1) * 2.0 * per_step / (c.aes_gcm_gbs * 1e9);
}

// Adds one point-to-point message.
void send(StepTime& t, const LinkCost& lc, const ClusterSpec& c, double bytes) {
  t.communication += lc.link.seconds(bytes) + c.sync_us * 1e-6;
  if (lc.encrypted) t.encryption += 2.0 * bytes / (c.aes_gcm_gbs * 1e9);
}

// Expected number of distinct experts `tokens` tokens touch when each picks k of E uniformly.
double experts_touched(const ModelShape& m, double tokens) {
  if (!m.is_moe()) return 1;
  const double miss = std::pow(1.0 - double(m.experts_per_token) / m.num_experts, tokens);
  return m.num_experts * (1.0 - miss);
}

int stage_layers(const ModelShape& m, const Layout& l) {
  return (m.num_layers + l.pp - 1) / l.pp;
}

// Weight bytes one rank of the busiest stage holds (MoE: all of its experts).
double weight_bytes_per_rank(const ModelShape& m, const Layout& l) {
  const double b = m.weight_bytes_per_param;
  const int layers = stage_layers(m, l);
  double expert_share = m.is_moe() && l.ep > 1 ? double(l.tp) * l.dp : double(l.tp);
  double per_layer = m.attention_params_per_layer() / double(l.tp) +
                     (m.ffn_params_per_layer() - m.router_params_per_layer()) / expert_share +
                     m.router_params_per_layer();
  double tables = 0;
  if (l.pp == 1) {
    tables = (m.embedding_params() + m.lm_head_params()) / double(l.tp);
  } else {
    tables = std::max(m.embedding_params(),
                      m.tie_word_embeddings ? m.embedding_params() : m.lm_head_params()) /
             double(l.tp);
  }
  return (layers * per_layer + tables) * b;
}

double kv_heads_per_rank(const ModelShape& m, const Layout& l) {
  return l.tp <= m.num_kv_heads ? double(m.num_kv_heads) / l.tp : 1.0;
}

// One micro-batch of `tokens` tokens over `seqs` sequences whose attention sees `context`
// positions on average, through one stage (the busiest) of one replica.
StepTime stage_time(const ModelShape& m, const ClusterSpec& c, const Layout& l, const Placement& p,
                    double tokens, double seqs, double context, bool last_stage) {
  StepTime t;
  const int layers = stage_layers(m, l);
  const double act = m.activation_bytes;
  // FLOPs: matmuls with the active parameters, attention, the LM head on the sampled rows.
  const double dense_params =
      m.attention_params_per_layer() / double(l.tp) +
      (m.active_ffn_params_per_layer() - m.router_params_per_layer()) / double(l.tp) +
      m.router_params_per_layer();
  double flops = 2.0 * tokens * layers * dense_params;
  flops += 4.0 * tokens * context * (double(m.num_heads) / l.tp) * m.head_dim * layers;
  if (last_stage) flops += 2.0 * seqs * double(m.vocab_size) / l.tp * m.hidden_size;
  // Bytes: the rank's weights (MoE: the experts this step touches), then the KV cache read.
  double expert_bytes = 0;
  if (m.is_moe()) {
    const double touched = experts_touched(m, tokens * (l.ep > 1 ? l.dp : 1));
    const double share = l.ep > 1 ? double(l.tp) * l.dp : double(l.tp);
    expert_bytes = touched * m.ffn_params_per_expert() / share * m.weight_bytes_per_param;
  } else {
    expert_bytes = m.ffn_params_per_expert() / double(l.tp) * m.weight_bytes_per_param;
  }
  double bytes =
      layers * (m.attention_params_per_layer() / double(l.tp) * m.weight_bytes_per_param +
                expert_bytes + m.router_params_per_layer() * m.weight_bytes_per_param);
  if (last_stage) bytes += double(m.vocab_size) / l.tp * m.hidden_size * m.weight_bytes_per_param;
  bytes +=
      seqs * context * layers * 2.0 * kv_heads_per_rank(m, l) * m.head_dim * m.kv_bytes_per_value;
  t.compute = flops / p.flops;
  t.memory = bytes / p.bandwidth;
  // TP: two all-reduces per layer (the embedding's is added by the caller on stage 0).
  const LinkCost tp_link = link_for(c, p.tp_crosses_nodes);
  const double act_bytes = tokens * m.hidden_size * act;
  StepTime one_layer;
  if (m.is_moe() && l.ep > 1) {
    all_reduce(one_layer, tp_link, c, l.tp, act_bytes);  // attention output
    // Routed tokens to the experts' ranks and back (all-to-all), then the all-reduce inside
    // each expert's own tensor-parallel group.
    const int expert_tp = l.tp * l.dp / l.ep;
    const LinkCost ep_link = link_for(c, p.ep_crosses_nodes);
    const double routed = act_bytes / l.tp * m.experts_per_token * (l.ep - 1.0) / l.ep;
    for (int way = 0; way < 2; ++way) {
      one_layer.communication +=
          (l.ep - 1) * ep_link.link.latency_us * 1e-6 + routed / (ep_link.link.bandwidth_gbs * 1e9);
      if (ep_link.encrypted) one_layer.encryption += 2.0 * routed / (c.aes_gcm_gbs * 1e9);
    }
    all_reduce(one_layer, link_for(c, expert_tp > p.ranks_per_node), c, expert_tp,
               act_bytes * m.experts_per_token / l.tp);
  } else {
    all_reduce(one_layer, tp_link, c, l.tp, act_bytes);  // attention output
    all_reduce(one_layer, tp_link, c, l.tp, act_bytes);  // FFN output
  }
  t.communication = layers * one_layer.communication;
  t.encryption = layers * one_layer.encryption;
  t.overhead = layers * c.layer_overhead_us * 1e-6;
  t.total = std::max(t.compute, t.memory) + t.communication + t.encryption + t.overhead;
  return t;
}

void add(StepTime& into, const StepTime& x, double times) {
  into.compute += x.compute * times;
  into.memory += x.memory * times;
  into.communication += x.communication * times;
  into.encryption += x.encryption * times;
  into.overhead += x.overhead * times;
  into.total += x.total * times;
}

// One engine step of a replica: `tokens` over `seqs` sequences.
StepTime step_time(const ModelShape& m, const ClusterSpec& c, const Layout& l, const Placement& p,
                   double tokens, double seqs, double context) {
  const int micro = l.pp > 1 ? std::max(1, std::min<int>(l.pp, static_cast<int>(seqs))) : 1;
  const double mt = tokens / micro, ms = seqs / micro;
  // The busiest stage is the last (it runs the LM head); the pipeline's critical path is
  // micro + pp - 1 stage times.
  StepTime stage = stage_time(m, c, l, p, mt, ms, context, /*last_stage=*/true);
  StepTime hop;
  if (l.pp > 1)
    send(hop, link_for(c, p.pp_crosses_nodes), c, mt * m.hidden_size * m.activation_bytes);
  hop.total = hop.communication + hop.encryption;
  StepTime t;
  add(t, stage, micro + l.pp - 1);
  add(t, hop, micro + l.pp - 2);
  // Stage 0's embedding all-reduce, the sampling gather over tp, the token broadcast over pp and
  // the step plan broadcast to the replica's ranks: latency-bound small messages.
  StepTime small;
  const LinkCost tp_link = link_for(c, p.tp_crosses_nodes);
  all_reduce(small, tp_link, c, l.tp, tokens * m.hidden_size * m.activation_bytes);
  const double sync = c.sync_us * 1e-6;
  if (l.tp > 1) small.communication += (l.tp - 1) * tp_link.link.seconds(seqs * 64) + sync;
  const int replica_ranks = l.tp * l.pp;
  if (replica_ranks > 1) {
    const LinkCost wide = link_for(c, p.pp_crosses_nodes);
    small.communication +=
        std::ceil(std::log2(replica_ranks)) * wide.link.seconds(seqs * 16 + 64) + sync;
    if (l.pp > 1)
      small.communication += std::ceil(std::log2(l.pp)) * wide.link.seconds(seqs * 4) + sync;
  }
  small.overhead = c.step_overhead_us * 1e-6;
  small.total = small.communication + small.encryption + small.overhead;
  add(t, small, 1);
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
    mu.weights = weight_bytes_per_rank(m, l);
    mu.kv_cache = double(batch) * context * stage_layers(m, l) * 2.0 * kv_heads_per_rank(m, l) *
                  m.head_dim * m.kv_bytes_per_value;
    const double rows = std::min<double>(w.max_batch_tokens, double(batch) * w.prompt_tokens);
    const double width =
        m.hidden_size * 3.0 + (double(m.num_heads) + 2.0 * m.num_kv_heads) * m.head_dim / l.tp +
        3.0 * (m.is_moe() ? m.moe_intermediate_size * m.experts_per_token : m.intermediate_size) /
            l.tp;
    mu.activations = rows * width * m.activation_bytes + double(batch) * m.vocab_size / l.tp * 4.0;
    mu.reserved = c.reserved_gib * kGiB;
    mu.capacity =
        c.kind == "gpu" ? c.device_memory_gib * kGiB : c.node_memory_gib * kGiB / p.ranks_per_node;
    return mu;
  };

  auto decode_at = [&](int batch) {
    return step_time(m, c, l, p, batch, batch, w.prompt_tokens + w.output_tokens / 2.0);
  };
  auto prefill_at = [&](int batch) {
    const double tokens = std::min<double>(double(batch) * w.prompt_tokens,
                                           std::max(w.max_batch_tokens, w.prompt_tokens));
    const double seqs = std::max(1.0, tokens / w.prompt_tokens);
    StepTime t = step_time(m, c, l, p, tokens, seqs, w.prompt_tokens / 2.0);
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
        for (int ep = 1; ep <= (m.is_moe() ? tp * dp : 1); ++ep) {
          Layout l{tp, pp, ep, dp};
          if (ep > 1 && ((tp * dp) % ep != 0 || m.num_experts % ep != 0)) continue;
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
