// Prefill GEMM for bf16 weights on Intel AMX (TDPBF16PS: a 16x32 by 32x16 tile product, 8192
// multiply-adds per instruction), used when the CPU has AMX-BF16 and the kernel lets this process
// use the tile registers. y[M][N] = x[M][K] W[N][K]^T is computed transposed, y^T = W x^T, so the
// weight rows are the A tiles exactly as they sit in memory (16 rows of 32 bf16, row stride K):
// no weight packing at all. x is packed once per matmul into B tiles, each 16 pairs of k by 16
// rows of x as 32-bit (x[m][k], x[m][k+1]) units (avx512_dot::pack_x_pairs, shared with the
// vdpbf16ps GEMM).
//
// Exactness: the weights are bf16 already, so only x loses bits when it becomes bf16. With
// `parts` = 3 (the default) x is split as x = hi + mid + lo, each the bf16 nearest to what the
// earlier parts left; the three carry x's 24 significant bits, every bf16 x bf16 product is
// exact in f32, and the tile sums in f32: the result is the f32 matmul up to summation order.
// `parts` = 1 rounds x to bf16 once (the rounding of the vdpbf16ps kernels, ALEM_CPU_DOT=all).
// Three parts cost three tile products per weight tile, which AMX has to spare: a weight tile
// load feeds 3 x 3 products here.
//
// Register use: tmm0-2 accumulate 3 blocks of 16 weight rows for one block of 16 rows of x,
// tmm3-5 hold the 3 weight tiles of one k step, tmm6 one part of x. Tails: rows of x are
// zero-padded to 16 in the packed buffer; a last block of fewer than 16 weight rows is copied
// into a zero-padded buffer; K must be a multiple of 32 (the caller checks).
#include <immintrin.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::amx {
namespace {

constexpr int kTile = 16;    // rows (and f32 columns) of a tile
constexpr int kKStep = 32;   // bf16 values of k per tile product
constexpr int kWBlocks = 3;  // weight tiles per k step (tmm3-5)

// Seven tiles of 16 rows of 64 bytes (amx_tiles.h: why the configuration is loaded this way).
void configure_tiles() {
  TileShape shapes[7];
  for (auto& shape : shapes) shape = {kTile, 64};
  load_tile_config(shapes, 7);
}

// Writes an accumulator tile stored in `block` (y^T: 16 weight rows x 16 rows of x) into y rows
// [m0, m0 + rows) and columns [n0, n0 + cols), adding the bias. (Tile numbers are assembler
// operands, so the caller stores the tile: _tile_stored(N, block, 64).)
void store_tile(const float* block, float* y, int64_t ldy, int64_t m0, int rows, int64_t n0,
                int cols, const float* bias) {
  __m512 r[kTile];
  for (int i = 0; i < kTile; ++i) r[i] = _mm512_load_ps(block + i * kTile);
  avx512::transpose16x16(r);  // r[m][n]
  const __mmask16 mask =
      cols >= kTile ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << cols) - 1);
  const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
  for (int m = 0; m < rows; ++m) {
    _mm512_mask_storeu_ps(y + (m0 + m) * ldy + n0, mask, _mm512_add_ps(r[m], b));
  }
}

// One block of 16 rows of x against `Blocks` (1..3) consecutive weight tiles, over all of K.
// Weight part p of tile i starts at a[p][i] (row stride `lda` bytes). Every (weight part, x
// part) pair with p_w + p_x < max(w_parts, x_parts) is multiplied: all three x parts against
// bf16 weights (one part), and hi.hi + hi.lo + lo.hi for two-part weights and x (lo.lo, 2^-16
// of 2^-16, is left out).
template <int Blocks>
void block_product(const uint16_t* const a[2][kWBlocks], int w_parts, int64_t lda,
                   const uint32_t* xp_block, int64_t k_steps, int64_t part_stride, int x_parts) {
  const int pairs = w_parts > x_parts ? w_parts : x_parts;
  _tile_zero(0);
  if constexpr (Blocks > 1) _tile_zero(1);
  if constexpr (Blocks > 2) _tile_zero(2);
  for (int64_t s = 0; s < k_steps; ++s) {
    const uint32_t* b = xp_block + s * kTile * kTile;
    for (int pw = 0; pw < w_parts; ++pw) {
      _tile_loadd(3, a[pw][0] + s * kKStep, lda);
      if constexpr (Blocks > 1) _tile_loadd(4, a[pw][1] + s * kKStep, lda);
      if constexpr (Blocks > 2) _tile_loadd(5, a[pw][2] + s * kKStep, lda);
      for (int px = 0; px < x_parts && pw + px < pairs; ++px) {
        _tile_loadd(6, b + px * part_stride, 64);
        _tile_dpbf16ps(0, 3, 6);
        if constexpr (Blocks > 1) _tile_dpbf16ps(1, 4, 6);
        if constexpr (Blocks > 2) _tile_dpbf16ps(2, 5, 6);
      }
    }
  }
}

// Every 16-row block of packed x against the `blocks` weight tiles at a (columns n0 ...), written
// to y (at most up to column n_end).
void sweep_x(const uint16_t* const a[2][kWBlocks], int w_parts, int64_t lda, int blocks,
             const uint32_t* xp, int64_t M, int64_t K, int x_parts, const float* bias, float* y,
             int64_t ldy, int64_t n0, int64_t n_end) {
  compiler_barrier();
  const int64_t m_blocks = (M + kTile - 1) / kTile, k_steps = K / kKStep;
  const int64_t part_stride = m_blocks * k_steps * kTile * kTile;
  for (int64_t mb = 0; mb < m_blocks; ++mb) {
    const uint32_t* xb = xp + mb * k_steps * kTile * kTile;
    switch (blocks) {
      case 1:
        block_product<1>(a, w_parts, lda, xb, k_steps, part_stride, x_parts);
        break;
      case 2:
        block_product<2>(a, w_parts, lda, xb, k_steps, part_stride, x_parts);
        break;
      default:
        block_product<3>(a, w_parts, lda, xb, k_steps, part_stride, x_parts);
        break;
    }
    const int rows = static_cast<int>(M - mb * kTile < kTile ? M - mb * kTile : kTile);
    alignas(64) float block[kWBlocks][kTile * kTile];
    _tile_stored(0, block[0], 64);
    if (blocks > 1) _tile_stored(1, block[1], 64);
    if (blocks > 2) _tile_stored(2, block[2], 64);
    for (int i = 0; i < blocks; ++i) {
      const int64_t c = n_end - (n0 + i * kTile);
      store_tile(block[i], y, ldy, mb * kTile, rows, n0 + i * kTile,
                 static_cast<int>(c < kTile ? c : kTile), bias);
    }
  }
}

// Each scratch slot is a 64-byte aligned buffer per thread that grows and is kept, so a matmul
// allocates nothing once the largest shape has been seen.
enum class Scratch { kRowsF32, kPanel, kTailRows };
template <Scratch slot, typename T>
T* scratch(size_t count) {
  thread_local void* buffer = nullptr;
  thread_local size_t capacity = 0;
  const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
  if (bytes > capacity) {
    std::free(buffer);
    buffer = std::aligned_alloc(64, bytes);
    capacity = bytes;
  }
  return static_cast<T*>(buffer);
}

// Some virtual machines report AMX and grant the permission, yet fault on the first tile
// instruction (llama.cpp dies there with SIGILL). So run one configure / zero / product /
// release sequence under a SIGILL handler before AMX is trusted.
sigjmp_buf probe_jump;

void on_probe_sigill(int) {
  siglongjmp(probe_jump, 1);
}

bool tiles_run() {
  struct sigaction probe {
  }, previous{};
  probe.sa_handler = on_probe_sigill;
  sigemptyset(&probe.sa_mask);
  if (sigaction(SIGILL, &probe, &previous) != 0) return false;
  bool ok = false;
  if (sigsetjmp(probe_jump, 1) == 0) {
    configure_tiles();
    _tile_zero(0);
    _tile_zero(3);
    _tile_zero(6);
    _tile_dpbf16ps(0, 3, 6);
    alignas(64) float out[kTile * kTile];
    _tile_stored(0, out, 64);
    _tile_release();
    ok = out[0] == 0.f;
  }
  sigaction(SIGILL, &previous, nullptr);
  return ok;
}

}  // namespace

bool usable() {
  static const bool ok = [] {
    if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
        !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq") ||
        !__builtin_cpu_supports("avx512bf16")) {
      return false;
    }
    // The OS must enable the tile state (XCR0 bits 17 and 18) and grant it to this process.
    const uint64_t xcr0 = _xgetbv(0);
    if ((xcr0 & (3ull << 17)) != (3ull << 17)) return false;
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
    return tiles_run();
  }();
  return ok;
}

void gemm_bf16(const uint32_t* xp, int64_t M, int parts, const WeightView& w, const float* bias,
               float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const int64_t lda = K * static_cast<int64_t>(sizeof(uint16_t));
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  configure_tiles();
  // A last block of fewer than 16 weight rows is read from a zero-padded copy.
  uint16_t* tail = nullptr;  // taken from scratch when a tail is met
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile * kWBlocks) {
    const int64_t left = n_end - n0;
    const int blocks =
        static_cast<int>(left >= kTile * kWBlocks ? kWBlocks : (left + kTile - 1) / kTile);
    const uint16_t* a[2][kWBlocks] = {{base, base, base}, {base, base, base}};
    for (int i = 0; i < blocks; ++i) {
      const int64_t first = n0 + i * kTile;
      if (n_end - first >= kTile) {
        a[0][i] = base + first * K;
      } else {
        if (tail == nullptr) tail = scratch<Scratch::kTailRows, uint16_t>(kTile * K);
        std::memset(tail, 0, kTile * lda);
        std::memcpy(tail, base + first * K, (n_end - first) * lda);
        a[0][i] = tail;
      }
    }
    sweep_x(a, 1, lda, blocks, xp, M, K, parts, bias, y, N, n0, n_end);
  }
  _tile_release();
}

void gemm_dequantized(const uint32_t* xp, int64_t M, int x_parts, const WeightView& w,
                      DequantizeRowsFn dequantize, const float* bias, float* y, int64_t n_begin,
                      int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const int64_t lda = K * static_cast<int64_t>(sizeof(uint16_t));
  constexpr int kPanelRows = kTile * kWBlocks;
  float* rows_f32 = scratch<Scratch::kRowsF32, float>(static_cast<size_t>(kPanelRows) * K);
  // panel[p]: weight part p of the 48 rows, bf16, row stride K.
  uint16_t* panel =
      scratch<Scratch::kPanel, uint16_t>(static_cast<size_t>(kPanelRows) * K * 2 + 32);
  uint16_t* parts[2] = {panel, panel + kPanelRows * K};
  configure_tiles();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanelRows) {
    const int rows = static_cast<int>(n_end - n0 < kPanelRows ? n_end - n0 : kPanelRows);
    const int blocks = (rows + kTile - 1) / kTile;
    dequantize(w, n0, rows, rows_f32);
    std::memset(rows_f32 + static_cast<int64_t>(rows) * K, 0,
                sizeof(float) * (blocks * kTile - rows) * K);
    // Each weight as hi + lo, two bf16 (16 significant bits).
    for (int64_t i = 0; i < static_cast<int64_t>(blocks) * kTile * K; i += 32) {
      const __m512 v0 = _mm512_loadu_ps(rows_f32 + i), v1 = _mm512_loadu_ps(rows_f32 + i + 16);
      const __m512i hi = (__m512i)_mm512_cvtne2ps_pbh(v1, v0);
      const __m512 h0 = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hi)), 16));
      const __m512 h1 = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hi, 1)), 16));
      const __m512i lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(v1, h1), _mm512_sub_ps(v0, h0));
      _mm512_storeu_si512(parts[0] + i, hi);
      _mm512_storeu_si512(parts[1] + i, lo);
    }
    const uint16_t* a[2][kWBlocks];
    for (int p = 0; p < 2; ++p) {
      for (int i = 0; i < kWBlocks; ++i) a[p][i] = parts[p] + (i < blocks ? i : 0) * kTile * K;
    }
    sweep_x(a, 2, lda, blocks, xp, M, K, x_parts, bias, y, N, n0, n_end);
  }
  _tile_release();
}

}  // namespace alem::cpu::amx
