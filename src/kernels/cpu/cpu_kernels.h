// Internal contract between the CPU backend's driver (cpu_backend.cc: threading, work split,
// dispatch) and its instruction-set-specific kernels (*_avx512.cc, *_avx2.cc, *_scalar.cc).
// Each ISA provides the same functions in its own namespace; the driver picks one table at run
// time. Kernel files use raw pointers only (no std containers or other shared inline code), so
// code compiled with AVX-512 flags can never be linked into a path that runs on a lesser CPU.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/backend.h"
#include "model/bf16_coded.h"

namespace alem::cpu {

// kAvxVnni: AVX2 with a 256-bit vpdpbusd, the AVX-VNNI of Intel's Alder Lake and later
// clients, Sierra Forest and AMD's Zen 5 (or AVX512-VNNI with AVX512-VL, whose EVEX form of the
// instruction computes the same): AVX2's kernels but for the block weights' byte dot products
// (block_kernels). Ordered from the least to the most capable, but the values are names only.
enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvxVnni = 3 };

// The widest instruction set this CPU and this build can run (AVX-512 needs F, BW, VL, DQ).
Isa best_supported_isa();
// The instruction set the engine's CPU backend runs: best_supported_isa(), lowered by
// ALEM_CPU_ISA=avx_vnni|avx2|scalar (benchmarks, debugging; an unknown or unsupported value
// throws).
Isa configured_isa();
bool isa_supported(Isa isa);
const char* isa_name(Isa isa);
// The register width's family: kAvxVnni runs AVX2's vector kernels (kAvx2), the others their own.
inline Isa vector_isa(Isa isa) {
  return isa == Isa::kAvxVnni ? Isa::kAvx2 : isa;
}
// The CPU's own AVX-VNNI (VEX encoding); without it kAvxVnni takes the EVEX encoding.
bool has_avx_vnni();

// How far ahead of its reads a decode kernel prefetches the weights, which it reads as one
// sequential stream, and into which cache: every line twice, into the L2 (prefetcht1) far
// ahead, where the L2's queue holds more misses in flight than the L1's fill buffers, and from
// there into the L1 (prefetcht0) nearer, so the loads find it in the L1. On an Intel Xeon
// (Emerald Rapids), one core reading 17.6-18.0 GB/s, the 1.1B gate+up matmul at Q8_0 streamed
// 14.0-14.3 GB/s with the L1 form alone, 15.4-15.5 with the L2 form alone and 16.6-18.3 with
// both; the L1 form 17 KB ahead gained nothing (docs/kernels-decode-streams.md).
constexpr int kStreamPrefetchBytes = 17280;
constexpr int kStreamL1PrefetchBytes = 5760;

// Which decode streams prefetch, fixed for the process when it starts (kernel_support.cc). A
// light stream has little arithmetic per byte: bf16 (f16, f32) weights, or interleaved Q8_0
// and int8, against one row of x. On an AMD Zen 4 the hardware prefetchers alone ran it faster
// (1.1B decode at one thread: Q8_0 +24%, bf16 dot products +25%); on an Intel Xeon these prefetches
// gave its last 10-20%, on an AMD Zen 5 3-4%, on an AMD Zen 3 (AVX2) Q8_0 30-35% (amd_zen4). A
// heavy stream keeps its kernel busy between loads: 4- to 6-bit weights it unpacks (Q4_0, Q4_1, the
// K-quants), row-major int8 against 16-bit activations, or several rows of x on every weight.
// Without the prefetches its loads wait: on the Zen 4, Q4_0 decode ran 17% slower, Q4_K_M 48%, bf16
// at 2 to 4 rows of x 30-40% (docs/kernels-decode-streams.md). Which way a light stream goes also
// moved with the host and the day (the same Zen 4 model, SmolLM2's bf16 decode: +17% without in
// one session, +10-40% with in a later one), so by default the backend measures it per class of
// matrix at run time (`tuned`, cpu::LightPrefetchTuner). ALEM_CPU_PREFETCH: auto (the CPU's rule
// below, light streams tuned), static (the rule alone), all, heavy or none.
enum class StreamKind : int { kLight, kHeavy };
struct StreamPrefetch {
  bool light = true;
  bool heavy = true;
  // A light stream whose kernel re-reads more than this many bytes of x for every weight row
  // prefetches as a heavy one (when heavy streams do). x then no longer stays in the L1 beside
  // the stream (the default is half the L1 data cache; SIZE_MAX: never). On the Zen 4 (32 KiB
  // L1), the exact bf16 decode of the 1.1B shape's down projection, whose f32 x takes 22 KiB,
  // read 16-24 GB/s of DRAM without the prefetches and 28-35 with them, while its other
  // matrices (8 KiB of x) ran 10-20% slower with them (docs/kernels-decode-streams.md).
  size_t light_x_bytes = SIZE_MAX;
  // Light streams at one row of x take whichever of on and off measured faster for their class
  // of matrix (CpuBackend::matmul with cpu::LightPrefetchTuner); the fields above are the rule
  // they start from.
  bool tuned = false;
};
extern const StreamPrefetch stream_prefetch;

// The light-stream choice of the matmul this thread runs now: the process setting
// (stream_prefetch), or on or off as the backend's tuner picked it for the matrix's class. The
// backend sets it around one matmul (ScopedLightPrefetch) and run_on_threads carries it into the
// worker threads. constinit: no initialisation wrapper on the kernels' per-block reads.
enum class LightPrefetch : signed char { kSetting = -1, kOff = 0, kOn = 1 };
extern constinit thread_local LightPrefetch light_prefetch_now;
class ScopedLightPrefetch {
 public:
  explicit ScopedLightPrefetch(LightPrefetch choice) : saved_(light_prefetch_now) {
    light_prefetch_now = choice;
  }
  ~ScopedLightPrefetch() { light_prefetch_now = saved_; }
  ScopedLightPrefetch(const ScopedLightPrefetch&) = delete;
  ScopedLightPrefetch& operator=(const ScopedLightPrefetch&) = delete;

 private:
  LightPrefetch saved_;
};

// Whether the CPU's vendor (CPUID leaf 0) is AMD: the exact bf16 GEMM threshold measured on a
// Zen 4 that differs from an Intel Xeon's (CpuBackend::packed_min_rows_bf16).
bool vendor_is_amd();
// Whether it is an AMD Zen 4 (CPUID family 19h, a Zen 4 model: amd_zen4_model), whose hardware
// prefetchers alone ran light decode streams faster. Elsewhere the software prefetches won, as on
// Intel's Xeons. On a Zen 5 (family 1Ah, model 2), 1.1B decode at one thread, 3 alternating
// rounds: Q8_0 27.9-28.8 -> 29.1-30.2 tokens/s, bf16 15.2-16.0 -> 16.0-16.5. On a Zen 3 (family
// 19h, model 1: AVX2, 32 KiB L1, 512 KiB L2), two alternating rounds: Q8_0 10.3-10.7 -> 13.8-14.4
// (kernel bench: 15-16 -> 21-22 GB/s against a plain read's 17-19), bf16 8.0-8.2 -> 8.3-8.6.
bool amd_zen4();
// Whether an AMD CPU of this displayed family and model is a Zen 4: family 19h, models 10-1Fh,
// 60-7Fh or A0-AFh (its other models are Zen 3 cores).
bool amd_zen4_model(unsigned family, unsigned model);
// The displayed CPU family of CPUID leaf 1's eax: the base family, plus the extended family where
// the base is 0xF (0x19 on a Zen 3 or Zen 4, 0x1A on a Zen 5, 6 on Intel's Xeons).
unsigned cpuid_display_family(unsigned eax);
// The displayed model: the base model, plus the extended model times 16 where the base family is
// 6 or 0xF (0x11 on an EPYC 9004, 0x01 on an EPYC 7003).
unsigned cpuid_display_model(unsigned eax);

// The setting for an ALEM_CPU_PREFETCH value: "all", "heavy", "none"; "static": the CPU's rule
// (`amd_zen4`: heavy, and light streams past `l1_bytes` / 2 of x; otherwise all); "auto", empty
// or null: that rule with light streams tuned at run time. `valid` is false for anything else
// (and the default).
StreamPrefetch stream_prefetch_setting(const char* value, bool amd_zen4, size_t l1_bytes,
                                       bool* valid);
// "all", "heavy", "none", or "heavy+wide-x" (the rule on AMD's Zen 4), with ", light tuned"
// where the tuner picks the light streams' setting.
std::string stream_prefetch_name(StreamPrefetch setting);
// The L1 data cache of this CPU in bytes (sysconf; 32 KiB where it says nothing).
size_t l1_data_bytes();

// The kind of a decode stream of bf16 or Q8_0 weights against `rows_of_x` rows of x.
constexpr StreamKind wide_weights_stream(int rows_of_x) {
  return rows_of_x == 1 ? StreamKind::kLight : StreamKind::kHeavy;
}
// Whether weights of `dtype` against one row of x are a light stream in every kernel that takes
// them: the dense types and the 32-value int8 blocks (Q8_0, alem's int8). The prefetch tuner
// measures only these (CpuBackend::tunes_light_prefetch).
constexpr bool one_row_stream_is_light(DType dtype) {
  return dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::I8 ||
         dtype == DType::Q8_0;
}

// Whether a stream of `kind` prefetches, its kernel re-reading `x_bytes` of x for every weight
// row (row-at-a-time kernels; the interleaved block kernels re-read x once per 8 rows and pass
// 0). Kernels ask once per call, before their loops.
[[gnu::always_inline]] inline bool stream_prefetches(StreamKind kind, size_t x_bytes) {
  if (kind == StreamKind::kHeavy) return stream_prefetch.heavy;
  const LightPrefetch now = light_prefetch_now;
  if (now != LightPrefetch::kSetting) return now == LightPrefetch::kOn;
  return stream_prefetch.light ||
         (stream_prefetch.heavy && x_bytes > stream_prefetch.light_x_bytes);
}

// Prefetches the lines kStreamPrefetchBytes (into the L2) and kStreamL1PrefetchBytes (into the
// L1) past `here`, the 64 bytes a stream reads now, where `enabled` (stream_prefetches) says so.
// Each is an asm volatile, which the compiler neither moves nor merges (GCC gathered a loop's
// _mm_prefetch calls at its start, and a burst of 18 to 27 misses measured as slow as none).
// Always inlined: a copy compiled with one ISA's flags must not be shared with another's (top).
[[gnu::always_inline]] inline void prefetch_stream(bool enabled, const void* here) {
  if (!enabled) return;
  const char* p = static_cast<const char*>(here);
  asm volatile("prefetcht1 %0" : : "m"(p[kStreamPrefetchBytes]));
  asm volatile("prefetcht0 %0" : : "m"(p[kStreamL1PrefetchBytes]));
}
// pair_prefetch_offset: how far past `here` (in_group bytes into the first group) the first
// stream's line `ahead` bytes on is asked for; the second stream's is gap bytes further. For
// groups of `ahead` bytes or more that is where the same stream reads `ahead` bytes later (in
// its group, or in the next pair's matching one). Shorter groups (SmolLM2's, 2.6-6.9 KB at Q4_0)
// skip one group too, not one per group passed: the exact aim, further ahead, ran slower there
// (AMD Zen 4, one thread, SmolLM2 Q4_0 decode 341-362 -> 327-329 tokens/s; LM head 507-545 ->
// 547-564 us).
constexpr size_t pair_prefetch_offset(size_t ahead, size_t gap, size_t in_group) {
  return ahead + (in_group + ahead >= gap ? gap : 0);
}
// As prefetch_stream, for two streams read side by side, `here` and `here + gap`: two groups of
// interleaved weight rows (model/interleaved_blocks.h) whose next pair starts 2 x gap on,
// `in_group` bytes into the first group. Each stream's lines are asked for half as far ahead as one
// stream's (the same bytes in flight), and where that passes the end of its group, in the next
// pair's matching group rather than in the other stream's bytes, which that one has read by then.
// Aimed as one stream's, the first stream's lines fell in the second group and the next pair's
// second group came unasked: AMD Zen 4, Q4_0 at one row of x from DRAM, one thread, two groups per
// register read 21-29 GB/s so, 31-35 aimed here.
[[gnu::always_inline]] inline void prefetch_stream_pair(bool enabled, const void* here, size_t gap,
                                                        size_t in_group) {
  if (!enabled) return;
  constexpr size_t kL2Ahead = kStreamPrefetchBytes / 2, kL1Ahead = kStreamL1PrefetchBytes / 2;
  const char* p = static_cast<const char*>(here);
  const char* l2 = p + pair_prefetch_offset(kL2Ahead, gap, in_group);
  const char* l1 = p + pair_prefetch_offset(kL1Ahead, gap, in_group);
  asm volatile("prefetcht1 %0" : : "m"(*l2));
  asm volatile("prefetcht0 %0" : : "m"(*l1));
  asm volatile("prefetcht1 %0" : : "m"(l2[gap]));
  asm volatile("prefetcht0 %0" : : "m"(l1[gap]));
}
// The same for a stream of `kind` whose x stays in the L1 (x_bytes 0).
template <StreamKind kind>
[[gnu::always_inline]] inline void prefetch_stream(const void* here) {
  prefetch_stream(stream_prefetches(kind, 0), here);
}

// Per-thread scratch memory for the kernels, which may not hold std containers themselves: at
// least `bytes`, 64-byte aligned, one buffer per slot and thread, kept (and grown, never shrunk)
// for the thread's life; its contents are the caller's until its next call with the same slot.
// Throws std::bad_alloc. Defined in kernel_support.cc, built without ISA flags.
enum class ScratchSlot : int {
  kPermutedX,     // bf16 decode: x in even/odd order
  kSplitXBytes,   // interleaved block kernels: x split into bytes,
  kSplitXSums,    //   its per-block sums,
  kSplitXScales,  //   its 8-bit scales,
  kSplitXRows,    //   and one record per row of x
  kPairedX,       // row-major block kernels at one row of x: x in pairs
  kRebuiltRow,    // dequantisation: one row in ggml's form
  kTileCodes,     // AMX int8 GEMM: a panel's B tiles,
  kTileScales,    //   its scales,
  kTileMinimums,  //   and its minimums
  kCodedRows,     // coded bf16 weights: a tile of rows unpacked to bf16,
  kCodedY,        //   its rows of y,
  kCodedX,        //   and x at one row of x (permuted, or rounded to bf16)
  kCount
};
void* thread_scratch(ScratchSlot slot, size_t bytes);

// Columns per chunk of a packed GEMM (whole panels of `panel_cols`): the chunk's f32 partial
// sums for `rows` rows of x, re-read at every k tile, stay within kGemmChunkBytes, a part of any
// x86 L2. Without chunks an 11264-column matrix's sums (2.9 MB at 64 rows) left the L2 of an
// Intel Xeon at every k tile: 96-100 GFLOP/s against 131 for 2048 columns (docs/kernels.md).
constexpr int64_t kGemmChunkBytes = 256 * 1024;
inline int64_t gemm_chunk_cols(int64_t rows, int64_t panel_cols) {
  const int64_t panels = kGemmChunkBytes / (rows * 4 * panel_cols);
  return (panels > 1 ? panels : 1) * panel_cols;
}

// A weight matrix as raw pointers: [rows][cols] of dtype; I8 adds scales[rows][cols / 32].
struct WeightView {
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const void* data = nullptr;
  const float* scales = nullptr;
  BlockLayout layout = BlockLayout::kRowMajor;  // block types: how `data` lies
};
WeightView view_of(const WeightMatrix& w);

// y[m][n] (row stride w.rows) for m < M, n in [n_begin, n_end), streaming each weight row once
// and applying it to all M rows of x. Best for small M (decode), where W traffic dominates.
using MatmulStreamFn = void (*)(const float* x, int64_t M, const WeightView& w, const float* bias,
                                float* y, int64_t n_begin, int64_t n_end);
// The same result by packing tiles of W into f32 panels and running a register-blocked
// micro-kernel over rows [m_begin, m_end). Best for prefill (compute-bound).
using MatmulPackedFn = void (*)(const float* x, int64_t m_begin, int64_t m_end, const WeightView& w,
                                const float* bias, float* y, int64_t n_begin, int64_t n_end);
// One unit of attention work: query rows [row_begin, row_end) of a sequence (relative to its
// q_begin), every query head that reads kv heads [kv_head, kv_head + kv_heads), against cache
// positions [key_begin, key_end) intersected with each row's causal range [0, start_pos + row].
// kv_heads > 1 only for one row (decode), with kv_heads x the GQA group at most
// kMaxTaskQueries: the heads then walk the cache together, span by span, so each span's cache
// rows are read from memory once for all of them, and each head's pass asks for its share of
// the next span's rows (the memory traffic spread over the whole task, not one head's pass).
// With partial == nullptr the kernel writes normalised rows to `out`. Otherwise (the key range
// of a long context split across threads) it writes one record per query vector, ordered by
// row, then kv head, then GQA head, of kPartialExtra + head_dim floats: running max, running
// sum, then the unnormalised accumulator; CpuBackend::paged_attention merges them.
// `next`, when its block_table is set, names the cache rows the thread's next task reads first:
// a task of several kv heads spreads asking for them (into L2) over its last span's passes, as
// it does a span ahead within itself, so a serving step's short decode tasks (one sequence's
// keys each) do not each start from memory.
struct AttentionLookahead {
  const int32_t* block_table = nullptr;
  int kv_head = 0, kv_heads = 0;
  int64_t key_begin = 0, key_end = 0;  // its keys (the kernel asks for their first span)
};
struct AttentionWork {
  int kv_head = 0;
  int row_begin = 0, row_end = 0;
  int64_t key_begin = 0, key_end = 0;
  float* partial = nullptr;
  int kv_heads = 1;
  AttentionLookahead next;
};
constexpr int kMaxTaskQueries = 32;
constexpr int kPartialExtra = 2;

using AttentionFn = void (*)(const AttentionShape& shape, const AttentionSequence& seq,
                             const AttentionWork& work, const float* q, KVCacheLayerView cache,
                             float* out);

struct KernelTable {
  Isa isa = Isa::kScalar;
  MatmulStreamFn matmul_stream = nullptr;
  MatmulPackedFn matmul_packed = nullptr;
  int packed_panel_cols = 1;  // W rows per packed panel; thread splits align to it
  AttentionFn attention = nullptr;
  // Element-wise rows (elementwise_kernel.inc): SiLU(gate) * up, RMSNorm, y += x.
  void (*silu_mul_rows)(const float* gate_up, int64_t m_begin, int64_t m_end, int64_t I,
                        float* out) = nullptr;
  void (*rmsnorm_rows)(const float* x, const float* gamma, int64_t m_begin, int64_t m_end,
                       int64_t D, float eps, float* y) = nullptr;
  void (*add_range)(float* y, const float* x, int64_t begin, int64_t end) = nullptr;
  // Sampling statistics of a logit row: sampling_avx512.cc, sampling_avx2.cc, or the portable
  // alem::logit_row_stats.
  LogitRowStatsFn logit_row_stats = nullptr;
  // bf16 weights with coded exponents (model/bf16_coded.h; matmul_coded_avx512.cc and
  // matmul_coded_avx2.cc), null where the ISA has no kernels for them (scalar). unpack_coded_rows
  // writes rows [r0, r0 + rows) as plain bf16 (row stride w.cols), exactly the values that were
  // coded. matvec_coded is the exact decode matmul at M <= kCodedMaxRows rows of x: y[m][n] (row
  // stride w.rows) for n in [n_begin, n_end), x in f32 both as it is and in
  // permute_x_for_coded's order (M x K values each, 64-byte aligned).
  void (*unpack_coded_rows)(const Bf16CodedView& w, int64_t r0, int64_t rows,
                            uint16_t* out) = nullptr;
  void (*permute_x_for_coded)(const float* x, int64_t M, int64_t K, float* out) = nullptr;
  void (*matvec_coded)(const float* x_permuted, const float* x, int64_t M, const Bf16CodedView& w,
                       const float* bias, float* y, int64_t n_begin, int64_t n_end) = nullptr;
};

// Rows of x the coded kernels' matvec_coded takes at most (KernelTable).
constexpr int64_t kCodedMaxRows = 4;
// The most bytes of f32 x (rows x K x 4) that the AVX-512 exact bf16 kernels feed from one plain
// weight row at a time (2-4 rows of x; matmul_avx512.cc): beyond it x no longer stays in the L1
// beside the weights, and 4 weight rows side by side, which share each x load, run ahead. On the
// Zen 5 (1.1B shape, one thread, GFLOP/s): the down matrix (K = 5632) at 2, 3 and 4 rows of x
// 39-47 -> 60, 43-44 -> 90-91 and 47 -> 118-125; K = 2048 at 4 rows (32 KiB of x) 77-108 ->
// 120-140, at 3 rows level.
constexpr int64_t kOneWeightRowMaxXBytes = 24 * 1024;

// Largest head_dim the attention kernels accept (they keep per-query accumulators on the stack).
constexpr int kMaxHeadDim = 256;

namespace scalar {
void silu_mul_rows(const float* gate_up, int64_t m_begin, int64_t m_end, int64_t I, float* out);
void rmsnorm_rows(const float* x, const float* gamma, int64_t m_begin, int64_t m_end, int64_t D,
                  float eps, float* y);
void add_range(float* y, const float* x, int64_t begin, int64_t end);
void matmul_stream(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                   int64_t n_begin, int64_t n_end);
void matmul_packed(const float* x, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
void attention(const AttentionShape& shape, const AttentionSequence& seq, const AttentionWork& work,
               const float* q, KVCacheLayerView cache, float* out);
}  // namespace scalar

namespace avx2 {
void logit_row_stats(const float* x, int64_t n, LogitRowStats* out);
void silu_mul_rows(const float* gate_up, int64_t m_begin, int64_t m_end, int64_t I, float* out);
void rmsnorm_rows(const float* x, const float* gamma, int64_t m_begin, int64_t m_end, int64_t D,
                  float eps, float* y);
void add_range(float* y, const float* x, int64_t begin, int64_t end);
constexpr int kPanelCols = 16;
void matmul_stream(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                   int64_t n_begin, int64_t n_end);
void matmul_packed(const float* x, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
void attention(const AttentionShape& shape, const AttentionSequence& seq, const AttentionWork& work,
               const float* q, KVCacheLayerView cache, float* out);
// bf16 weights with coded exponents (matmul_coded_avx2.cc): KernelTable's coded kernels.
void unpack_coded_rows(const Bf16CodedView& w, int64_t r0, int64_t rows, uint16_t* out);
void permute_x_for_coded(const float* x, int64_t M, int64_t K, float* out);
void matvec_coded(const float* x_permuted, const float* x, int64_t M, const Bf16CodedView& w,
                  const float* bias, float* y, int64_t n_begin, int64_t n_end);
}  // namespace avx2

namespace avx512 {
void logit_row_stats(const float* x, int64_t n, LogitRowStats* out);
void silu_mul_rows(const float* gate_up, int64_t m_begin, int64_t m_end, int64_t I, float* out);
void rmsnorm_rows(const float* x, const float* gamma, int64_t m_begin, int64_t m_end, int64_t D,
                  float eps, float* y);
void add_range(float* y, const float* x, int64_t begin, int64_t end);
constexpr int kPanelCols = 48;
void matmul_stream(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                   int64_t n_begin, int64_t n_end);
void matmul_packed(const float* x, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
void attention(const AttentionShape& shape, const AttentionSequence& seq, const AttentionWork& work,
               const float* q, KVCacheLayerView cache, float* out);
// Rows [n0, n0 + rows) of ggml block weights as f32 (row stride w.cols), bit-for-bit what
// dequantize_ggml gives: Q4_0, Q4_1 and Q8_0 vectorised, other types through dequantize_ggml.
void dequantize_block_rows(const WeightView& w, int64_t n0, int rows, float* out);
// bf16 weights with coded exponents (matmul_coded_avx512.cc): KernelTable's coded kernels.
void unpack_coded_rows(const Bf16CodedView& w, int64_t r0, int64_t rows, uint16_t* out);
// matmul_stream's exact bf16 kernel split in two, for a caller that runs it on many tiles of
// rows: x (M x K, K % 32 == 0) permuted once (64-byte aligned out), then the kernel on it.
void permute_x_even_odd(const float* x, int64_t M, int64_t K, float* out);
void stream_bf16_permuted(const float* xp, int64_t M, const WeightView& w, const float* bias,
                          float* y, int64_t n_begin, int64_t n_end);
void permute_x_for_coded(const float* x, int64_t M, int64_t K, float* out);
void matvec_coded(const float* x_permuted, const float* x, int64_t M, const Bf16CodedView& w,
                  const float* bias, float* y, int64_t n_begin, int64_t n_end);
}  // namespace avx512

KernelTable kernel_table(Isa isa);

// Activations quantised for the int8-weight dot-product kernels, rows of `stride` values (K
// rounded up to 64, zero-padded): q = round(x / d) in [-32767, 32767] per 32 values with
// d = amax / 32767, split as q = 256 * high + low (high signed, low unsigned); for every 4 values
// (one int32 lane of vpdpbusd) the block's d and -16 * sum(high) of its block (see
// matmul_dot_avx512.cc for why).
struct Q16Activations {
  const int8_t* high = nullptr;
  const uint8_t* low = nullptr;
  const int32_t* lane_offsets = nullptr;
  const float* lane_scales = nullptr;
  int64_t stride = 0;
};

// Whether this CPU has the dot-product instructions the kernels below need (on top of AVX-512).
bool has_avx512_bf16();
bool has_avx512_vnni();

// Decode matmul kernels on native dot products (matmul_dot_avx512.cc). Only called when the
// features above are present. to_bf16 / quantize_q16 prepare rows of x once per matmul.
namespace avx512_dot {
void to_bf16(const float* x, int64_t M, int64_t K, uint16_t* out, int64_t stride);
void quantize_q16(const float* x, int64_t M, int64_t K, int8_t* high, uint8_t* low,
                  int32_t* lane_offsets, float* lane_scales, int64_t stride);
void matmul_bf16(const uint16_t* xb, int64_t M, int64_t stride, const WeightView& w,
                 const float* bias, float* y, int64_t n_begin, int64_t n_end);
void matmul_int8(const Q16Activations& a, int64_t M, const WeightView& w, const float* bias,
                 float* y, int64_t n_begin, int64_t n_end);
// The same at M <= kCodedMaxRowsBf16 rows of x (xb from to_bf16, stride K) for bf16 weights
// with coded exponents (matmul_coded_dot_avx512.cc); more rows take gemm_bf16.
constexpr int64_t kCodedMaxRowsBf16 = 8;
void matvec_coded_bf16(const uint16_t* xb, int64_t M, const Bf16CodedView& w, const float* bias,
                       float* y, int64_t n_begin, int64_t n_end);
// Prefill (matmul_gemm_bf16_avx512.cc). pack_x_pairs lays x (M x K, f32) out as bf16 pairs:
// for every 16 rows of x (zero rows past M) and every 32 values of k (zeros past K), 16 vectors
// of 16 32-bit units, vector i holding (x[m][k + 2i], x[m][k + 2i + 1]) for the 16 rows m. With
// `parts` > 1 x is split into that many bf16 parts, each the bf16 nearest to what the earlier
// ones left (3 carry all 24 bits of an f32), one such layout after another. gemm_bf16 writes
// y[m][n] for all M rows and weight rows [n_begin, n_end) from one part.
inline int64_t packed_pairs_size(int64_t M, int64_t K, int parts) {
  return (M + 15) / 16 * 16 * ((K + 31) / 32 * 32) / 2 * parts;
}
void pack_x_pairs(const float* x, int64_t M, int64_t K, int parts, uint32_t* out);
void gemm_bf16(const uint32_t* xp, int64_t M, const WeightView& w, const float* bias, float* y,
               int64_t n_begin, int64_t n_end);
}  // namespace avx512_dot

// Prefill GEMM for bf16 weights on Intel AMX tiles (matmul_gemm_bf16_amx.cc). usable(): the CPU
// has AMX-BF16 and AVX-512 (with AVX512-BF16) and the kernel granted this process the tile state
// (asked once). x comes packed by avx512_dot::pack_x_pairs (K a multiple of 32) in `parts` bf16
// parts (3: exact to f32 rounding; 1: x rounded to bf16). gemm_bf16 then writes y[m][n] for all
// M rows and weight rows [n_begin, n_end).
namespace amx {
constexpr int64_t kKMultiple = 32;
bool usable();
void gemm_bf16(const uint32_t* xp, int64_t M, int parts, const WeightView& w, const float* bias,
               float* y, int64_t n_begin, int64_t n_end);
// Block-type weights (Q4_0, Q8_0, ...): every 48 weight rows are expanded once per call by
// `dequantize` (rows [n0, n0 + rows) of w as f32, row stride w.cols) and held as two bf16 parts
// (16 significant bits), then multiplied like gemm_bf16 (hi.hi + hi.lo + lo.hi with x in
// `x_parts` parts).
using DequantizeRowsFn = void (*)(const WeightView& w, int64_t n0, int rows, float* out);
void gemm_dequantized(const uint32_t* xp, int64_t M, int x_parts, const WeightView& w,
                      DequantizeRowsFn dequantize, const float* bias, float* y, int64_t n_begin,
                      int64_t n_end);
}  // namespace amx

// Activations for the ggml block-weight kernels (Q4_0, Q4_1, Q8_0, and the K-quants Q4_K, Q5_K,
// Q6_K whose 32- or 16-value sub-blocks line up with these blocks), quantised once per
// matmul in blocks of 32 like ggml's Q8_1 but with 16 bits: every 32 values of a row of x become
// int16 q = round(x / d) with d = amax / 32767 (nearest even, the same in every ISA), plus
// s = d * sum(q) for the Q4_1 minimum term. Row m: q + m * K, d + m * K / 32, s + m * K / 32.
struct Q16Blocks {
  const int16_t* q = nullptr;
  const float* d = nullptr;
  const float* s = nullptr;
  int64_t K = 0;
  // Interleaved weights only (matmul_blocks_interleaved): multiply with x rounded further to 8
  // bits per block (q8 = round(q * 127 / 32767)), ggml's own activation precision, for twice
  // the products per instruction (ALEM_CPU_DOT=all; docs/kernels.md).
  bool eight_bit = false;
};
using QuantizeQ16Fn = void (*)(const float* x, int64_t M, int64_t K, int16_t* q, float* d,
                               float* s);

// Prefill on AMX int8 tiles for interleaved block weights of 32-value blocks (Q4_0, Q4_1, Q5_0,
// Q5_1, Q8_0, IQ4_NL, IQ4_XS, Q4_K, Q5_K and alem's int8; matmul_gemm_int8_amx.cc). Every 16
// weight rows become a panel of B tiles once per call (avx512_vnni::int8_tile_panel, from the
// interleaved form), which every 16 rows of x then meet: per block of 32 one TDPBSSD against x's
// high bytes and one TDPBUSD against its low bytes (none in eight-bit mode), an exact int32
// per block, scaled in f32 as the interleaved VNNI kernels scale it.
namespace amx {
// Per block of 32 values b of 16 weight rows j: codes[b * 512 + 64 r + 4 j + i] is value 4r + i
// of row j as a signed byte (Q4_0's and Q5_0's stored offsets taken off); scales[b * 16 + j] its
// f32 scale; minimums[b * 16 + j] (types with a minimum) the weight of x's block sum. Row j's
// values are then scale * code + minimum.
struct Int8TilePanel {
  int8_t* codes = nullptr;
  float* scales = nullptr;
  float* minimums = nullptr;
};
constexpr bool has_int8_tile_panel(DType dtype) {
  switch (dtype) {
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::IQ4_NL:
    case DType::IQ4_XS:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::I8:
      return true;
    default:
      return false;
  }
}
constexpr bool int8_tile_panel_has_minimum(DType dtype) {
  return dtype == DType::Q4_1 || dtype == DType::Q5_1 || dtype == DType::Q4_K ||
         dtype == DType::Q5_K;
}
// Weight rows [n0, n_end) of interleaved weights (n0 a multiple of 8, n_end - n0 16, or 8 for
// a matrix's last group, whose tile columns 8-15 are then copies) into `panel`.
using Int8TilePanelFn = void (*)(const WeightView& w, int64_t n0, int64_t n_end,
                                 const Int8TilePanel& panel);
// x for the tiles: 16-row blocks (zero rows past M), each row's int16 values split into a
// signed high byte and an unsigned low byte (row stride K; the high byte alone, the value
// rounded to 8 bits, in eight-bit mode), and per 16-row block and block of 32 the 16 rows'
// scales d and sums s ([block][16]).
struct TileActivations {
  int8_t* high = nullptr;
  uint8_t* low = nullptr;
  float* d = nullptr;
  float* s = nullptr;
  int64_t M = 0, K = 0;
  bool eight_bit = false;
};
size_t tile_activation_bytes(int64_t M, int64_t K);
// M rows of K values laid out in `buffer` (tile_activation_bytes, 64-byte aligned); then rows
// [m_begin, m_end) of `a` split into them (rows from M on: the zero padding), so threads can
// split their own rows.
TileActivations tile_activations(int64_t M, int64_t K, bool eight_bit, void* buffer);
void split_rows_for_tiles(const Q16Blocks& a, const TileActivations& x, int64_t m_begin,
                          int64_t m_end);
void gemm_int8(const TileActivations& x, const WeightView& w, Int8TilePanelFn make_panel,
               const float* bias, float* y, int64_t n_begin, int64_t n_end);
}  // namespace amx
// y[m][n] (row stride w.rows) for m in [m_begin, m_end), n in [n_begin, n_end) against block
// weights: each weight block is unpacked once and applied to up to 4 rows of x at a time, the
// products summed exactly in int32 per block and scaled by d_w * d_x in f32.
// (vpdpwssd on AVX512-VNNI, vpmaddwd on AVX2, plain C++ otherwise.)
using MatmulBlocksFn = void (*)(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                int64_t n_end);
struct BlockKernels {
  const char* name = "scalar";
  QuantizeQ16Fn quantize = nullptr;
  MatmulBlocksFn matmul = nullptr;
  // Weights in the 8-row interleaved layout, every block type and int8 (none: this set keeps
  // them row-major).
  MatmulBlocksFn matmul_interleaved = nullptr;
  // Its interleaved kernels multiply on the int8 dot product (vpdpbusd), whose peak the bench
  // measures; AVX2's byte and int16 products count against the f32 FMA peak.
  bool int8_dot = false;
};
// The fastest this CPU runs within `isa`: vpdpwssd and vpdpbusd (AVX512-VNNI) on AVX-512 with
// VNNI, vpmaddwd and vpmaddubsw on AVX2, AVX2's with the interleaved weights on 256-bit vpdpbusd
// on kAvxVnni, else plain C++.
BlockKernels block_kernels(Isa isa);

namespace scalar {
void quantize_q16(const float* x, int64_t M, int64_t K, int16_t* q, float* d, float* s);
void matmul_blocks(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
// The K-quants (Q4_K, Q5_K, Q6_K; matmul_blocks_k_*.cc), which matmul_blocks hands on to.
void matmul_blocks_k(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                     const float* bias, float* y, int64_t n_begin, int64_t n_end);
}  // namespace scalar
namespace avx2 {
void quantize_q16(const float* x, int64_t M, int64_t K, int16_t* q, float* d, float* s);
void matmul_blocks(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
// The K-quants (Q4_K, Q5_K, Q6_K; matmul_blocks_k_*.cc), which matmul_blocks hands on to.
void matmul_blocks_k(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                     const float* bias, float* y, int64_t n_begin, int64_t n_end);
// Block weights in the 8-row interleaved layout, as avx512_vnni's below: Q4_0, Q4_1 and the
// K-quants on byte products (matmul_blocks_rows8_avx2.cc, matmul_blocks_k_rows8_avx2.cc), Q8_0
// and int8 on int16 products (matmul_bytes_interleaved, matmul_blocks_rows8_int16_avx2.cc).
void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end);
void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end);
void matmul_bytes_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                              const WeightView& w, const float* bias, float* y, int64_t n_begin,
                              int64_t n_end);
}  // namespace avx2
namespace avx512_vnni {
void quantize_q16(const float* x, int64_t M, int64_t K, int16_t* q, float* d, float* s);
void matmul_blocks(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                   const float* bias, float* y, int64_t n_begin, int64_t n_end);
// The K-quants (Q4_K, Q5_K, Q6_K; matmul_blocks_k_*.cc), which matmul_blocks hands on to.
void matmul_blocks_k(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                     const float* bias, float* y, int64_t n_begin, int64_t n_end);
// Block weights in the 8-row interleaved layout (model/interleaved_blocks.h), every M; n_begin
// and n_end are multiples of 8 (matmul_blocks_rows8_dot_avx512.cc: Q4_0, Q4_1, Q8_0 and alem's
// int8, its f32 scales inside the columns; it hands the K-quants on to
// matmul_blocks_k_interleaved, matmul_blocks_k_rows8_dot_avx512.cc).
void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end);
void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end);
// The AMX int8 GEMM's weight panels (amx::Int8TilePanelFn), made by the interleaved kernels'
// own unpacking: int8_tile_panel for every amx::has_int8_tile_panel type, which hands Q4_K and
// Q5_K on to int8_tile_panel_k (matmul_blocks_k_rows8_dot_avx512.cc).
void int8_tile_panel(const WeightView& w, int64_t n0, int64_t n_end,
                     const amx::Int8TilePanel& panel);
void int8_tile_panel_k(const WeightView& w, int64_t n0, int64_t n_end,
                       const amx::Int8TilePanel& panel);
}  // namespace avx512_vnni
// The interleaved block weights on AVX2 with AVX-VNNI (matmul_interleaved_avx_vnni.h): every
// type on the VNNI arithmetic (matmul_blocks_rows8_avx_vnni.cc, matmul_blocks_k_rows8_avx_vnni.cc);
// avx_vnni_evex the same with the EVEX encoding of vpdpbusd (AVX512-VNNI and AVX512-VL).
namespace avx_vnni {
void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end);
void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end);
}  // namespace avx_vnni
namespace avx_vnni_evex {
void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end);
void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end);
}  // namespace avx_vnni_evex

}  // namespace alem::cpu
