// ranks: 2 4
// Data-parallel serving (engine/dp_router.h) over MPI with the real model: two replicas (np 2:
// dp 2; np 4: dp 2 x pp 2). The gateway's router spreads greedy requests over both replicas;
// every completion must equal what a single-rank Generator (an independent code path) produces
// for the same prompt, requests must reach both replicas, a cancelled request on either
// replica ends with "abort", and after stop_accepting every replica refuses new work.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "engine/dp_router.h"
#include "engine/generator.h"
#include "kernels/backend.h"
#include "model/model_store.h"
#include "model/tokenizer.h"
#include "mpi/message_channel.h"
#include "mpi/mpi_context.h"
#include "mpi_test.h"
#include "test_env.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;

struct Outcome {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::kNone;
  bool finished = false;
  int replica = -1;
  int64_t id = -1;              // what submit returned
  std::set<int64_t> event_ids;  // what the events carried: must be exactly {id}
};

// Collects the events of the requests submitted through a client.
class Collector {
 public:
  EngineEventCallback callback(int key) {
    return [this, key](const RequestEvent& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      Outcome& o = outcomes_[key];
      o.event_ids.insert(e.request_id);
      if (e.has_token) o.tokens.push_back(e.token_id);
      if (e.finished) {
        o.finished = true;
        o.reason = e.finish_reason;
      }
      changed_.notify_all();
    };
  }
  bool wait(const std::function<bool(const std::map<int, Outcome>&)>& done, int seconds) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(seconds), [&] { return done(outcomes_); });
  }
  std::map<int, Outcome> snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    return outcomes_;
  }
  void set_submitted(int key, const SubmitResult& s) {
    std::lock_guard<std::mutex> lock(mutex_);
    outcomes_[key].replica = s.replica;
    outcomes_[key].id = s.request_id;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<int, Outcome> outcomes_;
};

const std::vector<std::string> kPrompts = {
    "The capital of France is", "def fibonacci(n):",     "Once upon a time",
    "Water boils at",           "The largest planet is", "In 1492, Columbus"};
constexpr int kMaxTokens = 8;

TEST(DataParallelRouter, SpreadsRequestsAndMatchesSingleRank) {
  ALEM_REQUIRE_RANKS(2);
  const int world = test::world_size();
  ASSERT_EQ(world % 2, 0);
  ParallelContext ctx = make_mpi_context(ParallelLayout(1, world / 2, 2));
  std::unique_ptr<MessageChannel> channel = make_mpi_channel();
  ModelStoreReader store(test::model_path());
  auto backend = make_backend("cpu");
  EngineOptions options;
  options.max_model_len = 256;
  options.num_kv_blocks = 128;
  ShardedTransformer model(store, ctx, *backend, options);
  ServingOptions serving;
  serving.max_num_seqs = 8;
  serving.replica = ctx.coords.dp;
  serving.eos_token_ids = store.config().eos_token_ids;
  ServingEngine engine(model, ctx, serving);
  ctx.world->barrier();

  bool ok = true;
  if (!engine.is_leader()) {
    engine.run_follower_loop();
  } else if (ctx.world_rank != 0) {
    ReplicaAgent agent(engine, *channel, 0, ctx.coords.dp);
    engine.run_leader_loop();
    agent.shutdown();
  } else {
    std::vector<int> leaders;
    for (int d = 0; d < 2; ++d) leaders.push_back(ctx.layout.world_rank({d, 0, 0}));
    DataParallelRouter router(engine, *channel, leaders);
    const Tokenizer tokenizer(store.tokenizer());
    Collector collector;
    std::map<int, int> replica_of;
    std::thread client([&] {
      const auto deadline = Clock::now() + std::chrono::seconds(60);
      while (!router.healthy() && Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      EXPECT_TRUE(router.healthy()) << "the remote replica never reported";
      EXPECT_EQ(router.stats().size(), 2u);
      for (size_t i = 0; i < kPrompts.size(); ++i) {
        EngineRequest r;
        r.prompt = tokenizer.encode(kPrompts[i]);
        r.params.temperature = 0.f;
        r.params.max_tokens = kMaxTokens;
        r.params.ignore_eos = true;
        r.on_event = collector.callback(static_cast<int>(i));
        const SubmitResult s = router.submit(std::move(r));
        EXPECT_EQ(s.status, SubmitStatus::kAccepted);
        collector.set_submitted(static_cast<int>(i), s);
      }
      EXPECT_TRUE(collector.wait(
          [](const std::map<int, Outcome>& o) {
            for (size_t i = 0; i < kPrompts.size(); ++i) {
              auto it = o.find(static_cast<int>(i));
              if (it == o.end() || !it->second.finished) return false;
            }
            return true;
          },
          180));

      // Two long requests: the second goes to the other replica (fewest in flight); both are
      // cancelled once they produce tokens.
      std::vector<int64_t> ids;
      for (int k = 100; k < 102; ++k) {
        EngineRequest r;
        r.prompt = tokenizer.encode("Tell me a long story.");
        r.params.temperature = 0.f;
        r.params.max_tokens = 200;
        r.params.ignore_eos = true;
        r.on_event = collector.callback(k);
        const SubmitResult s = router.submit(std::move(r));
        EXPECT_EQ(s.status, SubmitStatus::kAccepted);
        collector.set_submitted(k, s);
        ids.push_back(s.request_id);
      }
      collector.wait(
          [](const std::map<int, Outcome>& o) {
            return o.count(100) && o.count(101) && !o.at(100).tokens.empty() &&
                   !o.at(101).tokens.empty();
          },
          60);
      for (int64_t id : ids) router.cancel(id);
      EXPECT_TRUE(collector.wait(
          [](const std::map<int, Outcome>& o) { return o.at(100).finished && o.at(101).finished; },
          60));

      router.stop_accepting();
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the command reaches them
      int refused = 0;
      for (int k = 200; k < 202; ++k) {
        EngineRequest r;
        r.prompt = tokenizer.encode("Hello");
        r.params.max_tokens = 2;
        r.on_event = collector.callback(k);
        if (router.submit(std::move(r)).status == SubmitStatus::kNotAccepting) ++refused;
      }
      EXPECT_EQ(refused, 2);
      EXPECT_EQ(router.in_flight(), 0);
      router.stop(0);
    });
    engine.run_leader_loop();
    client.join();

    // The independent reference: one rank, the whole model, the plain generator.
    ParallelContext solo = make_solo_context();
    ShardedTransformer whole(store, solo, *backend, options);
    Generator generator(whole, solo, store.config().eos_token_ids);
    const std::map<int, Outcome> got = collector.snapshot();
    std::set<int> replicas_used;
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      SamplingParams p;
      p.temperature = 0.f;
      p.max_tokens = kMaxTokens;
      p.ignore_eos = true;
      const GenerationResult expected = generator.generate(tokenizer.encode(kPrompts[i]), p);
      const Outcome& o = got.at(static_cast<int>(i));
      EXPECT_EQ(o.tokens, expected.tokens) << "prompt " << i << " on replica " << o.replica;
      EXPECT_EQ(o.reason, FinishReason::kLength);
      EXPECT_EQ(o.event_ids, std::set<int64_t>{o.id}) << "events must carry the router's id";
      ok = ok && o.tokens == expected.tokens;
      replicas_used.insert(o.replica);
    }
    EXPECT_EQ(replicas_used.size(), 2u) << "requests did not reach both replicas";
    EXPECT_NE(got.at(100).replica, got.at(101).replica);
    for (int k : {100, 101}) {
      EXPECT_EQ(got.at(k).reason, FinishReason::kAbort) << "long request " << k;
      EXPECT_LT(got.at(k).tokens.size(), 200u);
    }
    ok = ok && replicas_used.size() == 2 && !::testing::Test::HasFailure();
  }
  EXPECT_TRUE(test::all_ranks_agree(ok));
}

}  // namespace
}  // namespace alem
