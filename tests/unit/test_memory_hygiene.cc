// Memory hygiene (issue 7): released KV blocks read back zero on the real model, the block pool
// queues exactly the blocks whose contents are given up, the KV region is excluded from core
// dumps (as the kernel reports it in /proc/self/smaps), and a hardened process is not dumpable,
// has RLIMIT_CORE 0 and writes no core file when it aborts (checked in forked children).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "confidential/memory_hygiene.h"
#include "core/aligned_buffer.h"
#include "engine/block_pool.h"
#include "engine/serving_engine.h"
#include "engine/transformer.h"
#include "kernels/backend.h"
#include "model/model_store.h"
#include "test_env.h"

namespace alem {
namespace {

bool has_flag(const std::vector<std::string>& flags, const std::string& f) {
  return std::find(flags.begin(), flags.end(), f) != flags.end();
}

bool all_zero(const std::vector<uint8_t>& bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// Runs `body` in a forked child; returns the child's exit code (or 128 + signal).
template <typename F>
int run_in_child(F body) {
  const pid_t pid = fork();
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    _exit(code);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

TEST(BlockPoolWipe, QueuesUnhashedReleasesAndEvictionsOnly) {
  BlockPool pool(4, 2);
  const std::vector<int32_t> prompt_a = {1, 2, 3, 4, 5};  // two full blocks + one partial
  ASSERT_TRUE(pool.allocate_for(1, prompt_a, 5).has_value());
  EXPECT_EQ(pool.num_blocks_to_wipe(), 0);
  const std::vector<int32_t> table_a = pool.block_table(1);
  pool.commit(1, prompt_a, 4);  // the two full blocks become cached prefix blocks
  pool.free(1);
  // Only the partial tail block gave its contents up; the cached ones stay for reuse.
  EXPECT_EQ(pool.take_blocks_to_wipe(), std::vector<int32_t>{table_a[2]});
  EXPECT_EQ(pool.num_blocks_to_wipe(), 0);
  EXPECT_TRUE(pool.take_blocks_to_wipe().empty());

  // A different prompt needs all four blocks: the two cached ones are evicted and queued.
  const std::vector<int32_t> prompt_b = {9, 9, 9, 9, 9, 9, 9};
  ASSERT_TRUE(pool.allocate_for(2, prompt_b, 7).has_value());
  std::vector<int32_t> evicted = pool.take_blocks_to_wipe();
  std::sort(evicted.begin(), evicted.end());
  std::vector<int32_t> cached = {table_a[0], table_a[1]};
  std::sort(cached.begin(), cached.end());
  EXPECT_EQ(evicted, cached);
  pool.free(2);
  std::vector<int32_t> released = pool.take_blocks_to_wipe();
  std::sort(released.begin(), released.end());
  EXPECT_EQ(released, (std::vector<int32_t>{0, 1, 2, 3}));
  pool.check_invariants();
}

TEST(BlockPoolWipe, ABlockIsQueuedOnceUntilTaken) {
  BlockPool pool(2, 4);
  for (int round = 0; round < 3; ++round) {
    ASSERT_TRUE(pool.allocate_for(round, std::vector<int32_t>{1, 2}, 2).has_value());
    pool.free(round);
  }
  EXPECT_EQ(pool.take_blocks_to_wipe().size(), 1u);  // the same block three times, queued once
}

class KvWipe : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::make_unique<ModelStoreReader>(test::model_variant_path("f32"));
    ctx_ = make_solo_context();
    backend_ = make_backend("cpu");
    EngineOptions options;
    options.max_model_len = 32;  // 8 blocks of 4 tokens hold one whole sequence
    options.block_size = 4;
    options.num_kv_blocks = 8;
    model_ = std::make_unique<ShardedTransformer>(*store_, ctx_, *backend_, options);
  }
  std::unique_ptr<ModelStoreReader> store_;
  ParallelContext ctx_;
  std::unique_ptr<KernelBackend> backend_;
  std::unique_ptr<ShardedTransformer> model_;
};

TEST_F(KvWipe, ReleasedBlocksReadBackZeroOnEveryLayer) {
  BlockPool pool(model_->num_kv_blocks(), model_->block_size());
  const std::vector<int32_t> prompt = {1, 4093, 198, 28, 1303, 30, 2, 5, 6, 7};  // 10 tokens
  ASSERT_TRUE(pool.allocate_for(11, prompt, static_cast<int32_t>(prompt.size())).has_value());
  StepSequence seq;
  seq.request_id = 11;
  seq.num_tokens = static_cast<int32_t>(prompt.size());
  seq.sample = true;
  seq.block_table = pool.block_table(11);
  StepPlan plan;
  plan.tokens = prompt;
  plan.sequences = {seq};
  model_->forward(plan);
  const std::vector<int32_t> used = pool.block_table(11);
  ASSERT_EQ(used.size(), 3u);
  const int layers = model_->shard().num_layers;
  for (int32_t b : used) {  // the prefill wrote keys and values into every used block
    EXPECT_FALSE(all_zero(model_->kv_block(0, b, false))) << "block " << b;
    EXPECT_FALSE(all_zero(model_->kv_block(layers - 1, b, true))) << "block " << b;
  }

  pool.free(11);  // nothing committed: every block gives its contents up
  StepPlan wipe_only;
  wipe_only.wipe_blocks = pool.take_blocks_to_wipe();
  ASSERT_EQ(wipe_only.wipe_blocks.size(), used.size());
  // The wipe travels in the plan the leader broadcasts; apply it as a follower would.
  const std::vector<uint8_t> bytes = serialize_step_plan(wipe_only);
  const StepPlan received = deserialize_step_plan(bytes.data(), bytes.size());
  EXPECT_EQ(received.wipe_blocks, wipe_only.wipe_blocks);
  EXPECT_TRUE(model_->forward(received).request_ids.empty());
  for (int l = 0; l < layers; ++l) {
    for (int32_t b = 0; b < model_->num_kv_blocks(); ++b) {
      EXPECT_TRUE(all_zero(model_->kv_block(l, b, false))) << "layer " << l << " block " << b;
      EXPECT_TRUE(all_zero(model_->kv_block(l, b, true))) << "layer " << l << " block " << b;
    }
  }
}

// Through the serving engine: when a request ends, the blocks it gives up are zeroed by the
// next (wipe-only) step; its full prompt blocks stay cached for prefix reuse, and only those.
TEST_F(KvWipe, ServingEngineWipesAFinishedRequestsPartialBlock) {
  ServingOptions options;
  ServingEngine engine(*model_, ctx_, options);
  EngineRequest request;
  request.prompt = {1, 4093, 198, 28, 1303, 30, 2, 5, 6, 7};  // 10 tokens: blocks 0-1 full, 2 not
  request.params.temperature = 0;
  request.params.max_tokens = 1;
  bool finished = false;
  request.on_event = [&](const RequestEvent& e) { finished = finished || e.finished; };
  ASSERT_EQ(engine.submit(std::move(request)).status, SubmitStatus::kAccepted);
  auto nonzero_blocks = [&] {
    int n = 0;
    for (int32_t b = 0; b < model_->num_kv_blocks(); ++b)
      n += !all_zero(model_->kv_block(0, b, false));
    return n;
  };
  for (int i = 0; i < 20 && !finished; ++i) engine.run_step();
  ASSERT_TRUE(finished);
  EXPECT_EQ(nonzero_blocks(), 3);   // the prefill wrote 10 positions: blocks 0, 1 and 2
  EXPECT_FALSE(engine.run_step());  // nothing to run: a wipe-only step
  const ReplicaStats stats = engine.stats().at(0);
  EXPECT_EQ(stats.kv_blocks_cached, 2);
  EXPECT_EQ(nonzero_blocks(), 2);  // the partial block is zero; the cached prefix is kept
  for (int l = 0; l < model_->shard().num_layers; ++l) {
    int zero_v = 0;
    for (int32_t b = 0; b < model_->num_kv_blocks(); ++b)
      zero_v += all_zero(model_->kv_block(l, b, true));
    EXPECT_EQ(zero_v, model_->num_kv_blocks() - 2) << "layer " << l;
  }
}

TEST_F(KvWipe, KvRegionIsExcludedFromDumps) {
  ASSERT_NE(model_->kv_buffer().host_sensitive(), nullptr);  // host backend: a SensitiveBuffer
  const SensitiveBuffer& region = *model_->kv_buffer().host_sensitive();
  ASSERT_GT(region.size(), 0u);
  EXPECT_TRUE(region.dont_dump());
  // The kernel's own view: every page of the region is in a mapping flagged "dd".
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t off = 0; off < region.mapped_bytes(); off += page * 97) {
    const auto flags = confidential::mapping_vm_flags(region.data() + off);
    ASSERT_FALSE(flags.empty()) << "no mapping at offset " << off;
    EXPECT_TRUE(has_flag(flags, "dd")) << "offset " << off;
    if (region.locked()) {
      EXPECT_TRUE(has_flag(flags, "lo")) << "offset " << off;
    }
  }
  EXPECT_GE(model_->kv_cache_bytes(), region.size());
}

TEST(SensitiveBuffer, ZeroedDontDumpAndCounted) {
  const SensitiveMemoryStats before = sensitive_memory_stats();
  {
    SensitiveBuffer buffer(10000);
    ASSERT_NE(buffer.data(), nullptr);
    EXPECT_EQ(buffer.size(), 10000u);
    EXPECT_EQ(buffer.mapped_bytes() % static_cast<size_t>(sysconf(_SC_PAGESIZE)), 0u);
    EXPECT_TRUE(std::all_of(buffer.data(), buffer.data() + buffer.size(),
                            [](uint8_t b) { return b == 0; }));
    EXPECT_TRUE(has_flag(confidential::mapping_vm_flags(buffer.data()), "dd"));
    const SensitiveMemoryStats during = sensitive_memory_stats();
    EXPECT_EQ(during.buffers, before.buffers + 1);
    EXPECT_EQ(during.mapped_bytes, before.mapped_bytes + buffer.mapped_bytes());
    SensitiveBuffer moved = std::move(buffer);
    EXPECT_EQ(buffer.data(), nullptr);
    EXPECT_EQ(sensitive_memory_stats().buffers, before.buffers + 1);
  }
  EXPECT_EQ(sensitive_memory_stats().buffers, before.buffers);
  EXPECT_EQ(sensitive_memory_stats().mapped_bytes, before.mapped_bytes);
}

TEST(SensitiveBuffer, LargeBuffersLieOnAlignedHugePageAdvice) {
  // The KV cache's size class: 2 MiB aligned, whole 2 MiB pages, advised onto huge pages
  // (VmFlags "hg") and still excluded from dumps on every page; the rest of the reservation is
  // unmapped.
  const size_t huge = size_t{2} << 20, bytes = (size_t{5} << 20) + 123;
  const SensitiveMemoryStats before = sensitive_memory_stats();
  {
    SensitiveBuffer buffer(bytes);
    ASSERT_NE(buffer.data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % huge, 0u);
    EXPECT_EQ(buffer.mapped_bytes(), 3 * huge);
    EXPECT_EQ(sensitive_memory_stats().mapped_bytes, before.mapped_bytes + 3 * huge);
    for (size_t off : {size_t{0}, huge, buffer.mapped_bytes() - 1}) {
      const auto flags = confidential::mapping_vm_flags(buffer.data() + off);
      EXPECT_TRUE(has_flag(flags, "dd")) << "offset " << off;
      EXPECT_TRUE(has_flag(flags, "hg")) << "offset " << off;
    }
    EXPECT_TRUE(
        std::all_of(buffer.data(), buffer.data() + bytes, [](uint8_t b) { return b == 0; }));
    buffer.data()[buffer.mapped_bytes() - 1] = 7;  // the whole rounded mapping is usable
  }
  EXPECT_EQ(sensitive_memory_stats().mapped_bytes, before.mapped_bytes);
}

TEST(SensitiveBuffer, LockingCanBeTurnedOff) {
  set_sensitive_memory_locking(false);
  SensitiveBuffer buffer(4096);
  set_sensitive_memory_locking(true);
  EXPECT_FALSE(buffer.locked());
  EXPECT_FALSE(has_flag(confidential::mapping_vm_flags(buffer.data()), "lo"));
  EXPECT_TRUE(buffer.dont_dump());
}

TEST(Hardening, ChildIsNotDumpableAndHasNoCoreLimit) {
  const int code = run_in_child([] {
    if (!confidential::process_dumpable()) return 10;  // a fresh process starts dumpable
    const auto report = confidential::harden_process({});
    if (!report.dumpable_cleared || !report.core_limit_zero) return 11;
    if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0) return 12;  // read back from the kernel
    struct rlimit r {};
    if (getrlimit(RLIMIT_CORE, &r) != 0 || r.rlim_cur != 0 || r.rlim_max != 0) return 13;
    if (report.mpi_single_copy != "none") return 14;
    return 0;
  });
  EXPECT_EQ(code, 0);
}

TEST(Hardening, EscapeHatchLeavesCoreDumpsAlone) {
  const int code = run_in_child([] {
    struct rlimit before {};
    getrlimit(RLIMIT_CORE, &before);
    confidential::HardeningOptions options;
    options.allow_core_dumps = true;
    confidential::harden_process(options);
    struct rlimit after {};
    getrlimit(RLIMIT_CORE, &after);
    if (!confidential::process_dumpable()) return 20;
    return after.rlim_cur == before.rlim_cur ? 0 : 21;
  });
  EXPECT_EQ(code, 0);
}

TEST(Hardening, AbortWritesNoCoreFile) {
  // The child asks for core files as hard as it can (highest core limit, scratch working
  // folder), then hardens and aborts: the kernel must report no core dump, and no file appears.
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("alem-core-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const pid_t pid = fork();
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(30);
    struct rlimit r {};
    getrlimit(RLIMIT_CORE, &r);
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_CORE, &r);
    try {
      confidential::harden_process({});
    } catch (...) {
      _exit(31);
    }
    signal(SIGABRT, SIG_DFL);
    abort();
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGABRT);
  EXPECT_FALSE(WCOREDUMP(status));
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

TEST(MappingFlags, UnknownAddressHasNoFlags) {
  EXPECT_TRUE(confidential::mapping_vm_flags(reinterpret_cast<const void*>(16)).empty());
}

}  // namespace
}  // namespace alem
