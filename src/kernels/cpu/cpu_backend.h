// The "cpu" kernel backend: OpenMP threads (OMP_NUM_THREADS is respected) and the widest SIMD
// instruction set the CPU has (AVX-512, else AVX2/FMA, else portable scalar code), chosen once
// at construction. Matmul, the op that dominates inference, streams bf16/f16/int8 weights in
// their stored form (decode) or packs small f32 tiles of them for a register-blocked GEMM
// micro-kernel (prefill). See docs/kernels.md for the design and measured speeds.
#pragma once

#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/prefetch_tuner.h"

namespace alem {

class CpuBackend final : public KernelBackend {
 public:
  // Uses `isa` (which must be supported by this CPU, see cpu::isa_supported) and at most
  // `max_threads` OpenMP threads (0: omp_get_max_threads(), i.e. OMP_NUM_THREADS).
  // `dot_products` lets int8 matmuls use the VNNI kernels (16-bit activations) when the CPU has
  // them, and on AVX2 the block kernels (the same activations); `bf16_dot_products` also lets
  // bf16 matmuls use vdpbf16ps, which rounds the activations to bf16 and so moves near-tie
  // greedy tokens (off by default; docs/kernels.md), and interleaved block weights take x at 8
  // bits per value (ggml's precision).
  // The registry's backend reads ALEM_CPU_DOT: 0 none, unset or int8 the int8 kernels, all both.
  // `amx` lets bf16 matmuls of kAmxMinRows rows and more use AMX tiles where the CPU and
  // kernel allow them (x split into 3 bf16 parts: the f32 result up to summation order; one
  // part, x rounded to bf16, when `bf16_dot_products` is on).
  explicit CpuBackend(cpu::Isa isa, int max_threads = 0, bool dot_products = true,
                      bool bf16_dot_products = false, bool amx = true);

  std::string name() const override { return "cpu"; }
  cpu::Isa isa() const { return kernels_.isa; }
  int max_threads() const override { return max_threads_; }
  void set_max_threads(int threads) override { max_threads_ = threads > 0 ? threads : 1; }

  void matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
              float* y) const override;
  void rmsnorm(const float* x, const float* gamma, int64_t M, int64_t D, float eps,
               float* y) const override;
  void rope(float* x, int64_t T, int num_heads, int head_dim, const int32_t* positions,
            const RopeTable& table) const override;
  void silu_mul(const float* gate_up, int64_t M, int64_t I, float* out) const override;
  void add_inplace(float* y, const float* x, int64_t n) const override;
  // Large copies (a prefill's q, k and v split from the fused projection) and cache writes are
  // split over the threads by rows.
  void copy_2d(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
               size_t rows) const override;
  void kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                      const float* k, const float* v, KVCacheLayerView cache) const override;
  void paged_attention(const AttentionShape& shape, const AttentionSequence* seqs, int num_seqs,
                       const float* q, KVCacheLayerView cache, float* out) const override;
  void embedding(const WeightMatrix& table, int64_t row_begin, const int32_t* tokens, int64_t T,
                 float* out) const override;
  // The host path's fill_sampling_candidates with the kernel table's row statistics
  // (sampling_avx512.cc where it can), rows split over the threads.
  void sampling_candidates(const float* logits, int64_t rows, int64_t vocab, int k,
                           SamplingCandidates& out) const override;
  // Keeps the matrix in host memory; ggml block weights with whole groups of 8 rows are
  // rewritten in place to the 8-row interleaved layout (model/interleaved_blocks.h) where this
  // backend's block kernels have an interleaved form (interleaves()), and so are int8 weights
  // (values and scales) where the int8 dot-product kernels are on too: they then take Q8_0's
  // interleaved kernel at every M, with x at 16 bits per 32-value block.
  void adopt_weight(WeightMatrix& w) const override;
  // Whether adopt_weight interleaves (on by default where it can; ALEM_CPU_INTERLEAVE=0 keeps
  // GGUF's row-major layout, for before/after measurements).
  bool interleaves_blocks() const { return interleave_blocks_; }
  // Whether adopt_weight codes bf16 matrices' exponents (model/bf16_coded.h: 12 bits per weight,
  // lossless): on AVX-512 and AVX2, by default; ALEM_CPU_BF16_CODED=0 keeps them plain.
  bool codes_bf16() const { return code_bf16_; }
  // Rows of x (of K values) up to which matmuls on coded bf16 weights unpack them in registers (the
  // kernel table's matvec_coded, in groups of kCodedMaxRows, or the bf16 dot kernels); from one
  // more, tiles of rows are unpacked into memory for the plain kernels.
  int64_t coded_rows_in_registers(int64_t K) const;
  void set_code_bf16(bool on) { code_bf16_ = on && kernels_.unpack_coded_rows != nullptr; }
  // The instruction a prefill (many rows of x) against weights of `dtype` runs its products on,
  // as matmul routes it: f32 FMA for the exact kernels (f32, f16, bf16 widened, row-major
  // int8); bf16 dot products where bf16 weights round x to bf16; int8 dot products for block
  // weights and int8 this backend interleaves, two per four products where x keeps 16 bits;
  // AMX tiles where bf16 or block weights take them. `alem bench generate` sets the prefill's
  // FLOP/s against the matching peak.
  enum class PrefillArithmetic { kF32Fma, kBf16Dot, kInt8Dot16BitX, kInt8Dot, kAmx };
  PrefillArithmetic prefill_arithmetic(DType dtype, int64_t K) const;
  void set_interleave_blocks(bool on) { interleave_blocks_ = on && blocks_.matmul_interleaved; }
  // Whether adopt_weight interleaves matrices of `dtype` (with whole groups of 8 rows): every
  // ggml block type where the block kernels are AVX512-VNNI's or AVX2's, and int8 where its
  // 16-bit activations are allowed (ALEM_CPU_DOT is not 0).
  bool interleaves(DType dtype) const;

  // Whether matmul measures the light-stream prefetch setting for w at M rows of x and runs the
  // faster one (cpu::LightPrefetchTuner): on by default (ALEM_CPU_PREFETCH unset or auto), for
  // one row of x against dense or Q8_0 weights of kTunedMinBytes and more.
  bool tunes_light_prefetch(int64_t M, const WeightMatrix& w) const;
  void set_tune_light_prefetch(bool on) {
    light_tuner_ = on ? std::make_shared<cpu::LightPrefetchTuner>() : nullptr;
  }
  // The tuner's class of w: its weight type, layout, row length (which sets how much x the
  // kernel re-reads beside the stream) and size in powers of two.
  static uint64_t light_prefetch_class(const WeightMatrix& w);
  // The tuner's state (null where it is off), for tests and `alem bench`.
  const cpu::LightPrefetchTuner* light_prefetch_tuner() const { return light_tuner_.get(); }
  static constexpr size_t kTunedMinBytes = 128 * 1024;

  // Matmul with the path forced (for tests and benchmarks): packed GEMM or streaming.
  void matmul_with_path(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                        float* y, bool packed) const;

  // The dot-product kernels (bf16 weights: every M, GEMM from kDotGemmMinRowsBf16 rows;
  // int8 weights: M < kPackedMinRows on AVX512-VNNI, every M on AVX2 and once interleaved):
  // false (nothing written) when this CPU or build has none for w's dtype and M, or they are
  // switched off.
  bool matmul_dot(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                  float* y) const;
  // Whether this backend has dot-product kernels for weights of `dtype` at all.
  bool has_dot_kernel(DType dtype) const;
  // Whether matmul of M rows against `dtype` weights lying as `layout` takes them (and so
  // rounds x to the weights' format: bf16, or 16 bits per 32-value block for int8, at every M
  // once this backend has interleaved the int8 matrix, and on AVX2).
  bool rounds_activations(DType dtype, int64_t M,
                          BlockLayout layout = BlockLayout::kRowMajor) const;

  // Weights of the ggml block types (Q4_0, Q4_1, Q8_0, the K-quants) and interleaved int8: x
  // quantised to int16 blocks of 32 once, then the fastest block kernel this CPU has
  // (cpu::block_kernels), for every M.
  void matmul_blocks(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                     float* y) const;
  // Which block kernel set this backend uses ("avx512_vnni", "avx2" or "scalar").
  const char* block_kernel_name() const { return blocks_.name; }
  // Whether matmuls of M rows and K columns against `dtype` weights take the AMX GEMM: bf16
  // from kAmxMinRows rows, ggml block types (expanded per 48-row panel) from kAmxMinRowsBlocks.
  bool uses_amx(DType dtype, int64_t M, int64_t K) const {
    if (!amx_ || K % cpu::amx::kKMultiple != 0) return false;
    if (dtype == DType::BF16) return M >= kAmxMinRows;
    return dtype_is_block(dtype) && M >= kAmxMinRowsBlocks;
  }
  // Whether block matmuls of M rows take the AMX int8 GEMM: interleaved weights of a type it
  // has panels for (cpu::amx::has_int8_tile_panel), from kAmxMinRowsInt8 rows of x.
  bool uses_amx_int8(DType dtype, BlockLayout layout, int64_t M) const {
    return amx_int8_ && layout == BlockLayout::kInterleaved8 &&
           cpu::amx::has_int8_tile_panel(dtype) && M >= kAmxMinRowsInt8;
  }

  // Rows of x from which matmul switches from streaming to the packed GEMM.
  static constexpr int64_t kPackedMinRows = 16;
  // The same for bf16 weights on AVX-512: the exact small-batch streaming kernel stayed ahead
  // of the packed f32 GEMM up to about 24 rows on an Intel Xeon, up to about 128 on an AMD Zen 4
  // (weights from DRAM; the CPU's vendor picks one, packed_min_rows_bf16()); at llama.cpp's
  // precision (vdpbf16ps) the GEMM, which computes 16 rows of x per instruction, overtakes the
  // streaming kernel from about 12 rows (docs/kernels.md).
  static constexpr int64_t kPackedMinRowsBf16Avx512 = 24;
  static constexpr int64_t kPackedMinRowsBf16Avx512Amd = 128;
  static constexpr int64_t kDotGemmMinRowsBf16 = 12;
  // The same for f16 weights on AVX-512, whose small-batch kernel from 8 rows converts in the
  // wide blocks of the bf16 one: on the Zen 5 (1.1B shape, one thread) it ran 160-173 GFLOP/s at
  // 16 rows against the packed GEMM's 100-158, and the two level at 32 (docs/kernels.md).
  static constexpr int64_t kPackedMinRowsF16Avx512 = 32;
  static int64_t packed_min_rows_bf16() {
    return cpu::vendor_is_amd() ? kPackedMinRowsBf16Avx512Amd : kPackedMinRowsBf16Avx512;
  }
  // Rows of x from which bf16 matmuls use AMX tiles when the CPU has them.
  static constexpr int64_t kAmxMinRows = 8;
  static constexpr int64_t kAmxMinRowsBlocks = 16;
  static constexpr int64_t kAmxMinRowsInt8 = 16;

 private:
  cpu::KernelTable kernels_;
  cpu::BlockKernels blocks_;
  int max_threads_ = 1;
  bool dot_bf16_ = false;
  bool eight_bit_blocks_ = false;  // ALEM_CPU_DOT=all: interleaved blocks at 8-bit activations
  bool dot_int8_ = false;
  bool int8_blocks_ = false;  // AVX2: int8 weights take the row-major block kernel (16-bit x)
  bool amx_ = false;
  bool amx_int8_ = false;
  bool interleave_blocks_ = false;
  bool code_bf16_ = false;
  std::shared_ptr<cpu::LightPrefetchTuner> light_tuner_;
  // matmul's choice of kernel, without the tuning around it.
  void route_matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                    float* y) const;
  // bf16 weights with coded exponents at up to 4 rows of x (matmul_coded_*.cc), each chunk
  // unpacked in registers for all of them; larger M unpacks rows for the plain kernels
  // (cpu_backend_matmul.cc).
  void matvec_coded(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                    float* y) const;
  // Same bf16 matmul through AMX tiles (uses_amx() was true).
  void matmul_amx(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                  float* y) const;
};

// The backend registry's "cpu" entry: the best ISA of this machine, OMP_NUM_THREADS threads.
std::unique_ptr<KernelBackend> make_cpu_backend();

}  // namespace alem
