// Tests the Prometheus exposition of the gateway (serve/metrics.h): it must pass
// `promtool check metrics` (Prometheus' own linter, Debian's prometheus package), with the
// engine's real statistics after real traffic on the real model, and the vLLM-style series
// (prefix cache, preemptions, queue/prefill/decode time, prompt and generation lengths,
// model_name label) must move with that traffic.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include "engine/serving_engine.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/model_store.h"
#include "serve/metrics.h"
#include "test_env.h"

namespace alem {
namespace {

using serve::ReplicaGauges;
using serve::ServingMetrics;

struct PromtoolResult {
  int status = -1;
  std::string output;
};

bool have_promtool() {
  return std::filesystem::exists("/usr/bin/promtool");
}

// Pipes `text` through `promtool check metrics`; returns its exit status and output.
PromtoolResult promtool_check(const std::string& text) {
  const std::string dir = ::testing::TempDir();
  const std::string in = dir + "/alem_metrics_" + std::to_string(getpid()) + ".txt";
  const std::string out = in + ".out";
  std::ofstream(in) << text;
  const std::string cmd = "/usr/bin/promtool check metrics < " + in + " > " + out + " 2>&1";
  const int raw = std::system(cmd.c_str());
  PromtoolResult r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  std::ifstream f(out);
  r.output.assign(std::istreambuf_iterator<char>(f), {});
  std::filesystem::remove(in);
  std::filesystem::remove(out);
  return r;
}

// The value of the one sample whose line starts with `series` (name and labels), or -1.
double value_of(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    if ((pos == 0 || text[pos - 1] == '\n') && text[pos + series.size()] == ' ') {
      return std::stod(text.substr(pos + series.size() + 1));
    }
    pos += series.size();
  }
  return -1;
}

TEST(Metrics, SyntheticExpositionPassesPromtool) {
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  ServingMetrics m(2);
  m.set_model_name("smollm2");
  m.set_job("42", "n[1-2]", 1);
  m.add_prompt_tokens(0, 10);
  m.add_generation_tokens(1, 4);
  m.observe_time_to_first_token(0, 0.05);
  serve::FinishedRequestFigures f;
  f.prompt_tokens = 10;
  f.generation_tokens = 4;
  f.queue_seconds = 0.01;
  f.prefill_seconds = 0.02;
  f.decode_seconds = 0.3;
  m.observe_finished_request(1, f);
  m.count_success(0, "stop");
  m.count_rejected("overloaded");
  ReplicaGauges g0, g1;
  g0.kv_blocks_total = 10;
  g1.replica = 1;
  g1.kv_blocks_total = 10;
  g1.preemptions = 3;
  const std::string text = m.render({g0, g1});
  const PromtoolResult r = promtool_check(text);
  EXPECT_EQ(r.status, 0) << r.output << "\n" << text;
  // No gauge may end in _total (the defect promtool reported: alem_kv_blocks_total).
  EXPECT_EQ(text.find("# TYPE alem_kv_blocks_total"), std::string::npos);
  EXPECT_EQ(value_of(text, "alem_kv_blocks_capacity{replica=\"0\",model_name=\"smollm2\"}"), 10);
  EXPECT_EQ(value_of(text, "alem_num_preemptions_total{replica=\"1\",model_name=\"smollm2\"}"), 3);
  EXPECT_EQ(
      value_of(text,
               "alem_request_decode_time_seconds_count{replica=\"1\",model_name=\"smollm2\"}"),
      1);
  EXPECT_EQ(value_of(text, "alem_request_prompt_tokens_sum{replica=\"1\",model_name=\"smollm2\"}"),
            10);
  EXPECT_EQ(value_of(text,
                     "alem_requests_rejected_total{reason=\"overloaded\",model_name="
                     "\"smollm2\"}"),
            1);
}

// Mixture-of-experts load: tokens per expert and per expert-parallel slice, promtool-clean;
// absent for dense models.
TEST(Metrics, MoeLoadPerExpertAndEpSlice) {
  ServingMetrics m(1);
  m.set_model_name("moe");
  ReplicaGauges dense;
  EXPECT_EQ(m.render({dense}).find("alem_moe_"), std::string::npos);
  ReplicaGauges g;
  g.moe_tokens_per_expert = {3, 1, 4, 0, 2, 6};
  g.moe_ep_size = 2;
  const std::string text = m.render({g});
  EXPECT_EQ(value_of(text,
                     "alem_moe_expert_tokens_total{replica=\"0\",model_name=\"moe\","
                     "expert=\"2\"}"),
            4);
  EXPECT_EQ(value_of(text,
                     "alem_moe_ep_rank_tokens_total{replica=\"0\",model_name=\"moe\","
                     "ep_rank=\"0\"}"),
            8);
  EXPECT_EQ(value_of(text,
                     "alem_moe_ep_rank_tokens_total{replica=\"0\",model_name=\"moe\","
                     "ep_rank=\"1\"}"),
            8);
  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  const PromtoolResult r = promtool_check(text);
  EXPECT_EQ(r.status, 0) << r.output << "\n" << text;
}

TEST(Metrics, PhasesNeverReachedAreNotObserved) {
  ServingMetrics m(1);
  serve::FinishedRequestFigures f;  // aborted while queued: no phase reached
  f.prompt_tokens = 5;
  m.observe_finished_request(0, f);
  const std::string text = m.render({ReplicaGauges{}});
  EXPECT_EQ(value_of(text, "alem_request_queue_time_seconds_count{replica=\"0\"}"), 0);
  EXPECT_EQ(value_of(text, "alem_request_prompt_tokens_count{replica=\"0\"}"), 1);
}

// The real engine on the real model, fed the way the HTTP side feeds the metrics
// (serve/completion_session.cc), with a KV pool small enough to force preemptions.
class MetricsWithEngine : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(test::model_path())) {
      GTEST_SKIP() << "model store not found: " << test::model_path();
    }
    store_ = std::make_unique<ModelStoreReader>(test::model_path());
    ctx_ = make_solo_context();
    backend_ = make_backend("cpu");
    EngineOptions options;
    options.max_model_len = 32;
    options.block_size = 4;
    options.num_kv_blocks = 10;
    model_ = std::make_unique<ShardedTransformer>(*store_, ctx_, *backend_, options);
  }
  std::unique_ptr<ModelStoreReader> store_;
  ParallelContext ctx_;
  std::unique_ptr<KernelBackend> backend_;
  std::unique_ptr<ShardedTransformer> model_;
};

TEST_F(MetricsWithEngine, RealTrafficMovesTheSeriesAndPassesPromtool) {
  ServingOptions options;
  ServingEngine engine(*model_, ctx_, options);
  ServingMetrics metrics(1);
  metrics.set_model_name("smollm2-135m");
  int finished = 0;
  int64_t prompt_total = 0, generated_total = 0;
  auto submit = [&](std::vector<int32_t> prompt, int max_tokens) {
    EngineRequest r;
    prompt_total += static_cast<int64_t>(prompt.size());
    metrics.add_prompt_tokens(0, static_cast<int64_t>(prompt.size()));
    r.prompt = std::move(prompt);
    r.params.temperature = 0;
    r.params.ignore_eos = true;
    r.params.max_tokens = max_tokens;
    r.on_event = [&](const RequestEvent& e) {
      if (e.has_token) {
        metrics.add_generation_tokens(0, 1);
        ++generated_total;
      }
      if (e.finished) {
        metrics.observe_finished_request(0, serve::finished_request_figures(e));
        ++finished;
      }
    };
    ASSERT_EQ(engine.submit(std::move(r)).status, SubmitStatus::kAccepted);
  };
  const std::vector<int32_t> shared = {1, 4093, 198, 28, 1303, 30, 2, 5, 6, 7};
  submit(shared, 14);
  for (int i = 0; i < 3; ++i) engine.run_step();  // its full prompt blocks are now cached
  submit(shared, 14);                             // hits the prefix cache
  submit({1, 9, 8, 7, 6, 5, 4, 3, 2, 11}, 14);    // 3 x 6 blocks > 10: preemptions
  for (int i = 0; i < 400 && finished < 3; ++i) engine.run_step();
  ASSERT_EQ(finished, 3);

  std::vector<ReplicaGauges> gauges;
  for (const ReplicaStats& s : engine.stats()) gauges.push_back(serve::replica_gauges(s));
  const std::string text = metrics.render(gauges);
  const std::string labels = "{replica=\"0\",model_name=\"smollm2-135m\"}";
  auto bucket_labels = [](const char* le) {
    return std::string("{replica=\"0\",model_name=\"smollm2-135m\",le=\"") + le + "\"}";
  };
  EXPECT_GT(value_of(text, "alem_prefix_cache_queries_total" + labels), 0) << text;
  EXPECT_GE(value_of(text, "alem_prefix_cache_hits_total" + labels), 8) << text;  // 2 blocks
  EXPECT_GT(value_of(text, "alem_num_preemptions_total" + labels), 0) << text;
  EXPECT_GT(value_of(text, "alem_engine_steps_total" + labels), 0);
  for (const char* h : {"alem_request_queue_time_seconds", "alem_request_prefill_time_seconds",
                        "alem_request_decode_time_seconds", "alem_request_prompt_tokens",
                        "alem_request_generation_tokens"}) {
    EXPECT_EQ(value_of(text, std::string(h) + "_count" + labels), 3) << h << "\n" << text;
    EXPECT_EQ(value_of(text, std::string(h) + "_bucket" + bucket_labels("+Inf")), 3) << h;
  }
  EXPECT_EQ(value_of(text, "alem_request_prompt_tokens_sum" + labels), prompt_total);
  EXPECT_EQ(value_of(text, "alem_request_generation_tokens_sum" + labels), generated_total);
  EXPECT_EQ(value_of(text, "alem_request_generation_tokens_sum" + labels), 3 * 14);
  EXPECT_GT(value_of(text, "alem_request_decode_time_seconds_sum" + labels), 0);

  if (!have_promtool()) GTEST_SKIP() << "promtool not installed (Debian package prometheus)";
  const PromtoolResult r = promtool_check(text);
  EXPECT_EQ(r.status, 0) << r.output << "\n" << text;
}

}  // namespace
}  // namespace alem
