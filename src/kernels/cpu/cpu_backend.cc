// The CPU backend's driver: picks the instruction-set kernels once, splits every op across
// OpenMP threads, and implements the light element-wise ops directly (they are memory-bound
// and tiny next to matmul and attention). The heavy inner loops live in the per-ISA files;
// which matmul kernel runs is decided in cpu_backend_matmul.cc.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/cpu_backend_threads.h"
#include "model/gguf_quant.h"

namespace alem {
namespace cpu {

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
    case Isa::kAvxVnni:
      return isa_supported(Isa::kAvx2) &&
             (has_avx_vnni() ||
              (__builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")));
  }
  return false;
}

bool has_avx_vnni() {
  return __builtin_cpu_supports("avxvnni");
}

bool has_avx512_bf16() {
  return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512bf16");
}

bool has_avx512_vnni() {
  return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
}

Isa best_supported_isa() {
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvxVnni)) return Isa::kAvxVnni;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvxVnni:
      return "avx_vnni";
  }
  return "?";
}

WeightView view_of(const WeightMatrix& w) {
  WeightView v;
  v.dtype = w.dtype;
  v.rows = w.rows;
  v.cols = w.cols;
  v.data = w.data.data();
  v.scales = w.scales.empty() ? nullptr : w.scales.data();
  v.layout = w.layout;
  return v;
}

KernelTable kernel_table(Isa isa) {
  KernelTable t;
  t.isa = isa;
  switch (vector_isa(isa)) {
    case Isa::kAvx512:
      t.matmul_stream = avx512::matmul_stream;
      t.matmul_packed = avx512::matmul_packed;
      t.packed_panel_cols = avx512::kPanelCols;
      t.attention = avx512::attention;
      t.silu_mul_rows = avx512::silu_mul_rows;
      t.rmsnorm_rows = avx512::rmsnorm_rows;
      t.add_range = avx512::add_range;
      t.logit_row_stats = avx512::logit_row_stats;
      t.unpack_coded_rows = avx512::unpack_coded_rows;
      t.permute_x_for_coded = avx512::permute_x_for_coded;
      t.matvec_coded = avx512::matvec_coded;
      break;
    case Isa::kAvx2:
      t.matmul_stream = avx2::matmul_stream;
      t.matmul_packed = avx2::matmul_packed;
      t.packed_panel_cols = avx2::kPanelCols;
      t.attention = avx2::attention;
      t.silu_mul_rows = avx2::silu_mul_rows;
      t.rmsnorm_rows = avx2::rmsnorm_rows;
      t.add_range = avx2::add_range;
      t.logit_row_stats = avx2::logit_row_stats;
      t.unpack_coded_rows = avx2::unpack_coded_rows;
      t.permute_x_for_coded = avx2::permute_x_for_coded;
      t.matvec_coded = avx2::matvec_coded;
      break;
    case Isa::kScalar:
      t.matmul_stream = scalar::matmul_stream;
      t.matmul_packed = scalar::matmul_packed;
      t.packed_panel_cols = 16;
      t.attention = scalar::attention;
      t.silu_mul_rows = scalar::silu_mul_rows;
      t.rmsnorm_rows = scalar::rmsnorm_rows;
      t.add_range = scalar::add_range;
      t.logit_row_stats = alem::logit_row_stats;
      break;
    case Isa::kAvxVnni:  // vector_isa() named its family
      break;
  }
  return t;
}

BlockKernels block_kernels(Isa isa) {
  BlockKernels k;
  if (isa == Isa::kAvx512 && has_avx512_vnni()) {
    k.name = "avx512_vnni";
    k.int8_dot = true;
    k.quantize = avx512_vnni::quantize_q16;
    k.matmul = avx512_vnni::matmul_blocks;
    k.matmul_interleaved = avx512_vnni::matmul_blocks_interleaved;
  } else if (isa == Isa::kAvxVnni) {
    // AVX2's quantisation and row-major kernels; the interleaved ones on vpdpbusd.
    k.name = has_avx_vnni() ? "avx_vnni" : "avx_vnni_evex";
    k.int8_dot = true;
    k.quantize = avx2::quantize_q16;
    k.matmul = avx2::matmul_blocks;
    k.matmul_interleaved = has_avx_vnni() ? avx_vnni::matmul_blocks_interleaved
                                          : avx_vnni_evex::matmul_blocks_interleaved;
  } else if (isa == Isa::kAvx512 || isa == Isa::kAvx2) {
    k.name = "avx2";
    k.quantize = avx2::quantize_q16;
    k.matmul = avx2::matmul_blocks;
    k.matmul_interleaved = avx2::matmul_blocks_interleaved;
  } else {
    k.quantize = scalar::quantize_q16;
    k.matmul = scalar::matmul_blocks;
  }
  return k;
}

}  // namespace cpu

using cpu_threads::run_on_threads;
using cpu_threads::split_range;
using cpu_threads::threads_for;

CpuBackend::CpuBackend(cpu::Isa isa, int max_threads, bool dot_products, bool bf16_dot_products,
                       bool amx)
    : kernels_(cpu::kernel_table(isa)),
      blocks_(cpu::block_kernels(isa)),
      max_threads_(max_threads > 0 ? max_threads : omp_get_max_threads()) {
  ALEM_CHECK(cpu::isa_supported(isa),
             std::string("this CPU cannot run the ") + cpu::isa_name(isa) + " kernels");
  const bool avx512 = isa == cpu::Isa::kAvx512 && dot_products;
  dot_bf16_ = avx512 && bf16_dot_products && cpu::has_avx512_bf16();
  dot_int8_ = avx512 && cpu::has_avx512_vnni();
  // AVX2 has no int8 dot product that takes x's 16 bits in bytes without saturating, but its
  // row-major block kernel (vpmaddwd on int16) reads int8 rows as Q8_0 blocks with f32 scales;
  // interleaved, int8 takes the kernel set's interleaved kernel (vpdpbusd on AVX-VNNI).
  int8_blocks_ = dot_products && cpu::vector_isa(isa) == cpu::Isa::kAvx2;
  // ggml's precision for block weights needs interleaved block kernels only (AVX512-VNNI's or
  // AVX2's): a CPU without AVX512-BF16 (an Intel Xeon whose hypervisor hides it, or an AVX2 CPU)
  // still takes it with ALEM_CPU_DOT=all. The kernels on int16 products (AVX2's Q8_0) keep x's
  // 16 bits.
  eight_bit_blocks_ = dot_products && bf16_dot_products && blocks_.matmul_interleaved != nullptr;
  amx_ = amx && isa == cpu::Isa::kAvx512 && cpu::amx::usable();
  // The int8 tiles take the panels the AVX512-VNNI interleaved kernels' unpacking makes.
  amx_int8_ = amx_ && __builtin_cpu_supports("amx-int8") && cpu::has_avx512_vnni();
  set_interleave_blocks(true);
  set_tune_light_prefetch(cpu::stream_prefetch.tuned);
}

bool CpuBackend::interleaves(DType dtype) const {
  if (!interleave_blocks_) return false;
  if (dtype == DType::I8) return dot_int8_ || int8_blocks_;
  return dtype_is_block(dtype);
}

void CpuBackend::adopt_weight(WeightMatrix& w) const {
  if (w.dtype == DType::BF16) {
    if (!code_bf16_ || w.layout != BlockLayout::kRowMajor || w.backend_copy ||
        !can_code_bf16(w.rows, w.cols) ||
        w.data.size() != static_cast<size_t>(w.rows * w.cols) * sizeof(uint16_t)) {
      return;
    }
    // Kept plain where too many weights fall outside their rows' windows (code_bf16).
    AlignedBuffer coded = code_bf16(w.rows, w.cols, w.data.as<uint16_t>());
    if (coded.empty()) return;
    w.data = std::move(coded);
    w.layout = BlockLayout::kBf16Coded;
    return;
  }
  if (!interleaves(w.dtype) || w.layout != BlockLayout::kRowMajor || w.backend_copy ||
      !can_interleave_blocks(w.dtype, w.rows) || w.data.empty()) {
    return;
  }
  // int8 only where its interleaved kernel's 16-bit activations are allowed (ALEM_CPU_DOT is
  // not 0): otherwise it stays row-major for the exact kernels.
  if (w.dtype == DType::I8) {
    if (w.cols % kInt8GroupSize != 0 ||
        w.scales.size() != static_cast<size_t>(w.rows * w.groups_per_row()) ||
        w.data.size() != static_cast<size_t>(w.rows * w.cols)) {
      return;
    }
    // Scales that are bf16 or f16 amax values over 127 (int8 made from bf16 or f16 weights)
    // take 2 bytes instead of 4, where no AMX tile kernel (which reads f32 scales) runs the
    // matrix.
    const BlockLayout layout = amx_int8_
                                   ? BlockLayout::kInterleaved8
                                   : int8_interleaved_layout(w.scales.data(), w.scales.size());
    AlignedBuffer interleaved(static_cast<size_t>(w.rows) *
                              interleaved_row_bytes(w.dtype, w.cols, layout));
    interleave_int8(w.rows, w.cols, w.data.as<int8_t>(), w.scales.data(), interleaved.data(),
                    layout);
    w.data = std::move(interleaved);
    w.scales = {};
    w.layout = layout;
    return;
  }
  interleave_blocks(w.dtype, w.rows, w.cols, w.data.data());
  w.layout = BlockLayout::kInterleaved8;
}

cpu::Isa cpu::configured_isa() {
  Isa isa = best_supported_isa();
  // ALEM_CPU_ISA=avx_vnni|avx2|scalar lowers the instruction set (benchmarks, debugging); never
  // raises. avx_vnni is taken on an AVX-512 CPU too where it has AVX512-VNNI (the EVEX form).
  if (const char* forced = std::getenv("ALEM_CPU_ISA"); forced && *forced) {
    const std::string name = forced;
    Isa wanted = isa;
    if (name == "scalar")
      wanted = Isa::kScalar;
    else if (name == "avx2")
      wanted = Isa::kAvx2;
    else if (name == "avx_vnni")
      wanted = Isa::kAvxVnni;
    else if (name == "avx512")
      wanted = Isa::kAvx512;
    else
      ALEM_FAIL("ALEM_CPU_ISA must be scalar, avx2, avx_vnni or avx512, got '" + name + "'");
    ALEM_CHECK(isa_supported(wanted), "ALEM_CPU_ISA=" + name + " is not supported here");
    isa = wanted;
  }
  return isa;
}

std::unique_ptr<KernelBackend> make_cpu_backend() {
  const cpu::Isa isa = cpu::configured_isa();
  // ALEM_CPU_DOT: 0 keeps the exact f32 kernels everywhere; unset or "int8" uses the int8 VNNI
  // kernels; "all" also the bf16 ones (which round activations to bf16) and 8-bit activations
  // for interleaved block weights (ggml's precision).
  const char* dot_env = std::getenv("ALEM_CPU_DOT");
  const std::string dot = dot_env ? dot_env : "int8";
  ALEM_CHECK(dot == "0" || dot == "int8" || dot == "all",
             "ALEM_CPU_DOT must be 0, int8 or all, got '" + dot + "'");
  // ALEM_CPU_AMX=0 keeps prefill off the AMX tiles, for bf16 and ggml block weights alike (on
  // where the CPU has them and a probe sequence ran).
  const char* amx_env = std::getenv("ALEM_CPU_AMX");
  const std::string amx = amx_env && *amx_env ? amx_env : "1";
  ALEM_CHECK(amx == "0" || amx == "1", "ALEM_CPU_AMX must be 0 or 1, got '" + amx + "'");
  // ALEM_CPU_INTERLEAVE=0 keeps block weights row-major (GGUF's layout) when adopted.
  const char* interleave_env = std::getenv("ALEM_CPU_INTERLEAVE");
  const std::string interleave = interleave_env && *interleave_env ? interleave_env : "1";
  ALEM_CHECK(interleave == "0" || interleave == "1",
             "ALEM_CPU_INTERLEAVE must be 0 or 1, got '" + interleave + "'");
  // ALEM_CPU_PREFETCH=auto|static|all|heavy|none: which decode streams prefetch (read once, when
  // the process starts: cpu_kernels.h); checked here so a wrong value is an error, not a default.
  bool prefetch_valid = false;
  const char* prefetch_env = std::getenv("ALEM_CPU_PREFETCH");
  cpu::stream_prefetch_setting(prefetch_env, false, cpu::l1_data_bytes(), &prefetch_valid);
  ALEM_CHECK(prefetch_valid, "ALEM_CPU_PREFETCH must be auto, static, all, heavy or none, got '" +
                                 std::string(prefetch_env ? prefetch_env : "") + "'");
  // ALEM_CPU_BF16_CODED=0 keeps bf16 weights plain (16 bits) instead of coding their exponents
  // (12 bits, lossless; on AVX-512 only).
  const char* coded_env = std::getenv("ALEM_CPU_BF16_CODED");
  const std::string coded = coded_env && *coded_env ? coded_env : "1";
  ALEM_CHECK(coded == "0" || coded == "1",
             "ALEM_CPU_BF16_CODED must be 0 or 1, got '" + coded + "'");
  auto backend = std::make_unique<CpuBackend>(isa, 0, dot != "0", dot == "all", amx == "1");
  backend->set_interleave_blocks(interleave == "1");
  backend->set_code_bf16(coded == "1");
  return backend;
}

void CpuBackend::rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
                         float* y) const {
  const int threads = threads_for(static_cast<double>(M) * D * 8, max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [m0, m1] = split_range(M, count, index, 1);
    kernels_.rmsnorm_rows(x, gamma, m0, m1, D, eps, y);
  });
}

void CpuBackend::rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
                      const RopeTable& table) const {
  const int half = head_dim / 2;
  ALEM_CHECK(table.half_dim == half, "rope table half_dim does not match head_dim");
  for (int64_t t = 0; t < T; ++t) {
    ALEM_CHECK(positions[t] >= 0 && positions[t] < table.max_positions,
               "rope position " + std::to_string(positions[t]) + " outside the table");
  }
  const int threads = threads_for(static_cast<double>(T) * num_heads * head_dim * 4, max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [t0, t1] = split_range(T, count, index, 1);
    for (int64_t t = t0; t < t1; ++t) {
      const float* cos_row = table.cos.data() + static_cast<size_t>(positions[t]) * half;
      const float* sin_row = table.sin.data() + static_cast<size_t>(positions[t]) * half;
      for (int h = 0; h < num_heads; ++h) {
        float* first = x + (t * num_heads + h) * head_dim;
        float* second = first + half;
#pragma omp simd
        for (int i = 0; i < half; ++i) {
          const float a = first[i], b = second[i];
          first[i] = a * cos_row[i] - b * sin_row[i];
          second[i] = b * cos_row[i] + a * sin_row[i];
        }
      }
    }
  });
}

void CpuBackend::silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const {
  const int threads = threads_for(static_cast<double>(M) * I * 16, max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [m0, m1] = split_range(M, count, index, 1);
    kernels_.silu_mul_rows(gate_up, m0, m1, I, out);
  });
}

void CpuBackend::add_inplace(float* y, const float* x, int64_t n) const {
  const int threads = threads_for(static_cast<double>(n), max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [i0, i1] = split_range(n, count, index, 16);
    kernels_.add_range(y, x, i0, i1);
  });
}

void CpuBackend::copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                         size_t row_bytes, size_t rows) const {
  ALEM_CHECK(row_bytes <= dst_pitch && row_bytes <= src_pitch, "copy_2d: rows wider than pitch");
  // About a byte per multiply-add's worth of work: copies under 256 KiB stay on one thread.
  const int threads = threads_for(static_cast<double>(rows) * row_bytes, max_threads_);
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  run_on_threads(threads, [&](int index, int count) {
    const auto [r0, r1] = split_range(static_cast<int64_t>(rows), count, index, 1);
    for (int64_t r = r0; r < r1; ++r) std::memcpy(d + r * dst_pitch, s + r * src_pitch, row_bytes);
  });
}

void CpuBackend::kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                                int num_seqs, const float* k, const float* v,
                                KVCacheLayerView cache) const {
  ALEM_CHECK(shape.block_size > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0,
             "kv_cache_write: bad attention shape");
  check_kv_cache_dtype(cache.dtype);
  const int64_t row_width = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  const bool bf16 = cache.dtype == DType::BF16;
  // Row i of a sequence into its cache slot.
  const auto write_row = [&](const AttentionSequence& seq, int64_t i) {
    const int64_t pos = static_cast<int64_t>(seq.start_pos) + i;
    const int64_t slot =
        static_cast<int64_t>(seq.block_table[pos / shape.block_size]) * shape.block_size +
        pos % shape.block_size;
    const int64_t row = seq.q_begin + i;
    const float* k_row = k + row * row_width;
    const float* v_row = v + row * row_width;
    if (bf16) {  // round to nearest even, as f32_to_bf16 (NaN stays NaN)
      uint16_t* k_dst = static_cast<uint16_t*>(cache.k) + slot * row_width;
      uint16_t* v_dst = static_cast<uint16_t*>(cache.v) + slot * row_width;
      for (int64_t e = 0; e < row_width; ++e) {
        k_dst[e] = f32_to_bf16(k_row[e]);
        v_dst[e] = f32_to_bf16(v_row[e]);
      }
      return;
    }
    std::memcpy(static_cast<float*>(cache.k) + slot * row_width, k_row, row_width * sizeof(float));
    std::memcpy(static_cast<float*>(cache.v) + slot * row_width, v_row, row_width * sizeof(float));
  };
  // The step's rows, all sequences' in order, split over the threads when there are many.
  int64_t total_rows = 0;
  for (int s = 0; s < num_seqs; ++s) total_rows += seqs[s].q_count;
  const int threads = threads_for(static_cast<double>(total_rows) * row_width * 2, max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [j0, j1] = split_range(total_rows, count, index, 1);
    int64_t first = 0;  // the step's row where sequence s starts
    for (int s = 0; s < num_seqs && first < j1; first += seqs[s].q_count, ++s) {
      const int64_t begin = std::max(j0, first);
      const int64_t end = std::min(j1, first + seqs[s].q_count);
      for (int64_t j = begin; j < end; ++j) write_row(seqs[s], j - first);
    }
  });
}

void CpuBackend::paged_attention(const AttentionShape& shape, const AttentionSequence* seqs,
                                 int num_seqs, const float* q, KVCacheLayerView cache,
                                 float* out) const {
  ALEM_CHECK(shape.num_kv_heads > 0 && shape.num_heads % shape.num_kv_heads == 0,
             "paged_attention: num_heads must be a multiple of num_kv_heads");
  ALEM_CHECK(shape.head_dim > 0 && shape.head_dim <= cpu::kMaxHeadDim,
             "paged_attention: head_dim must be in 1.." + std::to_string(cpu::kMaxHeadDim));
  ALEM_CHECK(shape.block_size > 0, "paged_attention: block_size must be positive");
  check_kv_cache_dtype(cache.dtype);
  // One task per (sequence, kv head, run of query rows); the GQA heads of a kv head share a task
  // so each cache chunk is read once for all of them. A decode row's kv heads share one too.
  const int group = shape.num_heads / shape.num_kv_heads;
  const int rows_per_task = std::max(1, 32 / group);
  struct Task {
    int seq;
    cpu::AttentionWork work;
    double cost;
  };
  std::vector<Task> tasks;
  // A sequence's one row (decode) takes its kv heads together: they walk the cache span by
  // span, each span's rows read once for all. As many as kMaxTaskQueries query vectors allow and
  // about 1 KiB of K and V per key (256 KiB a span, so a span and the next one asked for fit an
  // L2), but two at least. bf16 cache from DRAM, one thread, context 2048 / 8192: Llama-3-8B's
  // 32 / 8 x 128 in tasks of 2 heads 633-723 / 2310-2320 us, of all 8 799-850 / 2779-2979;
  // TinyLlama's f32 cache (32 / 4 x 64) in tasks of 2 349-364 / 1432-1443, of 4 371-391 /
  // 1551-1579; SmolLM2's bf16 cache alike in tasks of its 3 heads (bench/kernel_bench.cc).
  constexpr int kTaskBytesPerKey = 1024;
  const int key_bytes = shape.head_dim * 2 * static_cast<int>(dtype_size(cache.dtype));
  const int heads_per_row_task =
      std::max(1, std::min({shape.num_kv_heads, cpu::kMaxTaskQueries / group,
                            std::max(2, kTaskBytesPerKey / key_bytes)}));
  for (int s = 0; s < num_seqs; ++s) {
    for (int r0 = 0; r0 < seqs[s].q_count; r0 += rows_per_task) {
      const int r1 = std::min(seqs[s].q_count, r0 + rows_per_task);
      const int64_t context = static_cast<int64_t>(seqs[s].start_pos) + r1;
      const int heads_per_task = r1 - r0 == 1 ? heads_per_row_task : 1;
      for (int h = 0; h < shape.num_kv_heads; h += heads_per_task) {
        const int heads = std::min(heads_per_task, shape.num_kv_heads - h);
        tasks.push_back({s,
                         {h, r0, r1, 0, context, nullptr, heads, {}},
                         double(r1 - r0) * context * group * heads});
      }
    }
  }
  // Too few tasks for the threads (decode of a few sequences): split long key ranges
  // (flash-decoding); each piece writes partial softmax state that is merged afterwards.
  struct Split {
    int seq;
    cpu::AttentionWork whole;
    size_t first_piece, pieces;
  };
  std::vector<Split> splits;
  std::vector<float> partials;
  const size_t record = cpu::kPartialExtra + shape.head_dim;
  constexpr int64_t kMinKeysPerPiece = 256;
  if (max_threads_ > 1 && !tasks.empty() && tasks.size() < 2 * static_cast<size_t>(max_threads_)) {
    // Two pieces per thread: a piece of several spans keeps its prefetches running from span
    // to span (AttentionWork), and its tasks cost alike (one decode row's kv heads together).
    // SmolLM2's and TinyLlama's shapes, context 2048 and 8192, two threads, 2-7% faster than
    // four pieces per thread (bench/kernel_bench.cc, "decode").
    const size_t wanted = (2 * max_threads_ + tasks.size() - 1) / tasks.size();
    std::vector<Task> split_tasks;
    std::vector<size_t> partial_offsets;  // per split task, into `partials`
    size_t partial_floats = 0;
    for (const Task& t : tasks) {
      const int64_t keys = t.work.key_end;
      const size_t pieces = std::min<size_t>(wanted, keys / kMinKeysPerPiece);
      if (pieces < 2) {
        split_tasks.push_back(t);
        partial_offsets.push_back(SIZE_MAX);
        continue;
      }
      splits.push_back({t.seq, t.work, split_tasks.size(), pieces});
      const size_t queries =
          static_cast<size_t>(t.work.row_end - t.work.row_begin) * group * t.work.kv_heads;
      for (size_t p = 0; p < pieces; ++p) {
        Task piece = t;
        piece.work.key_begin = static_cast<int64_t>(keys * p / pieces) / 16 * 16;
        piece.work.key_end =
            p + 1 == pieces ? keys : static_cast<int64_t>(keys * (p + 1) / pieces) / 16 * 16;
        piece.cost = t.cost / pieces;
        split_tasks.push_back(piece);
        partial_offsets.push_back(partial_floats);
        partial_floats += queries * record;
      }
    }
    partials.resize(partial_floats);
    for (size_t i = 0; i < split_tasks.size(); ++i) {
      if (partial_offsets[i] != SIZE_MAX)
        split_tasks[i].work.partial = partials.data() + partial_offsets[i];
    }
    tasks.swap(split_tasks);
  }
  std::vector<size_t> order(tasks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tasks[a].cost > tasks[b].cost; });
  double total_cost = 0;
  for (const Task& t : tasks) total_cost += t.cost;
  const int threads = threads_for(total_cost * shape.head_dim * 2, max_threads_);
  const int64_t task_count = static_cast<int64_t>(tasks.size());
  // Dynamic scheduling, each thread holding the task after its current one, so the current one
  // can ask for that one's first cache rows while it computes (AttentionWork::next): a serving
  // step's decode tasks are short, and each would otherwise start from memory.
  std::atomic<int64_t> claimed{0};
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    int64_t current = claimed.fetch_add(1, std::memory_order_relaxed);
    while (current < task_count) {
      const int64_t following = claimed.fetch_add(1, std::memory_order_relaxed);
      const Task& t = tasks[order[current]];
      cpu::AttentionWork work = t.work;
      if (following < task_count) {
        const Task& n = tasks[order[following]];
        const int64_t n_context = std::min<int64_t>(
            n.work.key_end, static_cast<int64_t>(seqs[n.seq].start_pos) + n.work.row_end);
        work.next = {seqs[n.seq].block_table, n.work.kv_head, n.work.kv_heads, n.work.key_begin,
                     n_context};
      }
      kernels_.attention(shape, seqs[t.seq], work, q, cache, out);
      current = following;
    }
  }
  // Merge split pieces: out = sum_p acc_p e^(m_p - M) / sum_p l_p e^(m_p - M), M = max_p m_p.
  const int64_t row_stride = static_cast<int64_t>(shape.num_heads) * shape.head_dim;
  for (const Split& sp : splits) {
    const int per_row = group * sp.whole.kv_heads;  // records of one row
    const int queries = (sp.whole.row_end - sp.whole.row_begin) * per_row;
    for (int qi = 0; qi < queries; ++qi) {
      float global_max = -INFINITY;
      for (size_t p = 0; p < sp.pieces; ++p) {
        global_max = std::max(global_max, tasks[sp.first_piece + p].work.partial[qi * record]);
      }
      const int row = sp.whole.row_begin + qi / per_row;
      const int head = sp.whole.kv_head * group + qi % per_row;
      float* o = out + (seqs[sp.seq].q_begin + row) * row_stride +
                 static_cast<int64_t>(head) * shape.head_dim;
      std::fill(o, o + shape.head_dim, 0.f);
      double denominator = 0;
      for (size_t p = 0; p < sp.pieces; ++p) {
        const float* rec = tasks[sp.first_piece + p].work.partial + qi * record;
        if (rec[0] == -INFINITY) continue;  // no visible keys in this piece
        const float weight = std::exp(rec[0] - global_max);
        denominator += static_cast<double>(rec[1]) * weight;
#pragma omp simd
        for (int d = 0; d < shape.head_dim; ++d) o[d] += rec[cpu::kPartialExtra + d] * weight;
      }
      const float inv = static_cast<float>(1.0 / denominator);
#pragma omp simd
      for (int d = 0; d < shape.head_dim; ++d) o[d] *= inv;
    }
  }
}

void CpuBackend::sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                                     SamplingCandidates& out) const {
  start_sampling_candidates(rows, vocab, k, out);
  if (rows == 0) return;
  // About ten operations per logit (two passes, a double exp per entry).
  const int threads = static_cast<int>(
      std::min<int64_t>(rows, threads_for(10.0 * static_cast<double>(rows) * vocab, max_threads_)));
  run_on_threads(threads, [&](int index, int count) {
    const auto [r0, r1] = split_range(rows, count, index, 1);
    fill_sampling_candidates(logits, r0, r1, vocab, k, kernels_.logit_row_stats, out);
  });
}

void CpuBackend::embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens,
                           int64_t T, float* out) const {
  const int64_t D = table.cols;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t local = static_cast<int64_t>(tokens[t]) - row_begin;
    float* o = out + t * D;
    if (local < 0 || local >= table.rows) {
      std::memset(o, 0, static_cast<size_t>(D) * sizeof(float));
      continue;
    }
    const int64_t base = local * D;
    switch (table.dtype) {
      case DType::F32:
        std::memcpy(o, table.data.as<float>() + base, static_cast<size_t>(D) * sizeof(float));
        break;
      case DType::BF16: {
        if (table.layout == BlockLayout::kBf16Coded) {
          dequantize_row(table, local, o);
          break;
        }
        const uint16_t* src = table.data.as<uint16_t>() + base;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = bf16_to_f32(src[d]);
        break;
      }
      case DType::F16: {
        const uint16_t* src = table.data.as<uint16_t>() + base;
        for (int64_t d = 0; d < D; ++d) o[d] = f16_to_f32(src[d]);
        break;
      }
      case DType::I8: {
        if (is_interleaved8(table.layout)) {
          dequantize_row(table, local, o);
          break;
        }
        const int8_t* src = table.data.as<int8_t>() + base;
        const float* scales = table.scales.data() + local * table.groups_per_row();
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] = src[d] * scales[d / kInt8GroupSize];
        break;
      }
      default:  // ggml block types
        dequantize_row(table, local, o);
        break;
    }
  }
}

}  // namespace alem
