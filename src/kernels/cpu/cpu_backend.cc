// The CPU backend's driver: picks the instruction-set kernels once, splits every op across
// OpenMP threads, and implements the light element-wise ops directly (they are memory-bound
// and tiny next to matmul and attention). The heavy inner loops live in the per-ISA files.
#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
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

namespace {

// Runs body(thread_index, thread_count) on up to `threads` OpenMP threads (inline when 1).
template <typename Body>
void run_on_threads(int threads, const Body& body) {
  if (threads <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// The part [begin, end) of `total` items that `index` of `count` workers takes, in whole units
// of `align` items (the last part takes the remainder).
std::pair<int64_t, int64_t> split_range(int64_t total, int count, int index, int64_t align) {
  const int64_t units = (total + align - 1) / align;
  const int64_t begin = units * index / count * align;
  const int64_t end = units * (index + 1) / count * align;
  return {std::min(begin, total), std::min(end, total)};
}

// Work smaller than this (in multiply-adds or weight bytes) runs on one thread: waking the pool
// costs a few microseconds.
constexpr double kMinParallelMacs = 1 << 18;

int threads_for(double work, int max_threads) {
  return work < kMinParallelMacs ? 1 : max_threads;
}

}  // namespace

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
}

bool CpuBackend::interleaves(DType dtype) const {
  if (!interleave_blocks_) return false;
  if (dtype == DType::I8) return dot_int8_ || int8_blocks_;
  return dtype_is_block(dtype);
}

void CpuBackend::adopt_weight(WeightMatrix& w) const {
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
    AlignedBuffer interleaved(static_cast<size_t>(w.rows) * interleaved_row_bytes(w.dtype, w.cols));
    interleave_int8(w.rows, w.cols, w.data.as<int8_t>(), w.scales.data(), interleaved.data());
    w.data = std::move(interleaved);
    w.scales = {};
  } else {
    interleave_blocks(w.dtype, w.rows, w.cols, w.data.data());
  }
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
  // ALEM_CPU_PREFETCH=all|heavy|none|auto: which decode streams prefetch (read once, when the
  // process starts: cpu_kernels.h); checked here so a wrong value is an error, not a default.
  bool prefetch_valid = false;
  const char* prefetch_env = std::getenv("ALEM_CPU_PREFETCH");
  cpu::stream_prefetch_setting(prefetch_env, false, cpu::l1_data_bytes(), &prefetch_valid);
  ALEM_CHECK(prefetch_valid, "ALEM_CPU_PREFETCH must be all, heavy, none or auto, got '" +
                                 std::string(prefetch_env ? prefetch_env : "") + "'");
  auto backend = std::make_unique<CpuBackend>(isa, 0, dot != "0", dot == "all", amx == "1");
  backend->set_interleave_blocks(interleave == "1");
  return backend;
}

void CpuBackend::matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                        float* y) const {
  if (dtype_is_block(w.dtype) || w.layout == BlockLayout::kInterleaved8) {
    matmul_blocks(x, M, w, bias, y);
    return;
  }
  if (uses_amx(w.dtype, M, w.cols)) {
    matmul_amx(x, M, w, bias, y);
    return;
  }
  const bool bf16_avx512 = w.dtype == DType::BF16 && kernels_.isa == cpu::Isa::kAvx512;
  const bool packed = M >= (bf16_avx512 ? packed_min_rows_bf16() : kPackedMinRows);
  if (matmul_dot(x, M, w, bias, y)) return;
  matmul_with_path(x, M, w, bias, y, packed);
}

bool CpuBackend::rounds_activations(DType dtype, int64_t M, BlockLayout layout) const {
  if (dtype_is_block(dtype) || layout == BlockLayout::kInterleaved8) return true;
  // AMX with 3 parts keeps x's 24 bits; with one part it rounds like the bf16 dot kernels.
  if (dtype == DType::BF16) return dot_bf16_;
  return dtype == DType::I8 && ((dot_int8_ && M < kPackedMinRows) || int8_blocks_);
}

CpuBackend::PrefillArithmetic CpuBackend::prefill_arithmetic(DType dtype, int64_t K) const {
  constexpr int64_t kPrefillRows = 256;
  const bool amx = interleaves(dtype)
                       ? uses_amx_int8(dtype, BlockLayout::kInterleaved8, kPrefillRows)
                       : uses_amx(dtype, kPrefillRows, K);
  if (amx) return PrefillArithmetic::kAmx;
  if (dtype == DType::BF16)
    return dot_bf16_ ? PrefillArithmetic::kBf16Dot : PrefillArithmetic::kF32Fma;
  // The int8 dot products are AVX512-VNNI's or AVX-VNNI's (256 bits wide: the bench measures
  // that peak for kAvxVnni); AVX2's block kernels are counted against f32 FMA.
  if (!interleaves(dtype) || !blocks_.int8_dot) {
    return PrefillArithmetic::kF32Fma;
  }
  return eight_bit_blocks_ && dtype_is_block(dtype) ? PrefillArithmetic::kInt8Dot
                                                    : PrefillArithmetic::kInt8Dot16BitX;
}

bool CpuBackend::has_dot_kernel(DType dtype) const {
  return (dtype == DType::BF16 && dot_bf16_) || (dtype == DType::I8 && (dot_int8_ || int8_blocks_));
}

bool CpuBackend::matmul_dot(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                            float* y) const {
  if (!rounds_activations(w.dtype, M, w.layout)) return false;
  // int8 adopted by this backend, or row-major int8 on the AVX2 block kernel.
  if (w.layout == BlockLayout::kInterleaved8 || (w.dtype == DType::I8 && int8_blocks_)) {
    matmul_blocks(x, M, w, bias, y);
    return true;
  }
  const int64_t N = w.rows, K = w.cols;
  ALEM_CHECK(M >= 0 && N >= 0 && K > 0, "matmul: bad shape");
  ALEM_CHECK(w.data.size() >= static_cast<size_t>(N * K) * dtype_size(w.dtype),
             "matmul: weight buffer smaller than its shape");
  if (w.dtype == DType::I8) {
    ALEM_CHECK(K % kInt8GroupSize == 0, "matmul: int8 weights need cols % 32 == 0");
    ALEM_CHECK(static_cast<int64_t>(w.scales.size()) == N * (K / kInt8GroupSize),
               "matmul: int8 weights have the wrong number of scales");
  }
  if (M == 0 || N == 0) return true;
  const cpu::WeightView view = cpu::view_of(w);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);
  // The activations in the weights' format, prepared once on this thread for all threads.
  thread_local std::vector<uint8_t> scratch;
  if (w.dtype == DType::BF16 && M < kDotGemmMinRowsBf16) {
    const int64_t stride = (K + 31) / 32 * 32;
    scratch.resize(static_cast<size_t>(M * stride) * sizeof(uint16_t) + 64);
    uint16_t* xb = reinterpret_cast<uint16_t*>(scratch.data());
    cpu::avx512_dot::to_bf16(x, M, K, xb, stride);
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) cpu::avx512_dot::matmul_bf16(xb, M, stride, view, bias, y, n0, n1);
    });
    return true;
  }
  if (w.dtype == DType::BF16) {
    // x as bf16 pairs, 64-byte aligned; the threads split the weight rows.
    scratch.resize(static_cast<size_t>(cpu::avx512_dot::packed_pairs_size(M, K, 1)) * 4 + 64);
    uint32_t* xp = reinterpret_cast<uint32_t*>(
        scratch.data() + (64 - reinterpret_cast<uintptr_t>(scratch.data()) % 64) % 64);
    cpu::avx512_dot::pack_x_pairs(x, M, K, 1, xp);
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) cpu::avx512_dot::gemm_bf16(xp, M, view, bias, y, n0, n1);
    });
    return true;
  }
  const int64_t stride = (K + 63) / 64 * 64;
  const size_t lanes = static_cast<size_t>(M * stride / 4);
  scratch.resize(static_cast<size_t>(2 * M * stride) + 2 * lanes * sizeof(float));
  cpu::Q16Activations a;
  int8_t* high = reinterpret_cast<int8_t*>(scratch.data());
  uint8_t* low = scratch.data() + M * stride;
  int32_t* offsets = reinterpret_cast<int32_t*>(scratch.data() + 2 * M * stride);
  float* scales = reinterpret_cast<float*>(offsets + lanes);
  cpu::avx512_dot::quantize_q16(x, M, K, high, low, offsets, scales, stride);
  a.high = high;
  a.low = low;
  a.lane_offsets = offsets;
  a.lane_scales = scales;
  a.stride = stride;
  run_on_threads(threads, [&](int index, int count) {
    const auto [n0, n1] = split_range(N, count, index, 16);
    if (n0 < n1) cpu::avx512_dot::matmul_int8(a, M, view, bias, y, n0, n1);
  });
  return true;
}

void CpuBackend::matmul_amx(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                            float* y) const {
  const int64_t N = w.rows, K = w.cols;
  ALEM_CHECK(M >= 0 && N >= 0 && K > 0, "matmul: bad shape");
  ALEM_CHECK(w.data.size() >= static_cast<size_t>(N) * w.row_bytes(),
             "matmul: weight buffer smaller than its shape");
  if (M == 0 || N == 0) return;
  // bf16 weights: x in 3 parts (exact) or 1 (ALEM_CPU_DOT=all); block weights, expanded to two
  // bf16 parts: x in 2 parts (16 bits, as the block kernels' int16 activations).
  const bool blocks = dtype_is_block(w.dtype);
  const int parts = blocks ? 2 : (dot_bf16_ ? 1 : 3);
  thread_local std::vector<uint32_t> packed;
  packed.resize(static_cast<size_t>(cpu::avx512_dot::packed_pairs_size(M, K, parts)) + 16);
  // 64-byte aligned start inside the buffer (tile loads of x use 64-byte rows).
  uint32_t* xp = packed.data() + (16 - reinterpret_cast<uintptr_t>(packed.data()) % 64 / 4) % 16;
  cpu::avx512_dot::pack_x_pairs(x, M, K, parts, xp);
  const cpu::WeightView view = cpu::view_of(w);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);
  run_on_threads(threads, [&](int index, int count) {
    const auto [n0, n1] = split_range(N, count, index, 48);
    if (n0 >= n1) return;
    if (blocks) {
      cpu::amx::gemm_dequantized(xp, M, parts, view, cpu::avx512::dequantize_block_rows, bias, y,
                                 n0, n1);
    } else {
      cpu::amx::gemm_bf16(xp, M, parts, view, bias, y, n0, n1);
    }
  });
}

void CpuBackend::matmul_blocks(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                               float* y) const {
  const int64_t N = w.rows, K = w.cols;
  const int64_t block = w.dtype == DType::I8 ? kInt8GroupSize : dtype_block_elements(w.dtype);
  ALEM_CHECK(
      M >= 0 && N >= 0 && K > 0 && K % block == 0,
      "matmul: " + dtype_name(w.dtype) + " weights need cols % " + std::to_string(block) + " == 0");
  const bool int8_row_major = w.dtype == DType::I8 && w.layout == BlockLayout::kRowMajor;
  ALEM_CHECK(dtype_is_block(w.dtype) ||
                 (w.dtype == DType::I8 && w.layout == BlockLayout::kInterleaved8) ||
                 (int8_row_major && int8_blocks_),
             "matmul_blocks: " + dtype_name(w.dtype) + " weights are not block weights");
  if (int8_row_major) {
    ALEM_CHECK(w.data.size() >= static_cast<size_t>(N * K) &&
                   w.scales.size() >= static_cast<size_t>(N * (K / kInt8GroupSize)),
               "matmul: int8 weights or scales smaller than their shape");
  } else {
    ALEM_CHECK(w.data.size() >= static_cast<size_t>(N) * interleaved_row_bytes(w.dtype, K),
               "matmul: weight buffer smaller than its shape");
  }
  if (M == 0 || N == 0) return;
  // The bf16 expansion on AMX for row-major block weights only: interleaved ones take the int8
  // tiles or, for the types without a tile panel (Q3_K, Q6_K), the VNNI kernels, which ran
  // 1.5-4x ahead of expanding them.
  if (w.layout == BlockLayout::kRowMajor && uses_amx(w.dtype, M, K)) {
    matmul_amx(x, M, w, bias, y);
    return;
  }
  // x as int16 blocks of 32, once for all threads.
  thread_local std::vector<uint8_t> scratch;
  const int64_t blocks = K / 32;
  const size_t block_count = static_cast<size_t>(M * blocks);
  const bool amx_int8 = uses_amx_int8(w.dtype, w.layout, M);
  const size_t q_bytes =
      static_cast<size_t>(M * K) * sizeof(int16_t) + 2 * block_count * sizeof(float);
  scratch.resize(q_bytes + (amx_int8 ? cpu::amx::tile_activation_bytes(M, K) + 64 : 0));
  float* d = reinterpret_cast<float*>(scratch.data());
  float* s = d + block_count;
  int16_t* q = reinterpret_cast<int16_t*>(s + block_count);
  const cpu::WeightView view = cpu::view_of(w);
  // ALEM_CPU_DOT=all: interleaved block weights at ggml's 8-bit activation precision (alem's
  // int8 keeps 16 bits, as its decode kernels always have).
  const cpu::Q16Blocks a{
      q, d, s, K,
      eight_bit_blocks_ && view.layout == BlockLayout::kInterleaved8 && dtype_is_block(w.dtype)};
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);
  if (amx_int8) {
    // Each thread quantises and splits its own rows of x for the tiles, then, when all have,
    // multiplies its weight rows in panels of 16.
    uint8_t* after = scratch.data() + q_bytes;
    void* aligned = after + (64 - reinterpret_cast<uintptr_t>(after) % 64) % 64;
    const cpu::amx::TileActivations tiles = cpu::amx::tile_activations(M, K, a.eight_bit, aligned);
    const int64_t padded_rows = (M + 15) / 16 * 16;
    run_on_threads(threads, [&](int index, int count) {
      const auto [m0, m1] = split_range(padded_rows, count, index, 16);
      const int64_t quantized_end = std::min(m1, M);
      if (m0 < quantized_end) {
        blocks_.quantize(x + m0 * K, quantized_end - m0, K, q + m0 * K, d + m0 * blocks,
                         s + m0 * blocks);
      }
      cpu::amx::split_rows_for_tiles(a, tiles, m0, m1);
#pragma omp barrier
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) {
        cpu::amx::gemm_int8(tiles, view, cpu::avx512_vnni::int8_tile_panel, bias, y, n0, n1);
      }
    });
    return;
  }
  blocks_.quantize(x, M, K, q, d, s);
  // Interleaved weights (made where the block kernels have an interleaved form): runs of 16
  // rows keep every thread's range in whole groups of 8.
  const cpu::MatmulBlocksFn kernel =
      view.layout == BlockLayout::kInterleaved8 ? blocks_.matmul_interleaved : blocks_.matmul;
  ALEM_CHECK(view.layout == BlockLayout::kRowMajor || interleaves(w.dtype),
             "matmul: " + dtype_name(w.dtype) +
                 " weights interleaved for another CPU backend's block kernels");
  // Threads split N in runs of 16 rows; when there are fewer runs than threads, M too.
  const int64_t runs = (N + 15) / 16;
  run_on_threads(threads, [&](int index, int count) {
    const int n_parts = static_cast<int>(std::min<int64_t>(count, runs));
    const int m_parts = count / n_parts;
    if (index >= n_parts * m_parts) return;
    const auto [n0, n1] = split_range(N, n_parts, index % n_parts, 16);
    const auto [m0, m1] = split_range(M, m_parts, index / n_parts, 4);
    if (n0 < n1 && m0 < m1) kernel(a, m0, m1, view, bias, y, n0, n1);
  });
}

void CpuBackend::matmul_with_path(const float* x, int64_t M, const WeightMatrix& w,
                                  const float* bias, float* y, bool packed) const {
  // One kernel for every M: block weights, and int8 this backend has interleaved.
  if (dtype_is_block(w.dtype) || w.layout == BlockLayout::kInterleaved8) {
    matmul_blocks(x, M, w, bias, y);
    return;
  }
  const int64_t N = w.rows, K = w.cols;
  ALEM_CHECK(M >= 0 && N >= 0 && K > 0, "matmul: bad shape");
  ALEM_CHECK(w.data.size() >= static_cast<size_t>(N * K) * dtype_size(w.dtype),
             "matmul: weight buffer smaller than its shape");
  if (w.dtype == DType::I8) {
    ALEM_CHECK(K % kInt8GroupSize == 0, "matmul: int8 weights need cols % 32 == 0");
    ALEM_CHECK(static_cast<int64_t>(w.scales.size()) == N * (K / kInt8GroupSize),
               "matmul: int8 weights have the wrong number of scales");
  }
  if (M == 0 || N == 0) return;
  const cpu::WeightView view = cpu::view_of(w);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);

  if (!packed) {
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) kernels_.matmul_stream(x, M, view, bias, y, n0, n1);
    });
    return;
  }
  // Threads split N in whole panels; when there are fewer panels than threads they split M too.
  const int64_t panel = kernels_.packed_panel_cols;
  const int64_t panels = (N + panel - 1) / panel;
  run_on_threads(threads, [&](int index, int count) {
    const int n_parts = static_cast<int>(std::min<int64_t>(count, panels));
    const int m_parts = count / n_parts;
    if (index >= n_parts * m_parts) return;
    const auto [n0, n1] = split_range(N, n_parts, index % n_parts, panel);
    const auto [m0, m1] = split_range(M, m_parts, index / n_parts, 8);
    if (n0 < n1 && m0 < m1) kernels_.matmul_packed(x, m0, m1, view, bias, y, n0, n1);
  });
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

void CpuBackend::kv_cache_write(const AttentionShape& shape, const AttentionSequence* seqs,
                                int num_seqs, const float* k, const float* v,
                                KVCacheLayerView cache) const {
  ALEM_CHECK(shape.block_size > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0,
             "kv_cache_write: bad attention shape");
  check_kv_cache_dtype(cache.dtype);
  const int64_t row_width = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  const bool bf16 = cache.dtype == DType::BF16;
  for (int s = 0; s < num_seqs; ++s) {
    const AttentionSequence& seq = seqs[s];
    for (int i = 0; i < seq.q_count; ++i) {
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
        for (int64_t j = 0; j < row_width; ++j) {
          k_dst[j] = f32_to_bf16(k_row[j]);
          v_dst[j] = f32_to_bf16(v_row[j]);
        }
        continue;
      }
      std::memcpy(static_cast<float*>(cache.k) + slot * row_width, k_row,
                  row_width * sizeof(float));
      std::memcpy(static_cast<float*>(cache.v) + slot * row_width, v_row,
                  row_width * sizeof(float));
    }
  }
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
  // so each cache chunk is read once for all of them.
  const int group = shape.num_heads / shape.num_kv_heads;
  const int rows_per_task = std::max(1, 32 / group);
  struct Task {
    int seq;
    cpu::AttentionWork work;
    double cost;
  };
  std::vector<Task> tasks;
  for (int s = 0; s < num_seqs; ++s) {
    for (int r0 = 0; r0 < seqs[s].q_count; r0 += rows_per_task) {
      const int r1 = std::min(seqs[s].q_count, r0 + rows_per_task);
      const int64_t context = static_cast<int64_t>(seqs[s].start_pos) + r1;
      for (int h = 0; h < shape.num_kv_heads; ++h) {
        tasks.push_back({s, {h, r0, r1, 0, context, nullptr}, double(r1 - r0) * context * group});
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
  if (max_threads_ > 1 && !tasks.empty() && tasks.size() < 4 * static_cast<size_t>(max_threads_)) {
    const size_t wanted = 4 * max_threads_ / tasks.size() + 1;
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
      const size_t queries = static_cast<size_t>(t.work.row_end - t.work.row_begin) * group;
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
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < task_count; ++i) {
    const Task& t = tasks[order[i]];
    kernels_.attention(shape, seqs[t.seq], t.work, q, cache, out);
  }
  // Merge split pieces: out = sum_p acc_p e^(m_p - M) / sum_p l_p e^(m_p - M), M = max_p m_p.
  const int64_t row_stride = static_cast<int64_t>(shape.num_heads) * shape.head_dim;
  for (const Split& sp : splits) {
    const int queries = (sp.whole.row_end - sp.whole.row_begin) * group;
    for (int qi = 0; qi < queries; ++qi) {
      float global_max = -INFINITY;
      for (size_t p = 0; p < sp.pieces; ++p) {
        global_max = std::max(global_max, tasks[sp.first_piece + p].work.partial[qi * record]);
      }
      const int row = sp.whole.row_begin + qi / group;
      const int head = sp.whole.kv_head * group + qi % group;
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
        if (table.layout == BlockLayout::kInterleaved8) {
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
