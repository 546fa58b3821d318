// Prefill GEMM for bf16 weights on AVX512-BF16 (vdpbf16ps): y[M][N] = x[M][K] W[N][K]^T with x
// rounded to bf16 once per matmul (the same rounding as the decode kernels in
// matmul_dot_avx512.cc). W is packed, one 48-column x kDepth tile at a time, into a panel of
// bf16 pairs, panel[k/2][c] = (W[c][k], W[c][k+1]) as one 32-bit unit, by 16x16 transposes of
// 32-bit units (no conversion: the panel stays bf16, half the bytes of the f32 panel of
// matmul_avx512.cc). An 8 x 48 register block (24 f32 accumulators) then sweeps every row of x
// over the panel: per pair of k, 3 panel loads and 8 broadcasts of x pairs feed 24 vdpbf16ps,
// each 32 multiply-adds, so the panel's packing is shared by all rows of the batch.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512_dot {
namespace {

constexpr int kMicroRows = 8;
constexpr int kPanelCols = 48;
constexpr int kVectors = kPanelCols / 16;
constexpr int kDepth = 256;  // k extent of one panel: 128 pairs x 48 columns x 4 bytes = 24 KiB

inline __mmask32 first_words(int64_t count) {
  return count >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << count) - 1);
}

// panel[p][c] (32-bit units) = W[n0 + c][k0 + 2p .. 2p + 1] for c < kPanelCols, p < pairs;
// columns at or past `cols` and values at or past K are zero.
void pack_pairs(const uint16_t* w, int64_t K, int64_t n0, int cols, int64_t k0, int depth,
                uint32_t* panel) {
  const int pairs = (depth + 1) / 2;
  for (int group = 0; group < kVectors; ++group) {
    const uint16_t* rows[16];
    for (int j = 0; j < 16; ++j) {
      const int c = group * 16 + j;
      rows[j] = w + (n0 + (c < cols ? c : 0)) * K + k0;
    }
    for (int kk = 0; kk < depth; kk += 32) {  // 32 bf16 = 16 pairs per row per step
      const __mmask32 mask = first_words(depth - kk);
      __m512 r[16];
      for (int j = 0; j < 16; ++j) {
        r[j] = group * 16 + j >= cols
                   ? _mm512_setzero_ps()
                   : _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(mask, rows[j] + kk));
      }
      avx512::transpose16x16(r);
      const int p0 = kk / 2;
      const int count = pairs - p0 < 16 ? pairs - p0 : 16;
      for (int i = 0; i < count; ++i) {
        _mm512_store_si512(panel + (p0 + i) * kPanelCols + group * 16, _mm512_castps_si512(r[i]));
      }
    }
  }
}

template <int MR>
void micro_kernel(const uint16_t* x, int64_t ldx, const uint32_t* panel, int pairs, float* y,
                  int64_t ldy, int cols, bool first, const float* bias) {
  __m512 acc[MR][kVectors];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_setzero_ps();
  }
  for (int p = 0; p < pairs; ++p) {
    __m512bh b[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      b[v] = (__m512bh)_mm512_load_si512(panel + p * kPanelCols + v * 16);
    }
    for (int m = 0; m < MR; ++m) {
      uint32_t pair;
      __builtin_memcpy(&pair, x + m * ldx + 2 * p, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], a, b[v]);
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    const int remaining = cols - v * 16;
    if (remaining <= 0) break;
    const __mmask16 mask = remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << remaining) - 1);
    const __m512 base =
        bias && first ? _mm512_maskz_loadu_ps(mask, bias + v * 16) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      float* out = y + m * ldy + v * 16;
      const __m512 prior = first ? base : _mm512_maskz_loadu_ps(mask, out);
      _mm512_mask_storeu_ps(out, mask, _mm512_add_ps(acc[m][v], prior));
    }
  }
}

template <int MR>
void micro_kernel_rows(int rows, const uint16_t* x, int64_t ldx, const uint32_t* panel, int pairs,
                       float* y, int64_t ldy, int cols, bool first, const float* bias) {
  if constexpr (MR > 1) {
    if (rows < MR) {
      return micro_kernel_rows<MR - 1>(rows, x, ldx, panel, pairs, y, ldy, cols, first, bias);
    }
  }
  micro_kernel<MR>(x, ldx, panel, pairs, y, ldy, cols, first, bias);
}

}  // namespace

void gemm_bf16(const uint16_t* xb, int64_t stride, int64_t m_begin, int64_t m_end,
               const WeightView& w, const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  alignas(64) uint32_t panel[kDepth / 2 * kPanelCols];
  // Columns in chunks whose partial sums (rows x chunk) stay in the L2 across the k tiles, as in
  // the f32 packed GEMM (gemm_chunk_cols).
  const int64_t chunk = gemm_chunk_cols(m_end - m_begin, kPanelCols);
  for (int64_t c0 = n_begin; c0 < n_end; c0 += chunk) {
    const int64_t c1 = n_end - c0 < chunk ? n_end : c0 + chunk;
    for (int64_t k0 = 0; k0 < K; k0 += kDepth) {
      const int depth = static_cast<int>(K - k0 < kDepth ? K - k0 : kDepth);
      const int pairs = (depth + 1) / 2;
      for (int64_t n0 = c0; n0 < c1; n0 += kPanelCols) {
        const int cols = static_cast<int>(c1 - n0 < kPanelCols ? c1 - n0 : kPanelCols);
        pack_pairs(base, K, n0, cols, k0, depth, panel);
        for (int64_t m0 = m_begin; m0 < m_end; m0 += kMicroRows) {
          const int rows = static_cast<int>(m_end - m0 < kMicroRows ? m_end - m0 : kMicroRows);
          micro_kernel_rows<kMicroRows>(rows, xb + m0 * stride + k0, stride, panel, pairs,
                                        y + m0 * N + n0, N, cols, k0 == 0,
                                        bias ? bias + n0 : nullptr);
        }
      }
    }
  }
}

}  // namespace alem::cpu::avx512_dot
