// What `alem status` shows about a running job, and how it finds the job's gateway.
//
// The gateway (world rank 0 of `alem serve`) answers GET /v1/status with one JSON document:
// the Slurm job (id, restart count, node list), the parallel layout with every rank's
// coordinates and host, the serving state (loading, ready, draining, failed), and per replica
// the running and waiting requests, KV blocks and generated tokens per second. No request
// content ever appears in it.
//
// A job started by Slurm also writes a small "gateway file" (alem-gateway-<job id>.json in its
// working folder, or --gateway-file) with the URL of that endpoint, so that an admin can type
// `alem status --job 1234` in the folder the job was submitted from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/serving_engine.h"

namespace alem::serve {

struct RankPlacement {
  int world_rank = 0;
  int dp = 0, pp = 0, tp = 0;
  std::string host;
};

// Fixed facts about the job, set once when the ranks have loaded.
struct JobInfo {
  std::string job_id;     // SLURM_JOB_ID, empty outside Slurm
  std::string node_list;  // SLURM_JOB_NODELIST
  int restart_count = 0;  // SLURM_RESTART_COUNT
  std::string model;      // the served name
  std::string model_digest;
  int tp = 1, pp = 1, dp = 1;
  std::vector<RankPlacement> ranks;
  int64_t started_unix = 0;
  double load_seconds = 0;
};

// Reads SLURM_JOB_ID, SLURM_JOB_NODELIST and SLURM_RESTART_COUNT from the environment into
// `info` (leaving the other fields alone). A malformed restart count is treated as 0.
void read_slurm_environment(JobInfo& info);

// The /v1/status document. `state` is "loading", "ready", "draining" or "failed";
// `tokens_per_second` has one entry per replica (generated tokens over the last seconds).
nlohmann::json status_document(const JobInfo& info, const std::string& state,
                               const std::vector<ReplicaStats>& replicas,
                               const std::vector<double>& tokens_per_second, double uptime_s);

// A human-readable rendering of a status document, as `alem status` prints it. Throws
// alem::Error when the document lacks a field it needs (an incompatible server).
std::string format_status(const nlohmann::json& status);

// The gateway file: {"url": ..., "job_id": ..., "pid": ..., "host": ...}.
std::string default_gateway_file(const std::string& job_id);  // alem-gateway-<id>.json
void write_gateway_file(const std::string& path, const std::string& url, const std::string& job_id);
// The URL recorded in a gateway file; throws alem::Error naming the file when it is missing or
// malformed.
std::string read_gateway_url(const std::string& path);

}  // namespace alem::serve
