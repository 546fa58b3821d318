// Sampling with the logits left in the kernel backend's memory (StepLogits::on_backend, what the
// generator and the serving engine do) must choose exactly what sampling from host rows chooses:
// the same tokens, the same number of random draws and the same logprobs, for greedy, top-k
// (with temperature, min_p, top_p), rows whose top_k is too large for backend candidates, top_p
// or plain temperature rows, penalised rows and rows asking for logprobs. The host-row path is
// the engine sampler of engine/sampler.h, tested against its own references in test_sampler.cc.
// Runs on every backend this build has; the cuda case skips without a usable GPU.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/replica_sampling.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"
#include "mpi/parallel_context.h"
#ifdef ALEM_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace alem {
namespace {

struct BackendCase {
  std::string name;
  bool needs_gpu = false;
};

class BackendSampling : public ::testing::TestWithParam<BackendCase> {
 protected:
  void SetUp() override {
#ifdef ALEM_HAVE_CUDA
    if (GetParam().needs_gpu && cuda_device_count() == 0) {
      GTEST_SKIP() << "no usable CUDA GPU on this machine";
    }
#endif
    backend_ = make_backend(GetParam().name);
  }
  std::unique_ptr<KernelBackend> backend_;
};

std::vector<BackendCase> cases() {
  std::vector<BackendCase> out = {{"reference", false}, {"cpu", false}};
#ifdef ALEM_HAVE_CUDA
  out.push_back({"cuda", true});
#endif
  return out;
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendSampling, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

std::vector<SamplingParams> row_params() {
  std::vector<SamplingParams> rows;
  auto add = [&](const std::function<void(SamplingParams&)>& set) {
    SamplingParams p;
    p.seed = 1000 + rows.size();
    set(p);
    rows.push_back(p);
  };
  add([](SamplingParams& p) { p.temperature = 0.f; });  // greedy
  add([](SamplingParams& p) { p.top_k = 1; });
  add([](SamplingParams& p) { p.top_k = 40; });
  add([](SamplingParams& p) {
    p.top_k = 20;
    p.temperature = 0.7f;
    p.top_p = 0.8f;
    p.min_p = 0.05f;
  });
  add([](SamplingParams& p) { p.top_k = kMaxBackendTopK; });
  add([](SamplingParams& p) { p.top_k = kMaxBackendTopK + 1; });  // host row
  add([](SamplingParams& p) { p.top_p = 0.9f; });                 // host row
  add([](SamplingParams& p) { p.temperature = 1.3f; });           // host row
  add([](SamplingParams& p) {                                     // penalties: host row
    p.temperature = 0.f;
    p.repetition_penalty = 1.5f;
    p.frequency_penalty = 0.5f;
  });
  add([](SamplingParams& p) {  // greedy with logprobs: candidates on the backend, row for logprobs
    p.temperature = 0.f;
    p.logprobs = 3;
  });
  add([](SamplingParams& p) {
    p.top_k = 8;
    p.logprobs = 0;
  });
  return rows;
}

TEST_P(BackendSampling, SameChoicesAsFromHostRows) {
  ParallelContext ctx = make_solo_context();
  const std::vector<SamplingParams> params = row_params();
  const auto n = static_cast<int64_t>(params.size());
  for (int64_t vocab : {int64_t{300}, int64_t{49152}}) {
    std::mt19937 gen(static_cast<uint32_t>(vocab));
    std::normal_distribution<float> logit(0.f, 3.f);
    for (int step = 0; step < 20; ++step) {
      StepLogits host;
      host.vocab_size = vocab;
      host.values.resize(static_cast<size_t>(n * vocab));
      for (float& x : host.values) x = logit(gen);
      for (int64_t i = 0; i < n; ++i) host.request_ids.push_back(i);
      Tensor on_backend(*backend_, TensorType::kF32, n * vocab);
      on_backend.upload(*backend_, host.values.data(), n * vocab);
      StepLogits device;
      device.vocab_size = vocab;
      device.request_ids = host.request_ids;
      device.backend = backend_.get();
      device.backend_values = on_backend.data<float>();

      TokenCounts counts;
      counts.add_prompt(std::vector<int32_t>{1, 2, 3, static_cast<int32_t>(vocab - 1)});
      std::vector<Rng> host_rngs, device_rngs;
      for (const SamplingParams& p : params) {
        host_rngs.emplace_back(*p.seed);
        device_rngs.emplace_back(*p.seed);
        host_rngs.back().set_draws(step);
        device_rngs.back().set_draws(step);
      }
      std::vector<RowSampler> host_rows, device_rows;
      for (int64_t i = 0; i < n; ++i) {
        host_rows.push_back({&params[i], &counts, &host_rngs[i]});
        device_rows.push_back({&params[i], &counts, &device_rngs[i]});
      }
      std::vector<std::optional<TokenLogprobs>> host_lp, device_lp;
      const auto want = sample_rows_replicated(host, host_rows, ctx, true, &host_lp);
      const auto got = sample_rows_replicated(device, device_rows, ctx, true, &device_lp);
      const std::string what = "vocab " + std::to_string(vocab) + " step " + std::to_string(step);
      ASSERT_EQ(got, want) << what;
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(device_rngs[i].draws(), host_rngs[i].draws()) << what << " row " << i;
        ASSERT_EQ(device_lp[i].has_value(), host_lp[i].has_value()) << what << " row " << i;
        if (!host_lp[i]) continue;
        EXPECT_EQ(device_lp[i]->logprob, host_lp[i]->logprob) << what << " row " << i;
        ASSERT_EQ(device_lp[i]->top.size(), host_lp[i]->top.size()) << what << " row " << i;
      }
    }
  }
}

TEST_P(BackendSampling, RefusesNanLogitsLikeTheHostPath) {
  ParallelContext ctx = make_solo_context();
  const int64_t vocab = 64;
  std::vector<float> values(vocab, 0.5f);
  values[10] = std::numeric_limits<float>::quiet_NaN();
  Tensor t(*backend_, TensorType::kF32, vocab);
  t.upload(*backend_, values.data(), vocab);
  StepLogits device;
  device.vocab_size = vocab;
  device.request_ids = {7};
  device.backend = backend_.get();
  device.backend_values = t.data<float>();
  SamplingParams greedy;
  greedy.temperature = 0.f;
  TokenCounts counts;
  Rng rng(1);
  EXPECT_THROW(sample_rows_replicated(device, {RowSampler{&greedy, &counts, &rng}}, ctx, true),
               Error);
}

}  // namespace
}  // namespace alem
