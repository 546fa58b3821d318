// The engine on a GGUF whose matrices take the low-bit block types alem keeps as they are
// (tests/data/tiny-lowbit-llama.gguf: random Q5_0 embedding, IQ4_XS LM head and o_proj, Q3_K q/k
// and gate/up, IQ4_NL v, and a Q2_K down expanded to bf16; scripts/reference/
// make_gguf_reference.py --lowbit-only), against the same file converted to f32, which holds
// exactly the values ggml's dequantisation gives (Convert.LowBitGgufTypesKeptAsTheyAre).
// Both run the same prompt and teacher-forced steps on every CPU instruction set: the kept
// store's logits differ only by the block kernels' 16-bit activations, held to a bound relative
// to the logits' own size. This covers what the kernel tests do not: the engine's hand-over of
// each type (interleaving), a stacked q/k/v of three types, and the embedding lookup of a Q5_0
// table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/transformer.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "model/convert.h"
#include "model/model_store.h"
#include "tests/test_env.h"

namespace alem {
namespace {

// Logits of `steps` forward passes: the prompt, then the given tokens one at a time.
std::vector<std::vector<float>> run(const std::string& path, const KernelBackend& backend,
                                    const std::vector<int32_t>& prompt,
                                    const std::vector<int32_t>& forced) {
  ModelStoreReader store(path);
  ParallelContext ctx = make_solo_context();
  EngineOptions options;
  options.max_model_len = 64;
  options.kv_cache_dtype = DType::F32;
  ShardedTransformer model(store, ctx, backend, options);
  StepSequence seq;
  seq.request_id = 1;
  seq.sample = true;
  for (int b = 0; b < model.num_kv_blocks(); ++b) seq.block_table.push_back(b);
  std::vector<std::vector<float>> rows;
  for (size_t j = 0; j <= forced.size(); ++j) {
    StepPlan plan;
    plan.tokens = j == 0 ? prompt : std::vector<int32_t>{forced[j - 1]};
    seq.start_pos = j == 0 ? 0 : static_cast<int32_t>(prompt.size() + j - 1);
    seq.num_tokens = static_cast<int32_t>(plan.tokens.size());
    plan.sequences = {seq};
    StepLogits logits = model.forward(plan);
    rows.emplace_back(logits.row(0), logits.row(0) + logits.vocab_size);
  }
  return rows;
}

TEST(LowBitEngine, KeptTypesMatchTheirExactExpansion) {
  const std::string gguf = test::data_dir() + "/tiny-lowbit-llama.gguf";
  const std::string kept = test::temp_path("lowbit-engine", "kept.h5");
  const std::string exact = test::temp_path("lowbit-engine", "f32.h5");
  ConvertOptions options;
  options.keep_gguf_types = true;
  convert_gguf(gguf, kept, options);
  options.keep_gguf_types = false;
  options.dtype = DType::F32;
  convert_gguf(gguf, exact, options);
  const std::vector<int32_t> prompt = {1, 17, 250, 3, 99, 42, 7, 128, 5, 64, 300, 11};
  const std::vector<int32_t> forced = {8, 200, 31, 77, 2, 150};
  int isas_run = 0;
  for (cpu::Isa isa : {cpu::Isa::kScalar, cpu::Isa::kAvx2, cpu::Isa::kAvxVnni, cpu::Isa::kAvx512}) {
    if (!cpu::isa_supported(isa)) continue;
    SCOPED_TRACE(cpu::isa_name(isa));
    CpuBackend backend(isa, 2);
    const auto want = run(exact, backend, prompt, forced);
    const auto got = run(kept, backend, prompt, forced);
    ASSERT_EQ(got.size(), want.size());
    double worst_relative = 0;
    for (size_t step = 0; step < want.size(); ++step) {
      double scale = 0, worst = 0;
      for (size_t v = 0; v < want[step].size(); ++v) {
        ASSERT_TRUE(std::isfinite(got[step][v])) << "step " << step << " token " << v;
        scale = std::max(scale, std::fabs(double(want[step][v])));
        worst = std::max(worst, std::fabs(double(got[step][v]) - want[step][v]));
      }
      EXPECT_GT(scale, 0.0);
      worst_relative = std::max(worst_relative, worst / scale);
      // 16-bit activations in every block matmul: a few parts in 10^4 of the logits' size.
      EXPECT_LE(worst, 2e-3 * scale + 1e-4)
          << "step " << step << " (largest logit " << scale << ")";
    }
    std::printf("[%s] worst logit difference %.2e of the largest logit\n", cpu::isa_name(isa),
                worst_relative);
    ++isas_run;
  }
  EXPECT_GE(isas_run, 1);
  std::filesystem::remove(kept);
  std::filesystem::remove(exact);
}

}  // namespace
}  // namespace alem
