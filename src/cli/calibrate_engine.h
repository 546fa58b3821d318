// The engine half of `alem bench calibrate -m MODEL` (calibrate_engine.cc): the model's own
// matmuls, forward pass and serving-engine step on one rank, as the planner's figures.
#pragma once

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

}  // namespace alem::cli
