// Prefill GEMM for interleaved block weights on Intel AMX int8 tiles (TDPBSSD / TDPBUSD: a 16x64
// by 64x16 byte tile product, here 16x32 by 32x16 per block of 32 values), used when the CPU has
// AMX-INT8 and the kernel lets this process use the tile registers (amx::usable()).
//
// Before, block weights on AMX were expanded to f32 and split into two bf16 parts per 48 rows,
// then multiplied three times (matmul_gemm_bf16_amx.cc's gemm_dequantized): the expansion cost
// several times the tile products, and the 1.1B shape's Q8_0 prefill ran at a quarter of
// llama.cpp's (which multiplies int8 tiles). Here the weights stay integers: every 16 weight
// rows become a panel of B tiles once per call (avx512_vnni::int8_tile_panel: the chunks the
// interleaved VNNI kernels unpack are already a B tile's rows, value 4r..4r+3 of each of 16
// rows in 64 bytes), and each 16-row block of x meets the panel block by block.
//
// The activations are the block kernels' own (quantize_q16: int16 per block of 32 with scale d),
// split into a signed high byte and an unsigned low byte, x = 256 hi + lo. Per block: C_hi =
// x_hi . W (TDPBSSD) and C_lo = x_lo . W (TDPBUSD), both exact int32, so 256 C_hi + C_lo is the
// same int32 as the VNNI kernels' block sum; it is scaled in f32 by the weights' scale and x's
// d, plus (Q4_1, Q5_1, Q4_K, Q5_K) the weights' minimum times x's block sum. In eight-bit mode
// (ALEM_CPU_DOT=all) x is rounded to 8 bits and the low product is skipped. The result differs
// from the VNNI kernels only in the order of the f32 sums.
//
// The scales differ per block of 32 for every weight row and every row of x, so each block's
// int32 tile is stored and scaled with AVX-512 (16 rows: a load, a shift and an add, a
// conversion, a multiply and an FMA each) while the tiles multiply the next block: tiles 0/1
// take the even blocks, 2/3 the odd ones.
//
// Tiles: tmm0-3 C (16 rows of x by 16 weight rows, int32), tmm4/5 x's high / low bytes of one
// block (16 rows of 32 bytes, row stride K), tmm6/7 the panel's B tile of an even / odd block
// (8 rows of 64 bytes).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/amx_tiles.h"
#include "kernels/cpu/cpu_kernels.h"
#include "model/interleaved_blocks.h"

namespace alem::cpu::amx {
namespace {

constexpr int kTile = 16;              // rows of x per block of them, and weight rows per panel
constexpr int kBlock = 32;             // values of k per scale
constexpr int kPanelBlockBytes = 512;  // one block's B tile: 8 rows of 64 bytes

void configure_int8_tiles() {
  const TileShape shapes[8] = {{kTile, 64}, {kTile, 64}, {kTile, 64}, {kTile, 64},
                               {kTile, 32}, {kTile, 32}, {8, 64},     {8, 64}};
  load_tile_config(shapes, 8);
}

// acc[r] += (256 high[r] + low[r]) * scale * d[r] (+ minimum * s[r]): one block's int32 sums
// (16 rows of x by 16 weight rows) scaled into the f32 outputs.
template <bool kEightBit, bool kMinimum>
inline __attribute__((always_inline)) void scale_block(const int32_t* high, const int32_t* low,
                                                       const float* scale, const float* minimum,
                                                       const float* d, const float* s,
                                                       __m512* acc) {
  const __m512 w_scale = _mm512_load_ps(scale);
  const __m512 w_minimum = kMinimum ? _mm512_load_ps(minimum) : _mm512_setzero_ps();
  for (int r = 0; r < kTile; ++r) {
    __m512i v = _mm512_load_si512(high + r * kTile);
    if constexpr (!kEightBit) {
      v = _mm512_add_epi32(_mm512_slli_epi32(v, 8), _mm512_load_si512(low + r * kTile));
    }
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(w_scale, _mm512_set1_ps(d[r])),
                             acc[r]);
    if constexpr (kMinimum) acc[r] = _mm512_fmadd_ps(w_minimum, _mm512_set1_ps(s[r]), acc[r]);
  }
}

// Where the next panel's weights are, to be fetched into the L2 while this one is multiplied:
// `lines_per_block` cache lines from `next` per block of K.
struct NextPanel {
  const uint8_t* next = nullptr;
  int64_t lines_per_block = 0;
};

// One 16-row block of x against a panel of 16 weight rows, over all blocks of K; writes the
// `rows` valid rows of y (row stride ldy) at the `mask`ed columns, plus `bias`.
template <bool kEightBit, bool kMinimum>
void x_block(const int8_t* xh, const uint8_t* xl, int64_t K, const float* d, const float* s,
             const Int8TilePanel& panel, int64_t blocks, float* y, int64_t ldy, int rows,
             __mmask16 mask, __m512 bias, NextPanel next) {
  alignas(64) int32_t c[2][2][kTile * kTile];  // [parity][high, low]
  __m512 acc[kTile];
  for (auto& a : acc) a = _mm512_setzero_ps();
  // Tile numbers are assembler operands, so each parity's products are written out.
  const auto even = [&](int64_t b) {
    _tile_loadd(6, panel.codes + b * kPanelBlockBytes, 64);
    _tile_loadd(4, xh + b * kBlock, K);
    _tile_zero(0);
    _tile_dpbssd(0, 4, 6);
    if constexpr (!kEightBit) {
      _tile_loadd(5, xl + b * kBlock, K);
      _tile_zero(1);
      _tile_dpbusd(1, 5, 6);
    }
  };
  const auto odd = [&](int64_t b) {
    _tile_loadd(7, panel.codes + b * kPanelBlockBytes, 64);
    _tile_loadd(4, xh + b * kBlock, K);
    _tile_zero(2);
    _tile_dpbssd(2, 4, 7);
    if constexpr (!kEightBit) {
      _tile_loadd(5, xl + b * kBlock, K);
      _tile_zero(3);
      _tile_dpbusd(3, 5, 7);
    }
  };
  const auto scale = [&](int parity, int64_t b) {
    for (int64_t l = 0; l < next.lines_per_block; ++l) {
      _mm_prefetch(reinterpret_cast<const char*>(next.next + (b * next.lines_per_block + l) * 64),
                   _MM_HINT_T1);
    }
    scale_block<kEightBit, kMinimum>(c[parity][0], c[parity][1], panel.scales + b * kTile,
                                     panel.minimums + b * kTile, d + b * kTile, s + b * kTile, acc);
  };
  // Block b + 1's products are issued before block b's sums are scaled.
  even(0);
  for (int64_t b = 0; b < blocks; b += 2) {
    if (b + 1 < blocks) odd(b + 1);
    _tile_stored(0, c[0][0], 64);
    if constexpr (!kEightBit) _tile_stored(1, c[0][1], 64);
    compiler_barrier();
    scale(0, b);
    if (b + 1 < blocks) {
      if (b + 2 < blocks) even(b + 2);
      _tile_stored(2, c[1][0], 64);
      if constexpr (!kEightBit) _tile_stored(3, c[1][1], 64);
      compiler_barrier();
      scale(1, b + 1);
    }
  }
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, mask, _mm512_add_ps(acc[r], bias));
  }
}

}  // namespace

size_t tile_activation_bytes(int64_t M, int64_t K) {
  const int64_t rows = (M + kTile - 1) / kTile * kTile, blocks = K / kBlock;
  return static_cast<size_t>(rows * K * 2 + rows * blocks * 2 * sizeof(float));
}

TileActivations tile_activations(int64_t M, int64_t K, bool eight_bit, void* buffer) {
  const int64_t rows = (M + kTile - 1) / kTile * kTile, blocks = K / kBlock;
  TileActivations x;
  x.high = static_cast<int8_t*>(buffer);
  x.low = reinterpret_cast<uint8_t*>(x.high + rows * K);
  x.d = reinterpret_cast<float*>(x.low + rows * K);
  x.s = x.d + rows * blocks;
  x.M = M;
  x.K = K;
  x.eight_bit = eight_bit;
  return x;
}

void split_rows_for_tiles(const Q16Blocks& a, const TileActivations& x, int64_t m_begin,
                          int64_t m_end) {
  const int64_t K = x.K, blocks = K / kBlock;
  const __m512 to_8_bits = _mm512_set1_ps(127.f / 32767.f);
  for (int64_t m = m_begin; m < m_end; ++m) {
    // Scales and sums as [16-row block][block][16].
    float* dm = x.d + (m / kTile) * blocks * kTile + m % kTile;
    float* sm = x.s + (m / kTile) * blocks * kTile + m % kTile;
    if (m >= x.M) {
      std::fill(x.high + m * K, x.high + (m + 1) * K, int8_t{0});
      std::fill(x.low + m * K, x.low + (m + 1) * K, uint8_t{0});
      for (int64_t b = 0; b < blocks; ++b) dm[b * kTile] = sm[b * kTile] = 0.f;
      continue;
    }
    for (int64_t b = 0; b < blocks; ++b) {
      const __m512i q = _mm512_loadu_si512(a.q + m * K + b * kBlock);
      auto* h = reinterpret_cast<__m256i*>(x.high + m * K + b * kBlock);
      auto* l = reinterpret_cast<__m256i*>(x.low + m * K + b * kBlock);
      float scale = a.d[m * blocks + b];
      if (x.eight_bit) {
        // q8 = round(q * 127 / 32767) as the interleaved kernels round it, with scale d'.
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(q)));
        const __m512 hi =
            _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(q, 1)));
        const __m128i lo8 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, to_8_bits)));
        const __m128i hi8 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, to_8_bits)));
        _mm256_storeu_si256(h, _mm256_inserti128_si256(_mm256_castsi128_si256(lo8), hi8, 1));
        _mm256_storeu_si256(l, _mm256_setzero_si256());
        scale *= 32767.f / 127.f;
      } else {
        _mm256_storeu_si256(h, _mm512_cvtepi16_epi8(_mm512_srai_epi16(q, 8)));
        _mm256_storeu_si256(l, _mm512_cvtepi16_epi8(q));  // the low byte, unsigned
      }
      dm[b * kTile] = scale;
      sm[b * kTile] = a.s[m * blocks + b];
    }
  }
}

void gemm_int8(const TileActivations& x, const WeightView& w, Int8TilePanelFn make_panel,
               const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows, blocks = K / kBlock;
  const int64_t m_blocks = (x.M + kTile - 1) / kTile;
  const bool minimum = int8_tile_panel_has_minimum(w.dtype);
  const int64_t row_bytes = static_cast<int64_t>(interleaved_row_bytes(w.dtype, K));
  Int8TilePanel panel;
  panel.codes = static_cast<int8_t*>(
      thread_scratch(ScratchSlot::kTileCodes, static_cast<size_t>(blocks) * kPanelBlockBytes));
  panel.scales = static_cast<float*>(
      thread_scratch(ScratchSlot::kTileScales, static_cast<size_t>(blocks) * kTile * 4));
  panel.minimums = minimum
                       ? static_cast<float*>(thread_scratch(
                             ScratchSlot::kTileMinimums, static_cast<size_t>(blocks) * kTile * 4))
                       : panel.scales;  // read, never used
  configure_int8_tiles();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kTile) {
    const int64_t n1 = std::min<int64_t>(n0 + kTile, n_end);
    make_panel(w, n0, n1, panel);
    compiler_barrier();
    // The next panel's interleaved rows (one contiguous range), fetched during the first block
    // of x: the panel is otherwise made from DRAM with nothing to overlap it.
    NextPanel next;
    if (n1 < n_end) {
      const int64_t rows_next = std::min<int64_t>(kTile, n_end - n1);
      next.next = static_cast<const uint8_t*>(w.data) + n1 * row_bytes;
      next.lines_per_block = (rows_next * row_bytes / blocks + 63) / 64;
    }
    const __mmask16 mask = static_cast<__mmask16>((1u << (n1 - n0)) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
    for (int64_t mb = 0; mb < m_blocks; ++mb) {
      const int8_t* xh = x.high + mb * kTile * K;
      const uint8_t* xl = x.low + mb * kTile * K;
      const float* d = x.d + mb * blocks * kTile;
      const float* s = x.s + mb * blocks * kTile;
      const int rows = static_cast<int>(std::min<int64_t>(kTile, x.M - mb * kTile));
      float* out = y + mb * kTile * N + n0;
      if (x.eight_bit) {
        if (minimum) {
          x_block<true, true>(xh, xl, K, d, s, panel, blocks, out, N, rows, mask, b,
                              mb == 0 ? next : NextPanel{});
        } else {
          x_block<true, false>(xh, xl, K, d, s, panel, blocks, out, N, rows, mask, b,
                               mb == 0 ? next : NextPanel{});
        }
      } else if (minimum) {
        x_block<false, true>(xh, xl, K, d, s, panel, blocks, out, N, rows, mask, b,
                             mb == 0 ? next : NextPanel{});
      } else {
        x_block<false, false>(xh, xl, K, d, s, panel, blocks, out, N, rows, mask, b,
                              mb == 0 ? next : NextPanel{});
      }
    }
  }
  _tile_release();
}

}  // namespace alem::cpu::amx
