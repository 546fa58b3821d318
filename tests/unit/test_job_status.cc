// The job status behind GET /v1/status and `alem status` (serve/job_status.h): the document
// carries what an admin needs, the text rendering shows it, an incompatible document and a bad
// gateway file give clear errors, and the Slurm environment is read defensively.
#include "serve/job_status.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace alem::serve {
namespace {

JobInfo two_replica_job() {
  JobInfo job;
  job.job_id = "4711";
  job.node_list = "node[17-18]";
  job.restart_count = 2;
  job.model = "SmolLM2-135M-Instruct";
  job.tp = 1;
  job.pp = 2;
  job.dp = 2;
  for (int r = 0; r < 4; ++r)
    job.ranks.push_back({r, r / 2, r % 2, 0, r < 2 ? "node17" : "node18"});
  return job;
}

std::vector<ReplicaStats> replicas() {
  ReplicaStats a, b;
  a.replica = 0;
  a.running = 3;
  a.waiting = 5;
  a.kv_blocks_used = 40;
  a.kv_blocks_total = 100;
  a.alive = true;
  b.replica = 1;
  b.running = 1;
  b.waiting = 2;
  b.kv_blocks_total = 100;
  b.alive = false;
  return {a, b};
}

TEST(JobStatus, DocumentSumsReplicasAndCountsRanksPerHost) {
  const nlohmann::json d = status_document(two_replica_job(), "ready", replicas(), {10.0, 2.5}, 9);
  EXPECT_EQ(d["job"]["id"], "4711");
  EXPECT_EQ(d["job"]["restart_count"], 2);
  EXPECT_EQ(d["layout"]["world_size"], 4);
  EXPECT_EQ(d["queue_depth"], 7);
  EXPECT_EQ(d["running"], 4);
  EXPECT_DOUBLE_EQ(d["generation_tokens_per_second"].get<double>(), 12.5);
  ASSERT_EQ(d["hosts"].size(), 2u);
  EXPECT_EQ(d["hosts"][0]["ranks"], 2);
  EXPECT_EQ(d["replicas"][1]["alive"], false);
}

TEST(JobStatus, TextShowsLayoutStateQueueAndEveryRank) {
  const std::string text =
      format_status(status_document(two_replica_job(), "draining", replicas(), {10.0, 2.5}, 9));
  EXPECT_NE(text.find("4711  restarts 2"), std::string::npos) << text;
  EXPECT_NE(text.find("tp 1 x pp 2 x dp 2 = 4 ranks"), std::string::npos) << text;
  EXPECT_NE(text.find("state       draining"), std::string::npos) << text;
  EXPECT_NE(text.find("7 waiting, 4 running, 12.5 tokens/s"), std::string::npos) << text;
  EXPECT_NE(text.find("NO"), std::string::npos) << "replica 1 is not alive: " << text;
  EXPECT_NE(text.find("node18"), std::string::npos) << text;
}

TEST(JobStatus, IncompatibleDocumentNamesTheMissingField) {
  nlohmann::json d = status_document(two_replica_job(), "ready", replicas(), {1, 1}, 1);
  d["job"].erase("restart_count");
  try {
    format_status(d);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("restart_count"), std::string::npos) << e.what();
  }
  d = status_document(two_replica_job(), "ready", replicas(), {1, 1}, 1);
  d["queue_depth"] = "seven";
  EXPECT_THROW(format_status(d), Error);
}

TEST(JobStatus, GatewayFileRoundTripAndClearErrors) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("alem-job-status-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / default_gateway_file("4711")).string();
  EXPECT_EQ(default_gateway_file("4711"), "alem-gateway-4711.json");
  write_gateway_file(path, "http://node17:8000", "4711");
  EXPECT_EQ(read_gateway_url(path), "http://node17:8000");

  EXPECT_THROW(read_gateway_url((dir / "missing.json").string()), Error);
  std::ofstream(dir / "bad.json") << "{not json";
  EXPECT_THROW(read_gateway_url((dir / "bad.json").string()), Error);
  std::ofstream(dir / "nourl.json") << R"({"url": 17})";
  try {
    read_gateway_url((dir / "nourl.json").string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"url\""), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(JobStatus, SlurmEnvironmentIsReadDefensively) {
  setenv("SLURM_JOB_ID", "99", 1);
  setenv("SLURM_JOB_NODELIST", "n[1-2]", 1);
  setenv("SLURM_RESTART_COUNT", "3", 1);
  JobInfo job;
  read_slurm_environment(job);
  EXPECT_EQ(job.job_id, "99");
  EXPECT_EQ(job.node_list, "n[1-2]");
  EXPECT_EQ(job.restart_count, 3);
  setenv("SLURM_RESTART_COUNT", "3x", 1);
  read_slurm_environment(job);
  EXPECT_EQ(job.restart_count, 0);
  unsetenv("SLURM_JOB_ID");
  unsetenv("SLURM_JOB_NODELIST");
  unsetenv("SLURM_RESTART_COUNT");
}

}  // namespace
}  // namespace alem::serve
