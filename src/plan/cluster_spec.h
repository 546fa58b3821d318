// A cluster as the planner sees it: nodes of identical devices (GPUs, or CPU cores), their
// memory, compute per dtype and memory bandwidth, the links inside and between nodes (alpha-beta:
// latency and bandwidth), and the cost of encrypting traffic that leaves a node. Read from TOML
// (plan/clusters/*.toml shows every key); a calibration file from `alem bench calibrate`
// replaces datasheet figures with measured ones.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace alem::plan {

// One link class: time to move b bytes point to point is latency + b / bandwidth, or, where
// calibration measured it, the measured time per message size: alpha-beta fitted per size range
// (linear between neighbouring sizes), so a link that is not one line (a token bucket passes
// messages within its burst at wire speed and the rest at its rate) is followed size by size.
struct LinkSpec {
  double bandwidth_gbs = 0;  // 1e9 bytes/s, one direction
  double latency_us = 0;
  // Measured one-way times (bytes, seconds), sorted by bytes; empty: the alpha-beta line.
  std::vector<std::pair<double, double>> measured;
  // Rate a rank can keep up over many messages (GB/s; the largest measured message's rate:
  // a token bucket's rate once its burst is spent); 0: the line's bandwidth.
  double sustained_gbs = 0;
  double seconds(double bytes) const;
  double sustained_bytes_per_s() const {
    return (sustained_gbs > 0 ? sustained_gbs : bandwidth_gbs) * 1e9;
  }
};

struct ClusterSpec {
  std::string name;
  std::string source;        // the file it came from
  std::string kind = "gpu";  // "gpu" or "cpu"
  int nodes = 1;
  int devices_per_node = 1;      // GPUs, or CPU cores
  int threads_per_rank = 1;      // CPU: cores one rank's kernels use
  double device_memory_gib = 0;  // GPU memory; 0 on CPU (ranks share the node's memory)
  double node_memory_gib = 0;
  double reserved_gib = 0;  // per rank: runtime, CUDA context, buffers not modelled
  // Per device (per GPU, or per core): peak dense throughput by weight dtype, TFLOP/s.
  std::map<std::string, double> peak_tflops;
  double device_bandwidth_gbs = 0;  // per GPU, or what one core can stream
  // Measured weight-streaming rate of the matmul per weight dtype, per device (calibration);
  // where absent, device_bandwidth_gbs x bandwidth_efficiency.
  std::map<std::string, double> weight_stream_gbs;
  double node_bandwidth_gbs = 0;  // CPU: the socket's limit shared by all cores (0: none)
  // Fractions of peak reached by real kernels (1 when the figures are measured).
  double compute_efficiency = 1;
  double bandwidth_efficiency = 1;
  double layer_overhead_us = 0;     // fixed cost per layer and micro-batch (launches, syncs)
  double token_overhead_us = 0;     // per layer and token: norms, RoPE, SiLU, copies (not matmuls)
  double step_overhead_us = 0;      // fixed cost per engine step (scheduling, the step broadcast)
  double sequence_overhead_us = 0;  // per step and sequence: logits, sampling, bookkeeping
  // Attention's own rate (paged attention is not a matmul); 0: the dtype's peak.
  double attention_tflops = 0;
  // How a step combines compute and memory traffic: max (GPUs overlap them: roofline) or sum
  // (a CPU core streams weights and multiplies in turn; measured so by calibration).
  bool additive_roofline = false;
  // CPU: the share of a core each rank gets when this many ranks of a node compute at once
  // (measured under mpirun by calibration: oversubscription and the node's other load);
  // where absent, min(threads_per_rank, cores / ranks).
  std::map<int, double> rank_core_share;
  // The same for a batched matmul (8 rows of x): the compute-bound part of a step. Streaming
  // weights is bound by the node's memory bandwidth, which ranks share even where they have a
  // core each; multiplying a batch is bound by the core, so the two shares differ.
  std::map<int, double> rank_core_share_batched;
  std::map<int, double> sync_us_by_ranks;  // sync_us measured with this many ranks on the node
  // Idle ranks take no core (they block or yield while they wait, as Open MPI does with
  // mpi_yield_when_idle): the core share goes by the ranks computing at a time, not all ranks.
  // node.idle_ranks = "yield" (always; the default where nodes share cores: the netns cluster
  // runs so), "poll" (never), or "auto" (the default otherwise): yield when a node has more
  // ranks than cores, as Open MPI does by default when oversubscribed.
  bool idle_ranks_yield = false;
  bool yield_when_oversubscribed = true;
  bool ranks_yield(int ranks_on_node) const {
    return idle_ranks_yield || (yield_when_oversubscribed && ranks_on_node > devices_per_node);
  }
  // The nodes are one machine's network namespaces (the netns test cluster): every rank of a job
  // shares the same cores, so core share and waiting go by the whole job's ranks, not a node's.
  bool nodes_share_cores = false;
  // Measured matmul time per weight byte at a number of rows, per weight dtype (calibration at a
  // model's own shapes): kernels change path with the rows (a dot-product kernel for few rows,
  // a packed GEMM for many), so neither one rate nor one roofline fits every step size.
  std::map<std::string, std::vector<std::pair<double, double>>> matmul_curve;
  // Waiting per collective or pipeline hop while peers compute (ranks drift apart; on CPU nodes
  // with more ranks than cores, peers are descheduled): measured by calibration.
  double sync_us = 0;
  LinkSpec intra_node;
  LinkSpec inter_node;
  bool encrypt_inter_node = false;
  bool encrypt_intra_node = false;
  double aes_gcm_gbs = 0;   // AES-256-GCM throughput of one rank (seal or open)
  std::string calibration;  // the calibration file applied, if any

  int total_devices() const { return nodes * devices_per_node; }
  // Cores (or fraction of one) a rank computes on when `ranks` ranks share a CPU node (a
  // fraction of ranks: an average over a step, interpolated between whole counts).
  double core_share(double ranks) const;
  double core_share(int ranks) const;
  // The share for compute-bound work (batched matmuls, attention, fixed costs): measured with a
  // batched matmul where calibrated, else core_share.
  double compute_share(double ranks) const;
  double sync_seconds(int ranks) const;  // waiting per collective with `ranks` on the node
  // The same for a collective of `bytes`, from the per-size measurement where it was taken
  // with `ranks` ranks (sync_ranks), else sync_seconds(ranks).
  double sync_seconds(int ranks, double bytes) const;
  std::map<double, double> sync_us_by_bytes;
  int sync_ranks = 0;
  // All-reduce times measured by calibration per message size (bytes, seconds) over
  // all_reduce_ranks ranks, across nodes or inside one; used for an all-reduce of that many
  // ranks over that kind of link in place of the ring formula.
  std::vector<std::pair<double, double>> all_reduce_measured;
  // The same under load, up to 256 KiB: a rank's all-reduce after its compute, the waiting for
  // peers included (so no sync is added where these apply).
  std::vector<std::pair<double, double>> all_reduce_loaded;
  int all_reduce_ranks = 0;
  bool all_reduce_between_nodes = false;
  // Seconds of one all-reduce of `bytes` from those measurements (under load where measured so:
  // the waiting included), -1 where they do not apply.
  double measured_all_reduce_seconds(int ranks, bool between_nodes, double bytes) const;
  // Seconds one device takes to multiply `rows` rows by `bytes` of `dtype` weights, from the
  // measured curve (interpolated, extrapolated linearly past its ends); -1 without a curve.
  double curve_matmul_seconds(const std::string& dtype, double bytes, double rows) const;
  // Bytes a bf16 weight takes in a rank's memory, which is what a decode step streams: 2 on GPUs;
  // on CPU nodes the CPU backend keeps bf16 matrices in their lossless 12-bit form on AVX2 and
  // AVX-512 (model/bf16_coded.h: 1.5 bytes and a row's 16-byte table). node.bf16_weight_bytes = 2
  // describes nodes that run with ALEM_CPU_BF16_CODED=0 or have no AVX2.
  double bf16_weight_bytes = 2;
  // Bytes a weight of `dtype` takes on a device over its nominal size (ModelShape's
  // weight_bytes_per_param): below 1 for bf16 on CPU nodes, 1 otherwise.
  double weight_storage_ratio(const std::string& dtype) const;
  // Bytes/s one device streams weights of `dtype` at, in the bytes they take on the device.
  // Calibration measures it in the dtype's nominal bytes (weight_stream_gbs), converted here.
  double weight_bandwidth(const std::string& dtype) const;
  // Throws alem::Error naming the dtype when the cluster gives no figure for it.
  double peak_flops(const std::string& dtype) const;
  void validate() const;
};

// Parses TOML text; errors name the source, line and key.
ClusterSpec parse_cluster_spec(std::string_view toml_text, const std::string& source_name);
ClusterSpec load_cluster_spec(const std::string& path);

// Measured figures of one node (written by `alem bench calibrate` as JSON).
struct Calibration {
  std::string host;
  std::string created_utc;
  std::string git_revision;
  int threads = 1;
  std::map<std::string, double> matmul_gflops;  // per dtype, large batch, one rank
  std::map<std::string, double> matmul_gbs;     // per dtype, weights streamed at one row
  double read_bandwidth_gbs = 0;                // streaming read, one rank
  double node_read_bandwidth_gbs = 0;           // streaming read, all cores
  double layer_overhead_us = 0;                 // non-matmul work of one layer (fixed part)
  double token_overhead_us = 0;                 // and per token of it
  double step_overhead_us = 0;                  // per serving-engine step besides forward
  double sequence_overhead_us = 0;              // and per sequence of the step
  double attention_gflops = 0;                  // paged attention's rate
  // The engine's forward on one rank at the model's own shapes (seconds), for the check.
  struct EnginePoint {
    int tokens = 0, sequences = 0, context = 0;
    double seconds = 0, matmul_seconds = 0;
  };
  std::vector<EnginePoint> engine_points;
  std::map<int, double> rank_core_share;  // ranks computing at once -> share of one core each
  std::map<int, double> rank_core_share_batched;  // the same with a batched (8-row) matmul
  // The load probe (one rank's one-row matmul rate, GB/s) with the full calibration and at the
  // latest update (--collectives-only): the ratio scales every compute figure to the load of
  // the moment.
  double load_probe_gbs = 0, load_probe_now_gbs = 0;
  double load_scale() const {
    return load_probe_gbs > 0 && load_probe_now_gbs > 0 ? load_probe_now_gbs / load_probe_gbs : 1;
  }
  // dtype -> (rows, seconds per weight byte) at the engine_model's shapes, one rank.
  std::map<std::string, std::vector<std::pair<double, double>>> matmul_curve;
  std::map<int, double> sync_us_by_ranks;
  struct CollectivePoint {
    double bytes = 0;
    double seconds = 0;
  };
  std::map<std::string, std::vector<CollectivePoint>> collectives;  // op -> points
  int collective_ranks = 0;
  double aes_gcm_gbs = 0;
  std::string engine_model;         // the model whose decode steps were timed (if any)
  double engine_decode_step_s = 0;  // its one-sequence decode step on one rank
  double sync_us = 0;  // waiting per collective when all ranks compute between collectives
  // The same waiting by message size (collective_ranks ranks): median over many rounds each.
  std::map<double, double> sync_us_by_bytes;
  LinkSpec fitted_link;  // alpha-beta fit of send_recv (point to point), with its measured points
  // Ranks 0 and 1 of the collectives ran on different hosts: the fit describes the link between
  // nodes (else the one inside a node).
  bool link_between_nodes = false;
};

std::string calibration_to_json(const Calibration& c);
Calibration calibration_from_json(const std::string& text, const std::string& source_name);
Calibration load_calibration(const std::string& path);
// Fits latency + bytes / bandwidth to measured points (least squares on time, weighted so that
// small and large messages both count). Throws alem::Error with fewer than two points.
LinkSpec fit_alpha_beta(const std::vector<Calibration::CollectivePoint>& points);
// Replaces the cluster's per-device figures with the calibration's (efficiencies become 1).
void apply_calibration(ClusterSpec& cluster, const Calibration& c, const std::string& path);

}  // namespace alem::plan
