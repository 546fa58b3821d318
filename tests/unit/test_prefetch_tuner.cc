// The light-stream prefetch tuner (kernels/cpu/prefetch_tuner.h): its choice from measured times
// (synthetic ones, so the test knows the answer), per byte, its medians against outliers, measuring
// again after kExploitCalls, which matmuls the CPU backend tunes, that the choice reaches the
// worker threads and the kernels, and that it never changes a result (bit for bit, every ISA here).
// Also where two streams read side by side aim their prefetches (pair_prefetch_offset).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_backend_threads.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/prefetch_tuner.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

using cpu::LightPrefetch;
using cpu::LightPrefetchTuner;

// Runs one call in `matrix_class` through the tuner, on 1 MB of weights timed as
// `seconds(choice)` says; returns the choice.
template <class Seconds>
LightPrefetch one_call(LightPrefetchTuner& tuner, uint64_t matrix_class, const Seconds& seconds) {
  const LightPrefetch choice = tuner.choose(matrix_class);
  tuner.record(matrix_class, choice, seconds(choice), 1 << 20);
  return choice;
}

TEST(LightPrefetchTuner, KeepsTheFasterSettingThenMeasuresAgain) {
  LightPrefetchTuner tuner;
  const uint64_t a = 1, b = 2;
  // Class a runs faster with the prefetches, b without.
  const auto a_time = [](LightPrefetch c) { return c == LightPrefetch::kOn ? 1e-3 : 2e-3; };
  const auto b_time = [](LightPrefetch c) { return c == LightPrefetch::kOn ? 2e-3 : 1e-3; };
  for (int i = 0; i < LightPrefetchTuner::kWarmCalls; ++i) {
    EXPECT_EQ(one_call(tuner, a, a_time), LightPrefetch::kSetting) << "warm-up call " << i;
  }
  // Measuring: the two settings in turn, each kSamples times.
  int on = 0, off = 0;
  for (int i = 0; i < 2 * LightPrefetchTuner::kSamples; ++i) {
    const LightPrefetch c = one_call(tuner, a, a_time);
    ASSERT_NE(c, LightPrefetch::kSetting);
    (c == LightPrefetch::kOn ? on : off)++;
    one_call(tuner, b, b_time);
    one_call(tuner, b, b_time);  // b measures twice as often
  }
  EXPECT_EQ(on, LightPrefetchTuner::kSamples);
  EXPECT_EQ(off, LightPrefetchTuner::kSamples);
  EXPECT_EQ(tuner.chosen(a), LightPrefetch::kOn);
  EXPECT_EQ(tuner.chosen(b), LightPrefetch::kOff);
  EXPECT_EQ(tuner.counts().on, 1);
  EXPECT_EQ(tuner.counts().off, 1);
  // Kept for kExploitCalls calls, whatever they take now...
  const auto flipped = [](LightPrefetch c) { return c == LightPrefetch::kOn ? 3e-3 : 1e-3; };
  for (int64_t i = 0; i < LightPrefetchTuner::kExploitCalls; ++i) {
    ASSERT_EQ(one_call(tuner, a, flipped), LightPrefetch::kOn) << "call " << i;
  }
  // ...then measured again, and the other setting wins.
  for (int i = 0; i < 2 * LightPrefetchTuner::kSamples; ++i) one_call(tuner, a, flipped);
  EXPECT_EQ(tuner.chosen(a), LightPrefetch::kOff);
  EXPECT_EQ(tuner.chosen(b), LightPrefetch::kOff);
  EXPECT_EQ(tuner.chosen(3), LightPrefetch::kSetting);  // never seen
}

// Samples are per weight byte: a class whose matrices differ in size is judged by speed, and a
// few preempted calls do not decide.
TEST(LightPrefetchTuner, JudgesBytesPerSecondAndIgnoresOutliers) {
  LightPrefetchTuner tuner;
  const uint64_t c = 7;
  int call = 0, on_calls = 0;
  for (int i = 0; i < LightPrefetchTuner::kWarmCalls + 2 * LightPrefetchTuner::kSamples; ++i) {
    const LightPrefetch choice = tuner.choose(c);
    // Matrices of 1 and 4 MB in turn; on reads 10 GB/s, off 8 GB/s; two of on's calls were
    // preempted (100x slower).
    const size_t bytes = (call++ % 3 == 0 ? 4 : 1) << 20;
    double seconds = bytes / (choice == LightPrefetch::kOn ? 10e9 : 8e9);
    if (choice == LightPrefetch::kOn && ++on_calls <= 2) seconds *= 100;
    tuner.record(c, choice, seconds, bytes);
  }
  EXPECT_EQ(tuner.chosen(c), LightPrefetch::kOn);
  // Large matrices need fewer calls each: the LM head of a 1.1B model (98 MB) decides after
  // kMinSamples, a 1 MB matrix after kSamples.
  EXPECT_EQ(LightPrefetchTuner::samples_for(size_t{98} << 20), LightPrefetchTuner::kMinSamples);
  EXPECT_EQ(LightPrefetchTuner::samples_for(size_t{1} << 20), LightPrefetchTuner::kSamples);
  EXPECT_EQ(LightPrefetchTuner::samples_for(size_t{4} << 20), 8);
  float values[] = {5, 1, 4, 2, 3};
  EXPECT_EQ(cpu::median_of(values, 5), 3.f);
  float even[] = {4, 1, 3, 2};
  EXPECT_EQ(cpu::median_of(even, 4), 2.5f);
}

// The choice set around a matmul reaches every worker thread, and the kernels' question.
TEST(LightPrefetchTuner, ChoiceReachesWorkersAndKernels) {
  for (LightPrefetch choice : {LightPrefetch::kOn, LightPrefetch::kOff}) {
    const cpu::ScopedLightPrefetch scoped(choice);
    std::vector<int> seen(2, -2);
    cpu_threads::run_on_threads(
        2, [&](int index, int) { seen[index] = static_cast<int>(cpu::light_prefetch_now); });
    for (int index = 0; index < 2; ++index) {
      if (seen[index] != -2) {
        EXPECT_EQ(seen[index], static_cast<int>(choice)) << index;
      }
    }
    EXPECT_EQ(seen[0], static_cast<int>(choice));
    EXPECT_EQ(cpu::stream_prefetches(cpu::StreamKind::kLight, 0), choice == LightPrefetch::kOn);
    EXPECT_EQ(cpu::stream_prefetches(cpu::StreamKind::kHeavy, 0), cpu::stream_prefetch.heavy);
  }
  EXPECT_EQ(cpu::light_prefetch_now, LightPrefetch::kSetting);  // restored
}

TEST(LightPrefetchTuner, BackendTunesOneRowLightStreamsOnly) {
  CpuBackend backend(cpu::best_supported_isa(), 2);
  backend.set_tune_light_prefetch(true);
  std::vector<float> values(1024 * 256, 0.5f);
  const WeightMatrix bf16 = make_weight_matrix(values.data(), 1024, 256, DType::BF16);  // 512 KiB
  const WeightMatrix q4 = make_weight_matrix(values.data(), 1024, 256, DType::Q4_0);
  const WeightMatrix small = make_weight_matrix(values.data(), 64, 256, DType::BF16);
  EXPECT_TRUE(backend.tunes_light_prefetch(1, bf16));
  EXPECT_FALSE(backend.tunes_light_prefetch(2, bf16));
  EXPECT_FALSE(backend.tunes_light_prefetch(1, q4));
  EXPECT_FALSE(backend.tunes_light_prefetch(1, small));
  backend.set_tune_light_prefetch(false);
  EXPECT_FALSE(backend.tunes_light_prefetch(1, bf16));
  EXPECT_EQ(backend.light_prefetch_tuner(), nullptr);
}

// Through the measuring and after the choice, every call gives the untuned backend's result bit
// for bit, for every light weight type, on every ISA this CPU runs, at 1 and 2 threads.
TEST(LightPrefetchTuner, ResultsDoNotDependOnTheChoice) {
  const int64_t N = 512, K = 512;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  std::vector<float> values(N * K), x(K);
  for (float& v : values) v = dist(rng);
  for (float& v : x) v = dist(rng);
  for (cpu::Isa isa : {cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
    if (!cpu::isa_supported(isa)) continue;
    for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8, DType::Q8_0}) {
      for (int threads : {1, 2}) {
        CpuBackend plain(isa, threads), tuned(isa, threads);
        plain.set_tune_light_prefetch(false);
        tuned.set_tune_light_prefetch(true);
        WeightMatrix w = make_weight_matrix(values.data(), N, K, dtype);
        WeightMatrix w2 = make_weight_matrix(values.data(), N, K, dtype);
        plain.adopt_weight(w);
        tuned.adopt_weight(w2);
        ASSERT_TRUE(tuned.tunes_light_prefetch(1, w2)) << dtype_name(dtype);
        std::vector<float> want(N), got(N);
        plain.matmul(x.data(), 1, w, nullptr, want.data());
        const int calls = LightPrefetchTuner::kWarmCalls + 2 * LightPrefetchTuner::kSamples + 3;
        for (int call = 0; call < calls; ++call) {
          std::fill(got.begin(), got.end(), 0.f);
          tuned.matmul(x.data(), 1, w2, nullptr, got.data());
          ASSERT_EQ(std::memcmp(got.data(), want.data(), N * sizeof(float)), 0)
              << cpu::isa_name(isa) << " " << dtype_name(dtype) << " threads " << threads
              << " call " << call;
        }
        const auto* tuner = tuned.light_prefetch_tuner();
        EXPECT_NE(tuner->chosen(CpuBackend::light_prefetch_class(w2)), LightPrefetch::kSetting);
      }
    }
  }
}

// Two groups of interleaved rows read side by side, pair after pair (groups 2p and 2p + 1, `gap`
// bytes each): for groups of `ahead` bytes or more, each stream's prefetch `ahead` bytes on must
// land where that same stream reads `ahead` bytes later in its own order (group 2p + s, then
// 2p + 2 + s), never in the other stream's group.
TEST(PairPrefetch, EachStreamAimsAtItsOwnNextBytes) {
  for (size_t gap : {size_t{9216}, size_t{12672}, size_t{25344}}) {
    for (size_t ahead :
         {size_t{cpu::kStreamPrefetchBytes / 2}, size_t{cpu::kStreamL1PrefetchBytes / 2}}) {
      for (size_t pair = 0; pair < 3; ++pair) {
        for (size_t in_group = 0; in_group < gap; in_group += 64) {
          for (size_t stream = 0; stream < 2; ++stream) {
            const size_t group = 2 * pair + stream;
            const size_t here = group * gap + in_group;
            const size_t target = here + cpu::pair_prefetch_offset(ahead, gap, in_group);
            // Where this stream is `ahead` bytes later: its own groups step by 2.
            const size_t later = in_group + ahead;
            const size_t want = (later < gap ? group : group + 2) * gap + later % gap;
            ASSERT_EQ(target, want) << "gap " << gap << " ahead " << ahead << " at " << in_group;
            ASSERT_EQ((target / gap) % 2, stream) << "landed in the other stream's group";
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace alem
