// Prefill GEMM for bf16 weights on AVX512-BF16 (vdpbf16ps), with x rounded to bf16 once per
// matmul (the rounding of the decode kernels in matmul_dot_avx512.cc). The product is taken
// transposed, y^T = W x^T, as on AMX tiles (matmul_gemm_bf16_amx.cc): the weights are read where
// they lie, row after row, and never packed. x is packed once per matmul instead (pack_x_pairs,
// shared with the AMX kernel): for every 16 rows of x and every pair of k, one 64-byte vector
// holding (x[m][k], x[m][k+1]) for the 16 rows m.
//
// The register block is up to 8 weight rows by up to 4 such vectors (64 rows of x): per pair of
// k, one 4-byte broadcast of (W[n][k], W[n][k+1]) per weight row and one load per 16 rows of x
// feed rows x vectors vdpbf16ps (accumulator lane m of acc[r][v] is y[16v + m][n + r]). The
// block covers all of K, so the accumulators are written once, and each weight element is read
// from memory once per 64 rows of x. Fewer than 8 weight rows per block: more rows means more
// streams than the hardware prefetchers follow (docs/kernels.md, "bf16 prefill without packing").
// Replacing the packed-panel GEMM this file held before took the 1.1B shape's q/o matmul from
// 156 to 215 GFLOP/s at 64 rows, one thread, weights from DRAM, on a Zen 4 (peak about 236):
// packing the weight panels by 16x16 transposes had taken a quarter of its time.
#include <immintrin.h>

#include "kernels/cpu/bf16_coded_avx512.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512_dot {
namespace {

constexpr int kTile = 16;   // rows of x per packed vector, and pairs of k per packed tile
constexpr int kKStep = 32;  // values of k per packed tile

inline __mmask16 first_lanes(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1);
}

// (W[n][k], W[n][k + 1]) as one 32-bit unit; `half` reads only W[n][k] (k + 1 == K).
inline uint32_t weight_pair(const uint16_t* row, int64_t k, bool half) {
  if (half) return row[k];
  uint32_t pair;
  __builtin_memcpy(&pair, row + k, sizeof(pair));
  return pair;
}

// A register block's accumulators (lane m of acc[r][v] is y[16 v + m][r]): zeroed, and written
// to y rows [0, rows) and columns [0, NR) (row stride ldy) with the bias added.
template <int NR, int MV>
inline void zero_block(__m512 (&acc)[NR][MV]) {
  for (int r = 0; r < NR; ++r) {
    for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_setzero_ps();
  }
}
template <int NR, int MV>
inline void add_block(__m512 (&acc)[NR][MV], const __m512 (&more)[NR][MV]) {
  for (int r = 0; r < NR; ++r) {
    for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_add_ps(acc[r][v], more[r][v]);
  }
}
template <int NR, int MV>
inline void write_block(const __m512 (&acc)[NR][MV], float* y, int64_t ldy, int rows,
                        const float* bias) {
  alignas(64) float out[NR][MV * kTile];
  for (int r = 0; r < NR; ++r) {
    for (int v = 0; v < MV; ++v) _mm512_store_ps(out[r] + v * kTile, acc[r][v]);
  }
  for (int m = 0; m < rows; ++m) {
    for (int r = 0; r < NR; ++r) y[m * ldy + r] = out[r][m] + (bias ? bias[r] : 0.f);
  }
}

// NR weight rows (from `w`, row stride K) against MV packed 16-row vectors of x over all of K;
// writes y rows [0, rows) and columns [0, NR) at y (row stride ldy), adding the bias.
// With one vector of x (up to 16 rows), a block has only NR accumulators, too few chains for the
// instruction's latency at two per cycle (Zen 5): the pairs of k then alternate between two sets
// of accumulators (kChains), added at the end.
template <int MV>
constexpr int kChains = MV == 1 ? 2 : 1;

template <int NR, int MV>
void block(const uint16_t* w, int64_t K, const uint32_t* xp, int64_t block_stride, float* y,
           int64_t ldy, int rows, const float* bias) {
  __m512 acc[NR][MV], acc2[NR][MV];
  zero_block(acc);
  if constexpr (kChains<MV> == 2) zero_block(acc2);
  const int64_t full_steps = K / kKStep;
  auto pair_step = [&](__m512(&sums)[NR][MV], const uint32_t* xs, int64_t k, bool half) {
    __m512bh xv[MV];
    for (int v = 0; v < MV; ++v) {
      xv[v] = (__m512bh)_mm512_load_si512(xs + v * block_stride);
    }
    for (int r = 0; r < NR; ++r) {
      const __m512bh a =
          (__m512bh)_mm512_set1_epi32(static_cast<int>(weight_pair(w + r * K, k, half)));
      for (int v = 0; v < MV; ++v) sums[r][v] = _mm512_dpbf16_ps(sums[r][v], a, xv[v]);
    }
  };
  for (int64_t s = 0; s < full_steps; ++s) {
    const uint32_t* xs = xp + s * kTile * kTile;
    // The next block's weight rows (the NR rows after these, adjacent in memory) at this k,
    // into the L2: a block reads NR rows of K values, too short a run for the hardware
    // prefetchers at small K (SmolLM2's K = 576: 121 -> 202 GFLOP/s at 16 rows of x).
    for (int r = 0; r < NR; ++r) {
      asm volatile("prefetcht1 %0" : : "m"(*(w + (NR + r) * K + s * kKStep)));
    }
    for (int i = 0; i < kTile; i += 2) {
      pair_step(acc, xs + i * kTile, s * kKStep + 2 * i, false);
      pair_step(kChains<MV> == 2 ? acc2 : acc, xs + (i + 1) * kTile, s * kKStep + 2 * i + 2, false);
    }
  }
  const int64_t tail = K - full_steps * kKStep;  // values of k past the last full tile
  for (int64_t i = 0; 2 * i < tail; ++i) {
    const int64_t k = full_steps * kKStep + 2 * i;
    pair_step(acc, xp + full_steps * kTile * kTile + i * kTile, k, k + 1 == K);
  }
  if constexpr (kChains<MV> == 2) add_block(acc, acc2);
  write_block(acc, y, ldy, rows, bias);
}

// The same for coded bf16 weights (model/bf16_coded.h; K % 64 == 0): weight rows [n, n + NR) of
// `coded`, unpacked a chunk of 64 weights at a time into a buffer in the L1 between the dot
// products, so the 12-bit stream from memory overlaps the arithmetic as the plain one does.
template <int NR, int MV>
void coded_block(const Bf16CodedView& coded, int64_t n, const uint32_t* xp, int64_t block_stride,
                 float* y, int64_t ldy, int rows, const float* bias) {
  const int64_t K = coded.cols;
  __m512 acc[NR][MV], acc2[NR][MV];  // as in block: the same sums in the same order
  zero_block(acc);
  if constexpr (kChains<MV> == 2) zero_block(acc2);
  coded::ChunkRows<NR> source(coded, n, NR);
  alignas(64) uint16_t buf[NR * kBf16CodedChunk];
  const int64_t next_rows = n + NR + NR <= coded.rows ? NR : 0;  // the next block's, if whole
  for (int64_t c = 0; c < K / kBf16CodedChunk; ++c) {
    for (int64_t r = 0; r < next_rows; ++r) {
      const uint8_t* ahead = coded.row(n + NR + r) + c * kBf16CodedChunkBytes;
      asm volatile("prefetcht1 %0" : : "m"(*ahead));
      asm volatile("prefetcht1 %0" : : "m"(*(ahead + 64)));
    }
    source.unpack(c, buf);
    for (int half = 0; half < 2; ++half) {
      const uint32_t* xs = xp + (2 * c + half) * kTile * kTile;
      auto pair_step = [&](__m512(&sums)[NR][MV], int i) {
        __m512bh xv[MV];
        for (int v = 0; v < MV; ++v) {
          xv[v] = (__m512bh)_mm512_load_si512(xs + i * kTile + v * block_stride);
        }
        for (int r = 0; r < NR; ++r) {
          const __m512bh a = (__m512bh)_mm512_set1_epi32(
              static_cast<int>(weight_pair(buf + r * kBf16CodedChunk, 32 * half + 2 * i, false)));
          for (int v = 0; v < MV; ++v) sums[r][v] = _mm512_dpbf16_ps(sums[r][v], a, xv[v]);
        }
      };
      for (int i = 0; i < kTile; i += 2) {
        pair_step(acc, i);
        pair_step(kChains<MV> == 2 ? acc2 : acc, i + 1);
      }
    }
  }
  if constexpr (kChains<MV> == 2) add_block(acc, acc2);
  write_block(acc, y, ldy, rows, bias);
}

// One block of NR weight rows from row n, plain or coded.
template <int NR, int MV>
void weight_block(const uint16_t* base, int64_t K, int64_t n, const uint32_t* xp,
                  int64_t block_stride, float* y, int64_t ldy, int rows, const float* bias) {
  block<NR, MV>(base + n * K, K, xp, block_stride, y, ldy, rows, bias);
}
template <int NR, int MV>
void weight_block(const Bf16CodedView& coded, int64_t, int64_t n, const uint32_t* xp,
                  int64_t block_stride, float* y, int64_t ldy, int rows, const float* bias) {
  coded_block<NR, MV>(coded, n, xp, block_stride, y, ldy, rows, bias);
}

// Weight rows [n_begin, n_end) against MV vectors of x, in blocks of NR rows; a last block of
// fewer rows takes the block of its own width.
template <int NR, int MV, class Weights>
void sweep_weights(const Weights& weights, int64_t K, int64_t n_begin, int64_t n_end,
                   const uint32_t* xp, int64_t block_stride, float* y, int64_t ldy, int rows,
                   const float* bias) {
  int64_t n = n_begin;
  for (; n + NR <= n_end; n += NR) {
    weight_block<NR, MV>(weights, K, n, xp, block_stride, y + n, ldy, rows,
                         bias ? bias + n : nullptr);
  }
  if constexpr (NR > 1) {
    if (n < n_end) {
      sweep_weights<NR - 1, MV>(weights, K, n, n_end, xp, block_stride, y, ldy, rows, bias);
    }
  }
}

// y rows [0, M) x weight rows [n_begin, n_end), 64 rows of x at a time (their packed bf16,
// 128 * K bytes, stay in the L2 while every weight row of this thread streams past them); the
// weights are read once per 64 rows of x.
template <class Weights>
void gemm_rows(const Weights& weights, const uint32_t* xp, int64_t M, int64_t N, int64_t K,
               const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t block_stride = (K + kKStep - 1) / kKStep * kTile * kTile;  // one 16-row block
  constexpr int64_t kGroupRows = 4 * kTile;
  for (int64_t m0 = 0; m0 < M; m0 += kGroupRows) {
    const int rows = static_cast<int>(M - m0 < kGroupRows ? M - m0 : kGroupRows);
    const uint32_t* xg = xp + m0 / kTile * block_stride;
    float* yg = y + m0 * N;
    // Measured block shapes (rows x vectors), 1.1B q/o at 64 rows: 6x4 215 GFLOP/s, 8x3 216,
    // 8x2 210, 8x1 190-195; 12x2 185, 12x1 137, 16x1 93.
    switch ((rows + kTile - 1) / kTile) {
      case 1:
        sweep_weights<8, 1>(weights, K, n_begin, n_end, xg, block_stride, yg, N, rows, bias);
        break;
      case 2:
        sweep_weights<8, 2>(weights, K, n_begin, n_end, xg, block_stride, yg, N, rows, bias);
        break;
      case 3:
        sweep_weights<8, 3>(weights, K, n_begin, n_end, xg, block_stride, yg, N, rows, bias);
        break;
      default:
        sweep_weights<6, 4>(weights, K, n_begin, n_end, xg, block_stride, yg, N, rows, bias);
        break;
    }
  }
}

}  // namespace

void pack_x_pairs(const float* x, int64_t M, int64_t K, int parts, uint32_t* out) {
  const int64_t m_blocks = (M + kTile - 1) / kTile, k_steps = (K + kKStep - 1) / kKStep;
  const int64_t part_stride = m_blocks * k_steps * kTile * kTile;
  // Word 2i + 1 of the widened vector takes word i (or 16 + i) of the packed one.
  const __m512i widen_first = _mm512_slli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 16);
  const __m512i widen_second = _mm512_add_epi32(widen_first, _mm512_set1_epi32(16 << 16));
  for (int64_t mb = 0; mb < m_blocks; ++mb) {
    for (int64_t s = 0; s < k_steps; ++s) {
      // rest[m] holds what the earlier parts have not yet represented of x[m][k..k+32).
      const __mmask16 low = first_lanes(K - s * kKStep), high = first_lanes(K - s * kKStep - 16);
      __m512 rest[kTile][2];
      for (int m = 0; m < kTile; ++m) {
        const int64_t row = mb * kTile + m;
        rest[m][0] = rest[m][1] = _mm512_setzero_ps();
        if (row < M) {
          rest[m][0] = _mm512_maskz_loadu_ps(low, x + row * K + s * kKStep);
          rest[m][1] = _mm512_maskz_loadu_ps(high, x + row * K + s * kKStep + 16);
        }
      }
      for (int p = 0; p < parts; ++p) {
        __m512 r[kTile];
        for (int m = 0; m < kTile; ++m) {
          const __m512bh b = _mm512_cvtne2ps_pbh(rest[m][1], rest[m][0]);
          r[m] = _mm512_castsi512_ps((__m512i)b);
          if (p + 1 == parts) continue;
          // The 32 bf16 values back in f32, in input order (cvtne2ps_pbh puts its second operand
          // first): word i of b into the high half of lane i, and word 16 + i. What this part
          // leaves, x minus it, is exact in f32.
          const __m512 first = _mm512_castsi512_ps(
              _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, widen_first, (__m512i)b));
          const __m512 second = _mm512_castsi512_ps(
              _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, widen_second, (__m512i)b));
          rest[m][0] = _mm512_sub_ps(rest[m][0], first);
          rest[m][1] = _mm512_sub_ps(rest[m][1], second);
        }
        avx512::transpose16x16(r);  // r[pair][m]
        uint32_t* tile = out + p * part_stride + (mb * k_steps + s) * kTile * kTile;
        for (int i = 0; i < kTile; ++i) {
          _mm512_store_ps(reinterpret_cast<float*>(tile) + i * kTile, r[i]);
        }
      }
    }
  }
}

void gemm_bf16(const uint32_t* xp, int64_t M, const WeightView& w, const float* bias, float* y,
               int64_t n_begin, int64_t n_end) {
  if (w.layout == BlockLayout::kBf16Coded) {
    gemm_rows(bf16_coded_view(w.data, w.rows, w.cols), xp, M, w.rows, w.cols, bias, y, n_begin,
              n_end);
    return;
  }
  gemm_rows(static_cast<const uint16_t*>(w.data), xp, M, w.rows, w.cols, bias, y, n_begin, n_end);
}

}  // namespace alem::cpu::avx512_dot
