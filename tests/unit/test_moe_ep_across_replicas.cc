// Experts across dp replicas, in one process over fake groups: the dispatch and combine of one MoE
// layer (engine/expert_dispatch.h) against the same sum computed directly, for ep groups of one
// to four members, some without tokens; then whole models (Qwen3-MoE, Mixtral, dots.llm1 with
// DeepSeek-V3 routing and a shared expert) at dp 2 ep 2 and dp 4 ep 2 (one thread
// per replica) against Hugging Face transformers' reference (teacher-forced tokens and logits,
// tests/moe_golden.h), and with a different request on each replica, one of them idle
// while the others decode, against transformers' greedy tokens and a one-rank model; and two
// ServingEngine loops stepping in lockstep (requests on one replica or both, a stop asked of one
// ending both).
// Multi-process (MPI) versions: tests/mpi/test_moe_ep_across_replicas_mpi.cc.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "core/error.h"
#include "engine/expert_dispatch.h"
#include "engine/serving_engine.h"
#include "moe_golden.h"
#include "moe_replica_requests.h"
#include "mpi/fake_process_group.h"

namespace alem {
namespace {

// A stand-in expert that is easy to compute independently: out = (e + 1) * in + 0.25 * e.
float toy_expert(int expert, float in) {
  return static_cast<float>(expert + 1) * in + 0.25f * static_cast<float>(expert);
}

TEST(ExpertDispatch, MatchesTheDirectSumOnEveryMember) {
  constexpr int E = 8, K = 2;
  constexpr int64_t H = 5;
  for (int n : {1, 2, 4}) {
    auto members = make_fake_group(n, "ep", 20.0);
    std::atomic<int> bad{0};
    std::vector<ExpertDispatchStats> stats(static_cast<size_t>(n));
    std::vector<std::thread> threads;
    for (int m = 0; m < n; ++m) {
      threads.emplace_back([&, m] {
        ProcessGroup& group = *members[static_cast<size_t>(m)];
        const int64_t T = m == 1 ? 0 : 3 + 2 * m;  // member 1 has no tokens
        std::mt19937 rng(static_cast<unsigned>(17 + m));
        std::uniform_real_distribution<float> uniform(-1.f, 1.f);
        std::vector<float> x(static_cast<size_t>(T * H)), w(static_cast<size_t>(T * K));
        std::vector<int32_t> chosen(static_cast<size_t>(T * K));
        for (float& v : x) v = uniform(rng);
        for (int64_t t = 0; t < T; ++t) {
          const int32_t a = static_cast<int32_t>(rng() % E);
          const int32_t b = static_cast<int32_t>((a + 1 + rng() % (E - 1)) % E);
          chosen[t * K] = b > a ? b : a;  // not sorted: the combine sorts by id
          chosen[t * K + 1] = b > a ? a : b;
          w[t * K] = uniform(rng);
          w[t * K + 1] = uniform(rng);
        }
        const int first = m * (E / n);
        std::vector<float> out(static_cast<size_t>(T * H), 0.f);
        try {
          dispatch_and_combine(
              group, E, H, x.data(), T, K, chosen.data(), w.data(),
              [&](int local, const float* in, int64_t count, float* result) {
                for (int64_t i = 0; i < count * H; ++i)
                  result[i] = toy_expert(first + local, in[i]);
              },
              out.data(), stats[static_cast<size_t>(m)]);
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
          ++bad;
          return;
        }
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t h = 0; h < H; ++h) {
            float want = 0.f;  // experts in increasing id, as the one-rank loop adds them
            for (int k : {1, 0}) {
              want += w[t * K + k] * toy_expert(chosen[t * K + k], x[t * H + h]);
            }
            if (out[t * H + h] != want) ++bad;
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(bad.load(), 0) << n << " members";
    uint64_t sent = 0, received = 0;
    for (const auto& s : stats) {
      sent += s.rows_sent;
      received += s.rows_received;
      EXPECT_EQ(s.layer_calls, 1u);
    }
    EXPECT_EQ(sent, received) << n << " members";
    if (n == 1) {
      EXPECT_EQ(sent, 0u);
    } else {
      EXPECT_GT(stats[0].bytes_sent, 0u);
    }
  }
}

TEST(ExpertDispatch, RefusesExpertsThatDoNotSplit) {
  auto members = make_fake_group(1, "ep", 5.0);
  ExpertDispatchStats stats;
  auto none = [](int, const float*, int64_t, float*) {};
  EXPECT_THROW(dispatch_and_combine(*members[0], 0, 4, nullptr, 0, 2, nullptr, nullptr, none,
                                    nullptr, stats),
               Error);
}

TEST(ExpertDispatch, LockstepAgreesOnWorkAndStop) {
  auto members = make_fake_group(3, "ep", 20.0);
  std::vector<int> any(3), stop(3);
  std::vector<std::thread> threads;
  for (int m = 0; m < 3; ++m) {
    threads.emplace_back([&, m] {
      bool s = m == 2;
      any[m] = any_member_has_work(members[static_cast<size_t>(m)].get(), m == 0, &s);
      stop[m] = s;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(any, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(stop, (std::vector<int>{1, 1, 1}));
  EXPECT_FALSE(any_member_has_work(nullptr, false));
  EXPECT_TRUE(any_member_has_work(nullptr, true));
}

TEST(MoeExpertsAcrossReplicas, MatchTransformersOnFakeReplicas) {
  for (const std::string name : {"tiny-qwen3-moe-a", "tiny-mixtral", "tiny-dots1-a"}) {
    const std::string& path = test::tiny_store(name, DType::BF16);
    for (const ParallelLayout& layout : {ParallelLayout(1, 1, 2, 2), ParallelLayout(1, 1, 4, 2)}) {
      EXPECT_EQ(test::check_golden_fake_layout(name, path, layout), 0)
          << name << " " << layout.describe();
    }
  }
}

TEST(MoeExpertsAcrossReplicas, OwnRequestPerReplicaWithOneIdle) {
  const std::string name = "tiny-qwen3-moe-b";
  const test::json golden = test::load_golden(name);
  const std::string& path = test::tiny_store(name, DType::BF16);
  auto backend = make_backend("cpu");
  backend->set_max_threads(1);
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;
  options.max_model_len = 128;
  const ParallelLayout layout(1, 1, 2, 2);
  std::vector<test::ReplicaRequest> requests;
  std::vector<std::vector<int32_t>> one_rank;
  {
    ModelStoreReader store(path);
    ParallelContext solo = make_solo_context();
    ShardedTransformer whole(store, solo, *backend, options);
    for (int d = 0; d < layout.dp_size(); ++d) {
      requests.push_back(test::replica_request(golden, d));
      one_rank.push_back(test::greedy_tokens(whole, solo, requests.back()));
    }
  }
  std::vector<ParallelContext> contexts = make_fake_contexts(layout);
  std::vector<std::unique_ptr<ModelStoreReader>> stores;
  std::vector<std::unique_ptr<ShardedTransformer>> models;
  for (ParallelContext& ctx : contexts) {
    stores.push_back(std::make_unique<ModelStoreReader>(path));
    models.push_back(std::make_unique<ShardedTransformer>(*stores.back(), ctx, *backend, options));
  }
  std::vector<std::vector<int32_t>> got(contexts.size());
  std::vector<std::thread> threads;
  for (size_t r = 0; r < contexts.size(); ++r) {
    threads.emplace_back([&, r] {
      try {
        got[r] = test::greedy_tokens(*models[r], contexts[r], requests[r]);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "replica " << r << ": " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < contexts.size(); ++r) {
    test::compare_replica_tokens(name + " replica " + std::to_string(r), requests[r], got[r],
                                 one_rank[r]);
    // Each replica held half of the experts and exchanged rows with the other.
    EXPECT_EQ(models[r]->shard().num_local_experts, stores[r]->config().num_experts / 2);
    EXPECT_GT(models[r]->expert_dispatch().rows_sent, 0u);
    EXPECT_GT(models[r]->expert_dispatch().rows_received, 0u);
  }
  // The idle replica (5 tokens) kept serving rows: it made as many MoE calls as the busy one.
  EXPECT_EQ(models[0]->expert_dispatch().layer_calls, models[1]->expert_dispatch().layer_calls);
}

// Two replicas' serving loops (dp 2 ep 2), each on its own thread as on its own rank: a request
// on replica 0 alone (replica 1 idles in lockstep, serving its experts), then one on each at
// once; tokens equal transformers' greedy ones. A stop asked of replica 1 ends both loops.
TEST(MoeExpertsAcrossReplicas, ServingEnginesStepInLockstep) {
  const std::string name = "tiny-qwen3-moe-a";
  const test::json golden = test::load_golden(name);
  const std::string& path = test::tiny_store(name, DType::BF16);
  auto backend = make_backend("cpu");
  backend->set_max_threads(1);
  EngineOptions options;
  options.kv_cache_dtype = DType::F32;
  options.max_model_len = 128;
  std::vector<ParallelContext> contexts = make_fake_contexts(ParallelLayout(1, 1, 2, 2));
  std::vector<std::unique_ptr<ModelStoreReader>> stores;
  std::vector<std::unique_ptr<ShardedTransformer>> models;
  std::vector<std::unique_ptr<ServingEngine>> engines;
  for (ParallelContext& ctx : contexts) {
    stores.push_back(std::make_unique<ModelStoreReader>(path));
    models.push_back(std::make_unique<ShardedTransformer>(*stores.back(), ctx, *backend, options));
    engines.push_back(std::make_unique<ServingEngine>(*models.back(), ctx, ServingOptions{}));
  }
  std::vector<std::thread> loops;
  for (auto& engine : engines) {
    loops.emplace_back([&e = *engine] {
      try {
        e.run_leader_loop();
      } catch (const std::exception& ex) {
        ADD_FAILURE() << "engine loop: " << ex.what();
      }
    });
  }
  std::mutex mutex;
  std::condition_variable changed;
  struct Outcome {
    std::vector<int32_t> tokens;
    bool finished = false;
  };
  std::vector<Outcome> outcomes(4);
  auto submit = [&](int replica, size_t slot, const test::ReplicaRequest& r) {
    EngineRequest request;
    request.prompt = r.prompt;
    request.params.temperature = 0;
    request.params.max_tokens = static_cast<int>(r.golden.size());
    request.params.ignore_eos = true;
    request.on_event = [&, slot](const RequestEvent& event) {
      std::lock_guard<std::mutex> lock(mutex);
      if (event.has_token) outcomes[slot].tokens.push_back(event.token_id);
      if (event.finished) outcomes[slot].finished = true;
      changed.notify_all();
    };
    EXPECT_EQ(engines[static_cast<size_t>(replica)]->submit(std::move(request)).status,
              SubmitStatus::kAccepted);
  };
  auto wait_for = [&](std::vector<size_t> slots) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, std::chrono::seconds(120), [&] {
      for (size_t s : slots)
        if (!outcomes[s].finished) return false;
      return true;
    });
  };
  const test::ReplicaRequest long_a = test::replica_request(golden, 0);   // 32 tokens
  const test::ReplicaRequest long_b = test::replica_request(golden, 2);   // same prompt, 32
  const test::ReplicaRequest short_b = test::replica_request(golden, 1);  // 5 tokens
  submit(0, 0, long_a);
  EXPECT_TRUE(wait_for({0}));
  const uint64_t served_alone = models[1]->expert_dispatch().rows_received;
  EXPECT_GT(served_alone, 0u) << "the idle replica served no rows";
  submit(0, 1, long_b);
  submit(1, 2, short_b);
  EXPECT_TRUE(wait_for({1, 2}));
  engines[1]->stop(0);  // replica 0 is not asked: the lockstep carries the stop
  for (auto& t : loops) t.join();
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_EQ(outcomes[0].tokens, long_a.golden);
  EXPECT_EQ(outcomes[1].tokens, long_b.golden);
  EXPECT_EQ(outcomes[2].tokens, short_b.golden);
  EXPECT_EQ(models[0]->expert_dispatch().layer_calls, models[1]->expert_dispatch().layer_calls);
}

}  // namespace
}  // namespace alem
