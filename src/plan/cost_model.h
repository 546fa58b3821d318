// The planner's performance model: for one layout (tp x pp x ep x dp) of a model on a cluster,
// the memory each rank needs and the time of an engine step, split into compute, memory
// traffic, communication and encryption; from those the workload's TTFT, ITL and tokens/s.
//
// The model follows what alem's engine does (docs/planner.md has the derivation):
//   - a step's matmuls take max(FLOPs / peak, bytes / bandwidth) per rank (roofline; on CPUs,
//     where one core streams and multiplies in turn, their sum), where bytes are the rank's
//     weight shard (MoE: the experts the step's tokens touch) plus the KV cache it reads;
//     attention FLOPs grow with the context; fixed costs per layer, per token, per step and
//     per sequence besides (measured by calibration on the engine itself);
//   - Megatron TP: two all-reduces of the step's activations per layer (ring: 2(t-1) messages
//     of size/t), one more after the embedding; MoE as the engine runs it: ep divides tp, each
//     of the ep slices of the tp group holds E / ep experts split over its tp / ep ranks, every
//     rank routes every token, and the FFN all-reduce is the experts' combine (no all-to-all);
//   - PP: the step is cut into min(pp, sequences) micro-batches that flow down the stages, so a
//     step lasts (micro-batches + pp - 1) stage times, and each hop sends the activations;
//   - encryption adds seal + open time for every byte that crosses an encrypted link.
// Ranks are placed as the launcher places them: tp fastest, then pp, then dp, nodes filled in
// order. On CPU nodes ranks share the node's cores and memory bandwidth: each rank gets the
// share of a core that calibration measured with that many ranks computing at once (so more
// ranks than cores, and the node's other load, slow every rank), and waits per collective.
#pragma once

#include <string>
#include <vector>

#include "plan/cluster_spec.h"
#include "plan/model_shape.h"

namespace alem::plan {

struct Layout {
  int tp = 1, pp = 1, ep = 1, dp = 1;
  int world() const { return tp * pp * dp; }
  std::string describe() const;  // "tp2 pp1 ep1 dp4"
};

struct Workload {
  int prompt_tokens = 512;
  int output_tokens = 256;
  int concurrency = 0;          // requests kept in flight over the whole deployment (closed loop)
  double arrival_rate = 0;      // or: requests per second arriving (open loop)
  int requests = 0;             // closed loop: requests in all (0: steady state)
  int max_batch = 0;            // sequences one replica runs at once (0: as many as in flight)
  int max_batch_tokens = 2048;  // token budget of one engine step
  double ttft_target_s = 0;     // 0: none
  double itl_target_s = 0;
  void validate() const;
};

struct MemoryUse {  // bytes, the busiest rank
  double weights = 0, kv_cache = 0, activations = 0, reserved = 0;
  double total() const { return weights + kv_cache + activations + reserved; }
  double capacity = 0;  // what one rank may use
};

struct StepTime {            // seconds, one engine step of one replica
  double compute = 0;        // FLOPs / peak, summed over the pipeline's critical path
  double memory = 0;         // bytes / bandwidth, same path
  double communication = 0;  // alpha-beta of the collectives and pipeline hops
  double encryption = 0;     // seal + open of bytes on encrypted links
  double overhead = 0;       // fixed per-layer and per-step costs
  // Seconds the step's bytes on the links need at the links' sustained rates (a rank's sends
  // over many messages): communication is at least this (a token bucket's rate, once the
  // burst is spent, bounds a step that sends more than it).
  double wire = 0;
  double total = 0;  // max(compute, memory) per stage + the rest
};

struct Prediction {
  Layout layout;
  bool fits = false;
  std::string why_not;  // when !fits
  int nodes_used = 0;
  MemoryUse memory;
  int batch = 0;     // sequences per replica in a decode step
  StepTime prefill;  // the step that runs a batch's prompts (first chunk)
  StepTime decode;   // one decode step at `batch`
  double ttft_s = 0, itl_s = 0;
  double tokens_per_s = 0;  // generated tokens per second, all replicas
  double requests_per_s = 0;
  bool overloaded = false;  // open loop: arrivals exceed capacity
  bool meets_targets = true;
  std::string target_note;
};

// One layout. Never throws for a layout that cannot run: fits=false with the reason.
Prediction predict(const ModelShape& model, const ClusterSpec& cluster, const Workload& workload,
                   const Layout& layout);

// Every layout with world <= max_ranks (0: the cluster's devices) that the engine's sharding
// rules allow, predicted and ranked: fitting layouts that meet the targets first, then by
// tokens/s (ties: fewer ranks); those that do not fit last.
std::vector<Prediction> plan_layouts(const ModelShape& model, const ClusterSpec& cluster,
                                     const Workload& workload, int max_ranks = 0);

// Why the engine's sharding rules (make_shard_plan) refuse the layout, or "" when they allow it.
std::string sharding_problem(const ModelShape& model, const Layout& layout);

}  // namespace alem::plan
