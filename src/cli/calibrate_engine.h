// The engine half of `alem bench calibrate -m MODEL` (calibrate_engine.cc): the model's own
// matmuls, forward pass and serving-engine step on one rank, as the planner's figures.
#pragma once

#include <memory>
#include <string>

#include "kernels/backend.h"
#include "plan/cluster_spec.h"

namespace alem::cli {

// Fills c.matmul_gbs / matmul_gflops for the model's weight dtype, c.layer_overhead_us,
// token_overhead_us, attention_gflops, step_overhead_us, sequence_overhead_us,
// engine_points, engine_decode_step_s and engine_model. `max_matrix_bytes` bounds the copies
// of the model's matrices made for the matmul timing (larger models: enough layers, scaled);
// each figure is the median of `repeats` (at least 3) timings.
void calibrate_engine_at_model_shapes(const std::string& model_path, KernelBackend& backend,
                                      double max_matrix_bytes, int repeats, plan::Calibration& c);

// The engine's one-row matmul over a model's own matrices (its shapes and dtype, random values;
// every layer's, or enough to fill `max_bytes`, then the LM head), cycled: the rate one rank
// runs a decode step's matmuls at now (GB/s of weights). `alem bench calibrate
// --collectives-only -m MODEL` probes each rank's core share with it, so the share is what
// several engines get together, not what a synthetic stream gets. With `rows` > 1 (at most
// kMaxRows) the matmul is batched: compute-bound where one row is bound by memory.
class ModelMatmulProbe {
 public:
  ModelMatmulProbe(const std::string& model_path, int threads, double max_bytes);
  ~ModelMatmulProbe();
  static constexpr int kMaxRows = 8;
  double gbs(double seconds, int rows = 1);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace alem::cli
