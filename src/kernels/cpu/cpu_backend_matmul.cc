// The CPU backend's matmul dispatch: which kernel a matmul takes (streaming or packed f32 GEMM,
// the bf16 and int8 dot products, the block kernels, AMX tiles) by weight type, layout, rows of
// x and the CPU's features, and how its rows and columns are split over the threads. The
// kernels themselves live in the per-ISA files; the rest of the backend is cpu_backend.cc.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/cpu_backend_threads.h"
#include "model/gguf_quant.h"

namespace alem {

using cpu_threads::run_on_threads;
using cpu_threads::split_range;
using cpu_threads::threads_for;

namespace {

// From this many rows of x on, the threads of a block-weight matmul quantise x together (each
// its share, then a barrier); below it the calling thread quantises x alone, cheaper than the
// barrier.
constexpr int64_t kMinRowsToQuantizeTogether = 8;

// The checks every matmul on a dense (row-major f32, f16, bf16 or int8, or coded bf16) weight
// makes first.
void check_dense_weight(int64_t M, const WeightMatrix& w) {
  const int64_t N = w.rows, K = w.cols;
  ALEM_CHECK(M >= 0 && N >= 0 && K > 0, "matmul: bad shape");
  if (w.layout == BlockLayout::kBf16Coded) {
    ALEM_CHECK(w.dtype == DType::BF16, "matmul: only bf16 weights have coded exponents");
    if (N > 0) bf16_coded_view(w.data, N, K);  // checks the buffer against its shape
    return;
  }
  ALEM_CHECK(w.data.size() >= static_cast<size_t>(N * K) * dtype_size(w.dtype),
             "matmul: weight buffer smaller than its shape");
  if (w.dtype == DType::I8) {
    ALEM_CHECK(K % kInt8GroupSize == 0, "matmul: int8 weights need cols % 32 == 0");
    ALEM_CHECK(static_cast<int64_t>(w.scales.size()) == N * (K / kInt8GroupSize),
               "matmul: int8 weights have the wrong number of scales");
  }
}

// Rows of a tile of coded bf16 weights unpacked at a time: 256 KiB of bf16, in the L2 while the
// plain kernel reads it, and whole register blocks and GEMM panels (a multiple of 48 rows).
int64_t coded_tile_rows(int64_t K) {
  const int64_t rows = 256 * 1024 / (2 * K) / 48 * 48;
  return rows > 48 ? rows : 48;
}

// Runs kernel(view, bias, y, n0, n1) on weight rows [n0, n1) of w, writing rows [m0, m1) of y
// (row stride w.rows). Plain weights go straight in. Coded bf16 weights are unpacked a tile of
// rows at a time into this thread's scratch, each tile run as a plain matrix of its rows, its
// y gathered in scratch and copied out: the weights leave memory at 12 bits, and x is prepared
// once for all tiles.
template <class Kernel>
void on_plain_rows(const cpu::KernelTable& kernels, const cpu::WeightView& w, int64_t m0,
                   int64_t m1, const float* bias, float* y, int64_t n0, int64_t n1,
                   const Kernel& kernel) {
  if (w.layout != BlockLayout::kBf16Coded) {
    kernel(w, bias, y, n0, n1);
    return;
  }
  const int64_t N = w.rows, K = w.cols;
  const Bf16CodedView coded = bf16_coded_view(w.data, N, K);
  const int64_t tile = coded_tile_rows(K);
  auto* rows = static_cast<uint16_t*>(cpu::thread_scratch(
      cpu::ScratchSlot::kCodedRows, static_cast<size_t>(tile * K) * sizeof(uint16_t)));
  auto* tile_y = static_cast<float*>(cpu::thread_scratch(
      cpu::ScratchSlot::kCodedY, static_cast<size_t>(m1 * tile) * sizeof(float)));
  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int64_t count = std::min(tile, n1 - t0);
    kernels.unpack_coded_rows(coded, t0, count, rows);
    cpu::WeightView plain;
    plain.dtype = DType::BF16;
    plain.rows = count;
    plain.cols = K;
    plain.data = rows;
    kernel(plain, bias ? bias + t0 : nullptr, tile_y, 0, count);
    for (int64_t m = m0; m < m1; ++m) {
      std::copy(tile_y + m * count, tile_y + (m + 1) * count, y + m * N + t0);
    }
  }
}

}  // namespace

int64_t CpuBackend::coded_rows_in_registers(int64_t K) const {
  if (dot_bf16_) return cpu::avx512_dot::kCodedMaxRowsBf16;
  if (kernels_.isa == cpu::Isa::kAvx512) {
    // Rows whose x takes up to 32 KiB, and always 2: more take tiles unpacked into the L1 for 4
    // or 8 weight rows side by side (stream_bf16_permuted), which share each load of x. Measured
    // on the Zen 5 (1.1B shape, one thread, GFLOP/s, in registers against tiles): the down
    // matrix (K = 5632) at 2 rows of x 52-53 against 42, at 3 rows 51-58 against 69-72, at 4
    // 46-60 against 81-82; K = 2048 at 4 rows level (gate+up 108-109 against 105-106). The
    // tiles' unpacking costs more than the plain matrix's threshold (kOneWeightRowMaxXBytes).
    constexpr int64_t kMaxXBytes = 32 * 1024;
    const int64_t fit = kMaxXBytes / (K * static_cast<int64_t>(sizeof(float)));
    return std::clamp<int64_t>(fit, 2, cpu::kCodedMaxRows);
  }
  // AVX2's kernels run groups of rows unpacking in registers up to their packed GEMM: 1.1B
  // gate+up at 8 rows of x, one thread, 62-63 GFLOP/s through unpacked tiles, 88 in registers
  // (docs/kernels.md).
  return kPackedMinRows - 1;
}

void CpuBackend::matvec_coded(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                              float* y) const {
  const int64_t N = w.rows, K = w.cols;
  check_dense_weight(M, w);
  if (N == 0 || M == 0) return;
  const Bf16CodedView coded = bf16_coded_view(w.data, N, K);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);
  if (dot_bf16_) {
    auto* xb = static_cast<uint16_t*>(cpu::thread_scratch(
        cpu::ScratchSlot::kCodedX, static_cast<size_t>(M * K) * sizeof(uint16_t)));
    cpu::avx512_dot::to_bf16(x, M, K, xb, K);
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) cpu::avx512_dot::matvec_coded_bf16(xb, M, coded, bias, y, n0, n1);
    });
    return;
  }
  auto* xp = static_cast<float*>(
      cpu::thread_scratch(cpu::ScratchSlot::kCodedX, static_cast<size_t>(M * K) * sizeof(float)));
  kernels_.permute_x_for_coded(x, M, K, xp);
  if (M <= cpu::kCodedMaxRows) {
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 < n1) kernels_.matvec_coded(xp, x, M, coded, bias, y, n0, n1);
    });
    return;
  }
  // More rows of x: groups of up to kCodedMaxRows (as even as they go: 5 = 3 + 2), each group
  // unpacking the weights in registers again, over blocks of weight rows small enough (256 KiB
  // coded) to stay in the L2 between the groups, so the matrix leaves memory once.
  const int64_t groups = (M + cpu::kCodedMaxRows - 1) / cpu::kCodedMaxRows;
  const int64_t block =
      std::max<int64_t>(16, static_cast<int64_t>(256 * 1024 / coded.row_bytes()) / 16 * 16);
  run_on_threads(threads, [&](int index, int count) {
    const auto [n0, n1] = split_range(N, count, index, 16);
    for (int64_t b0 = n0; b0 < n1; b0 += block) {
      const int64_t b1 = std::min(n1, b0 + block);
      for (int64_t g = 0, m0 = 0; g < groups; ++g) {
        const int64_t rows = M / groups + (g < M % groups ? 1 : 0);
        kernels_.matvec_coded(xp + m0 * K, x + m0 * K, rows, coded, bias, y + m0 * N, b0, b1);
        m0 += rows;
      }
    }
  });
}

bool CpuBackend::tunes_light_prefetch(int64_t M, const WeightMatrix& w) const {
  return light_tuner_ && M == 1 && w.bytes() >= kTunedMinBytes &&
         cpu::one_row_stream_is_light(w.dtype);
}

uint64_t CpuBackend::light_prefetch_class(const WeightMatrix& w) {
  const uint64_t size_class = std::bit_width(static_cast<uint64_t>(w.bytes()));
  return static_cast<uint64_t>(w.dtype) << 56 | static_cast<uint64_t>(w.layout) << 48 |
         size_class << 32 | static_cast<uint64_t>(w.cols);
}

void CpuBackend::matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                        float* y) const {
  if (!tunes_light_prefetch(M, w)) {
    route_matmul(x, M, w, bias, y);
    return;
  }
  const uint64_t matrix_class = light_prefetch_class(w);
  const cpu::LightPrefetch choice = light_tuner_->choose(matrix_class);
  const cpu::ScopedLightPrefetch scoped(choice);
  const auto start = std::chrono::steady_clock::now();
  route_matmul(x, M, w, bias, y);
  light_tuner_->record(
      matrix_class, choice,
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), w.bytes());
}

void CpuBackend::route_matmul(const float* x, int64_t M, const WeightMatrix& w, const float* bias,
                              float* y) const {
  if (dtype_is_block(w.dtype) || is_interleaved8(w.layout)) {
    matmul_blocks(x, M, w, bias, y);
    return;
  }
  if (w.layout == BlockLayout::kBf16Coded) {
    ALEM_CHECK(kernels_.unpack_coded_rows != nullptr,
               "matmul: bf16 weights with coded exponents need AVX2 or AVX-512 kernels, and this "
               "backend runs " +
                   std::string(cpu::isa_name(kernels_.isa)) + " ones");
    if (M <= coded_rows_in_registers(w.cols)) {
      matvec_coded(x, M, w, bias, y);
      return;
    }
  }
  if (uses_amx(w.dtype, M, w.cols)) {
    matmul_amx(x, M, w, bias, y);
    return;
  }
  const bool avx512 = kernels_.isa == cpu::Isa::kAvx512;
  const int64_t packed_min_rows = !avx512                  ? kPackedMinRows
                                  : w.dtype == DType::BF16 ? packed_min_rows_bf16()
                                  : w.dtype == DType::F16  ? kPackedMinRowsF16Avx512
                                                           : kPackedMinRows;
  const bool packed = M >= packed_min_rows;
  if (matmul_dot(x, M, w, bias, y)) return;
  matmul_with_path(x, M, w, bias, y, packed);
}

bool CpuBackend::rounds_activations(DType dtype, int64_t M, BlockLayout layout) const {
  if (dtype_is_block(dtype) || is_interleaved8(layout)) return true;
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
  if (is_interleaved8(w.layout) || (w.dtype == DType::I8 && int8_blocks_)) {
    matmul_blocks(x, M, w, bias, y);
    return true;
  }
  const int64_t N = w.rows, K = w.cols;
  check_dense_weight(M, w);
  if (M == 0 || N == 0) return true;
  const cpu::WeightView view = cpu::view_of(w);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);
  // The activations in the weights' format, prepared once on this thread for all threads.
  thread_local std::vector<uint8_t> scratch;
  // Coded bf16 weights past the kernels that unpack them in registers take the GEMM, which
  // unpacks between its dot products (the streaming kernel would need unpacked tiles).
  if (w.dtype == DType::BF16 && M < kDotGemmMinRowsBf16 && w.layout != BlockLayout::kBf16Coded) {
    const int64_t stride = (K + 31) / 32 * 32;
    scratch.resize(static_cast<size_t>(M * stride) * sizeof(uint16_t) + 64);
    uint16_t* xb = reinterpret_cast<uint16_t*>(scratch.data());
    cpu::avx512_dot::to_bf16(x, M, K, xb, stride);
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 >= n1) return;
      on_plain_rows(kernels_, view, 0, M, bias, y, n0, n1,
                    [&](const auto& v, auto b, auto yy, auto a, auto z) {
                      cpu::avx512_dot::matmul_bf16(xb, M, stride, v, b, yy, a, z);
                    });
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
      if (n0 >= n1) return;
      cpu::avx512_dot::gemm_bf16(xp, M, view, bias, y, n0, n1);  // plain or coded
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
  if (w.layout == BlockLayout::kBf16Coded) {
    check_dense_weight(M, w);
  } else {
    ALEM_CHECK(M >= 0 && N >= 0 && K > 0, "matmul: bad shape");
    ALEM_CHECK(w.data.size() >= static_cast<size_t>(N) * w.row_bytes(),
               "matmul: weight buffer smaller than its shape");
  }
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
      on_plain_rows(kernels_, view, 0, M, bias, y, n0, n1,
                    [&](const auto& v, auto b, auto yy, auto a, auto z) {
                      cpu::amx::gemm_bf16(xp, M, parts, v, b, yy, a, z);
                    });
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
  ALEM_CHECK(dtype_is_block(w.dtype) || (w.dtype == DType::I8 && is_interleaved8(w.layout)) ||
                 (int8_row_major && int8_blocks_),
             "matmul_blocks: " + dtype_name(w.dtype) + " weights are not block weights");
  if (int8_row_major) {
    ALEM_CHECK(w.data.size() >= static_cast<size_t>(N * K) &&
                   w.scales.size() >= static_cast<size_t>(N * (K / kInt8GroupSize)),
               "matmul: int8 weights or scales smaller than their shape");
  } else {
    ALEM_CHECK(
        w.data.size() >= static_cast<size_t>(N) * interleaved_row_bytes(w.dtype, K, w.layout),
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
  // A batch's rows of x are quantised by all threads, each its share, before any multiplies
  // (on the calling thread alone the other waited: 3% of a 16-stream serving run's samples).
  const bool quantize_together = threads > 1 && M >= kMinRowsToQuantizeTogether;
  if (!quantize_together) blocks_.quantize(x, M, K, q, d, s);
  // Interleaved weights (made where the block kernels have an interleaved form): runs of 16
  // rows keep every thread's range in whole groups of 8.
  const cpu::MatmulBlocksFn kernel =
      is_interleaved8(view.layout) ? blocks_.matmul_interleaved : blocks_.matmul;
  ALEM_CHECK(view.layout == BlockLayout::kRowMajor || interleaves(w.dtype),
             "matmul: " + dtype_name(w.dtype) +
                 " weights interleaved for another CPU backend's block kernels");
  // Threads split N in runs of 16 rows; when there are fewer runs than threads, M too.
  const int64_t runs = (N + 15) / 16;
  run_on_threads(threads, [&](int index, int count) {
    if (quantize_together) {
      const auto [r0, r1] = split_range(M, count, index, 1);
      if (r0 < r1) {
        blocks_.quantize(x + r0 * K, r1 - r0, K, q + r0 * K, d + r0 * blocks, s + r0 * blocks);
      }
#pragma omp barrier
    }
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
  if (dtype_is_block(w.dtype) || is_interleaved8(w.layout)) {
    matmul_blocks(x, M, w, bias, y);
    return;
  }
  const int64_t N = w.rows, K = w.cols;
  check_dense_weight(M, w);
  if (M == 0 || N == 0) return;
  const cpu::WeightView view = cpu::view_of(w);
  const int threads = threads_for(static_cast<double>(M) * N * K, max_threads_);

  if (!packed && w.layout == BlockLayout::kBf16Coded && kernels_.isa == cpu::Isa::kAvx512) {
    // x permuted once for every tile (the plain kernel would permute it at each call).
    auto* xp = static_cast<float*>(
        cpu::thread_scratch(cpu::ScratchSlot::kCodedX, static_cast<size_t>(M * K) * sizeof(float)));
    cpu::avx512::permute_x_even_odd(x, M, K, xp);
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 >= n1) return;
      cpu::avx512::stream_bf16_permuted(xp, M, view, bias, y, n0, n1);
    });
    return;
  }
  if (!packed) {
    run_on_threads(threads, [&](int index, int count) {
      const auto [n0, n1] = split_range(N, count, index, 16);
      if (n0 >= n1) return;
      on_plain_rows(kernels_, view, 0, M, bias, y, n0, n1,
                    [&](const auto& v, auto b, auto yy, auto a, auto z) {
                      kernels_.matmul_stream(x, M, v, b, yy, a, z);
                    });
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
    if (n0 >= n1 || m0 >= m1) return;
    on_plain_rows(kernels_, view, m0, m1, bias, y, n0, n1,
                  [&](const auto& v, auto b, auto yy, auto a, auto z) {
                    kernels_.matmul_packed(x, m0, m1, v, b, yy, a, z);
                  });
  });
}

}  // namespace alem
