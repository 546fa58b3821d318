// Decode matmul kernels built on the CPU's own dot-product instructions (AVX512-BF16 vdpbf16ps,
// AVX512-VNNI vpdpbusd): the activations are brought to the weights' format once per matmul
// (bf16 for bf16 weights; int8 with one scale per 32 values for int8 weights, as llama.cpp's
// Q8_0 activations) and every weight byte then costs one or two instructions instead of a
// widening conversion plus an FMA. Used for small M (decode) when the CPU reports the features;
// the exact f32-conversion kernels in matmul_avx512.cc stay the fallback.
//
// Accuracy (stated in docs/kernels.md, checked in tests/unit/test_kernels.cc):
//  * bf16: x rounded to bf16 (relative error <= 2^-8 per value), products summed in f32.
//  * int8 weights: x quantised to 16 bits per 32 values with scale d = amax / 32767 (error
//    <= d / 2 per value; 8-bit activations as llama.cpp's Q8_0 moved SmolLM2's greedy tokens
//    off transformers', 16 bits do not), products summed exactly in int32 per block, then scaled
//    in f32. A 16-bit value q = 256 h + l is fed to vpdpbusd (unsigned x signed bytes) as two
//    byte planes: l (unsigned) against the signed weights, and h (signed) against the weights
//    offset by 128 (w ^ 0x80), whose extra 128 * sum(h) per block is removed by starting the
//    accumulator lanes at -16 * sum(h) (8 lanes per 32-value block); the h sum is shifted left 8
//    and the l sum added on top, so each block costs 2 dot products per 64 weights.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512_dot {
namespace {

constexpr int kRowsPerBlock = 4;  // weight rows per register block
constexpr int kXPerBlock = 4;     // rows of x per register block

inline __mmask32 first_words(int64_t count) {
  return count >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << count) - 1);
}

// out lane i = sum of the 16 lanes of v[i], for i < 16.
inline __m512 reduce16(const __m512 v[16]) {
  __m512 a[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 b[4];
  for (int j = 0; j < 4; ++j) {
    const __m512d lo = _mm512_castps_pd(a[2 * j]), hi = _mm512_castps_pd(a[2 * j + 1]);
    b[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)));
  }
  const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Writes the MB x R sums of acc (only the first `rows` weight rows) to y.
template <int MB, int R>
inline void store_block(__m512 (&acc)[MB][R], int rows, const float* bias, float* y, int64_t ldy) {
  if constexpr (MB == 1 && R == 1) {
    if (rows > 0) y[0] = _mm512_reduce_add_ps(acc[0][0]) + (bias ? bias[0] : 0.f);
    return;
  }
  static_assert(MB * R <= 16, "one shuffle tree reduces at most 16 accumulators");
  __m512 v[16];
  for (int i = 0; i < 16; ++i) v[i] = i < MB * R ? acc[i / R][i % R] : _mm512_setzero_ps();
  alignas(64) float sums[16];
  _mm512_store_ps(sums, reduce16(v));
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < rows; ++r) y[m * ldy + r] = sums[m * R + r] + (bias ? bias[r] : 0.f);
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 x bf16 -> f32 (vdpbf16ps: 32 products per instruction, pairs summed into 16 f32 lanes).

template <int MB, int R = kRowsPerBlock>
void bf16_block(const uint16_t* xb, int64_t ldx, const uint16_t* w, int64_t K, int rows,
                const float* bias, float* y, int64_t ldy) {
  const uint16_t* row[R];
  for (int r = 0; r < R; ++r) row[r] = w + (r < rows ? r : 0) * K;
  __m512 acc[MB][R];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  const int64_t ahead = 2 * R * K;
  int64_t k = 0;
  if constexpr (MB == 1 && R == 1) {
    // One row against one weight row (decode): a single accumulator would wait out the
    // vdpbf16ps latency (6 cycles on an AMD Zen 4) every 64 bytes, slower than memory; two
    // chains, 64 bytes each, keep it ahead of the stream.
    __m512 second = _mm512_setzero_ps();
    const bool prefetch = stream_prefetches(StreamKind::kLight, static_cast<size_t>(K) * 2);
    for (; k + 64 <= K; k += 64) {
      prefetch_stream(prefetch, row[0] + k);
      prefetch_stream(prefetch, row[0] + k + 32);
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(row[0] + k);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(row[0] + k + 32);
      acc[0][0] = _mm512_dpbf16_ps(acc[0][0], (__m512bh)_mm512_loadu_si512(xb + k), w0);
      second = _mm512_dpbf16_ps(second, (__m512bh)_mm512_loadu_si512(xb + k + 32), w1);
    }
    acc[0][0] = _mm512_add_ps(acc[0][0], second);
  }
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) {
      // The next register block's rows follow these in memory (one row: a stream).
      if constexpr (R == 1) {
        prefetch_stream<wide_weights_stream(MB)>(row[r] + k);
      } else {
        _mm_prefetch(reinterpret_cast<const char*>(row[r] + ahead + k), _MM_HINT_T0);
      }
      wv[r] = (__m512bh)_mm512_loadu_si512(row[r] + k);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + m * ldx + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
  }
  if (k < K) {
    // x is zero-padded to a multiple of 32 values, so only the weights need the mask.
    const __mmask32 mask = first_words(K - k);
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) {
      wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, row[r] + k);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + m * ldx + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
  }
  store_block<MB, R>(acc, rows, bias, y, ldy);
}

// ---------------------------------------------------------------------------------------------
// int8 weights x 16-bit activations (two vpdpbusd per 64 weights), per-32 scales on both sides.

template <int MB, int R = kRowsPerBlock>
void int8_block(const Q16Activations& a, const int8_t* w, const float* w_scales, int64_t K,
                int rows, const float* bias, float* y, int64_t ldy) {
  const int8_t* row[R];
  const float* scale[R];
  const int64_t groups = K / kInt8GroupSize;
  for (int r = 0; r < R; ++r) {
    row[r] = w + (r < rows ? r : 0) * K;
    scale[r] = w_scales + (r < rows ? r : 0) * groups;
  }
  __m512 acc[MB][R];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  const int64_t ahead = 2 * R * K;  // the next register block's rows (one row: a stream)
  for (int64_t k = 0; k < K; k += 64) {
    const int64_t g = k / kInt8GroupSize;
    const bool pair = k + 64 <= K;  // else the last 32 weights (K is a multiple of 32)
    __m512i wv[R], wo[R];
    __m512 ws[R];
    for (int r = 0; r < R; ++r) {
      if constexpr (R == 1) {
        prefetch_stream<StreamKind::kHeavy>(row[r] + k);  // int8: heavy at every M
      } else {
        _mm_prefetch(reinterpret_cast<const char*>(row[r] + ahead + k), _MM_HINT_T0);
      }
      const __m512i q = pair ? _mm512_loadu_si512(row[r] + k)
                             : _mm512_castsi256_si512(_mm256_loadu_si256(
                                   reinterpret_cast<const __m256i*>(row[r] + k)));
      wv[r] = q;
      wo[r] = _mm512_xor_si512(q, offset);
      const __m512 low = _mm512_set1_ps(scale[r][g]);
      ws[r] = pair ? _mm512_mask_mov_ps(low, 0xFF00, _mm512_set1_ps(scale[r][g + 1])) : low;
    }
    for (int m = 0; m < MB; ++m) {
      const int64_t lane = m * a.stride / 4 + k / 4;
      const __m512i xh = _mm512_loadu_si512(a.high + m * a.stride + k);
      const __m512i xl = _mm512_loadu_si512(a.low + m * a.stride + k);
      const __m512i start = _mm512_loadu_si512(a.lane_offsets + lane);
      const __m512 xs = _mm512_loadu_ps(a.lane_scales + lane);
      for (int r = 0; r < R; ++r) {
        const __m512i high = _mm512_slli_epi32(_mm512_dpbusd_epi32(start, wo[r], xh), 8);
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(high, xl, wv[r]));
        acc[m][r] = _mm512_fmadd_ps(dot, _mm512_mul_ps(ws[r], xs), acc[m][r]);
      }
    }
  }
  store_block<MB, R>(acc, rows, bias, y, ldy);
}

// Rows of x per register block for the `left` rows still to do: 4 at a time, 5 as 3 + 2.
inline int x_rows(int64_t left) {
  return left == 5 ? 3 : static_cast<int>(left < kXPerBlock ? left : kXPerBlock);
}

}  // namespace

void to_bf16(const float* x, int64_t M, int64_t K, uint16_t* out, int64_t stride) {
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    uint16_t* dst = out + m * stride;
    for (int64_t k = 0; k < stride; k += 16) {
      const __mmask16 mask = K - k >= 16 ? static_cast<__mmask16>(0xFFFF)
                                         : static_cast<__mmask16>(K > k ? (1u << (K - k)) - 1 : 0);
      const __m512 v = _mm512_maskz_loadu_ps(mask, src + k);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

void quantize_q16(const float* x, int64_t M, int64_t K, int8_t* high, uint8_t* low,
                  int32_t* lane_offsets, float* lane_scales, int64_t stride) {
  const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m512i byte = _mm512_set1_epi32(0xFF);
  for (int64_t m = 0; m < M; ++m) {
    const float* src = x + m * K;
    int8_t* h = high + m * stride;
    uint8_t* l = low + m * stride;
    int32_t* offsets = lane_offsets + m * stride / 4;
    float* scales = lane_scales + m * stride / 4;
    for (int64_t k = 0; k < stride; k += kInt8GroupSize) {
      if (k >= K) {  // padding block: zero values, zero scale
        for (int i = 0; i < kInt8GroupSize; ++i) h[k + i] = 0, l[k + i] = 0;
        for (int i = 0; i < 8; ++i) offsets[k / 4 + i] = 0, scales[k / 4 + i] = 0.f;
        continue;
      }
      const __m512 v0 = _mm512_loadu_ps(src + k), v1 = _mm512_loadu_ps(src + k + 16);
      const float amax = _mm512_reduce_max_ps(
          _mm512_max_ps(_mm512_and_ps(v0, sign_off), _mm512_and_ps(v1, sign_off)));
      const float d = amax / 32767.f;
      const __m512 inv = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f);
      const __m512i lim = _mm512_set1_epi32(32767);
      const __m512i q0 =
          _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), lim),
                           _mm512_sub_epi32(_mm512_setzero_si512(), lim));
      const __m512i q1 =
          _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv)), lim),
                           _mm512_sub_epi32(_mm512_setzero_si512(), lim));
      const __m512i h0 = _mm512_srai_epi32(q0, 8), h1 = _mm512_srai_epi32(q1, 8);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(h + k), _mm512_cvtepi32_epi8(h0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(h + k + 16), _mm512_cvtepi32_epi8(h1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(l + k),
                       _mm512_cvtepi32_epi8(_mm512_and_si512(q0, byte)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(l + k + 16),
                       _mm512_cvtepi32_epi8(_mm512_and_si512(q1, byte)));
      const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(h0, h1));
      for (int i = 0; i < 8; ++i) offsets[k / 4 + i] = -16 * sum, scales[k / 4 + i] = d;
    }
  }
}

void matmul_bf16(const uint16_t* xb, int64_t M, int64_t stride, const WeightView& w,
                 const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  if (M == 1) {  // one row at a time: one sequential stream (see matmul_int8)
    for (int64_t n = n_begin; n < n_end; ++n) {
      bf16_block<1, 1>(xb, stride, base + n * K, K, 1, bias ? bias + n : nullptr, y + n, N);
    }
    return;
  }
  for (int64_t n = n_begin; n < n_end; n += kRowsPerBlock) {
    const int rows = static_cast<int>(n_end - n < kRowsPerBlock ? n_end - n : kRowsPerBlock);
    const float* b = bias ? bias + n : nullptr;
    for (int64_t m = 0; m < M;) {
      const int mb = x_rows(M - m);
      const uint16_t* xm = xb + m * stride;
      float* ym = y + m * N + n;
      const uint16_t* wn = base + n * K;
      switch (mb) {
        case 1:
          bf16_block<1>(xm, stride, wn, K, rows, b, ym, N);
          break;
        case 2:
          bf16_block<2>(xm, stride, wn, K, rows, b, ym, N);
          break;
        case 3:
          bf16_block<3>(xm, stride, wn, K, rows, b, ym, N);
          break;
        default:
          bf16_block<4>(xm, stride, wn, K, rows, b, ym, N);
          break;
      }
      m += mb;
    }
  }
}

void matmul_int8(const Q16Activations& a, int64_t M, const WeightView& w, const float* bias,
                 float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const int8_t* base = static_cast<const int8_t*>(w.data);
  const int64_t groups = K / kInt8GroupSize;
  if (M == 1) {
    // Decode: one weight row after another, so the matrix is read as one sequential stream.
    // Rows side by side are short streams that restart every row; on an AMD Zen 4 the hardware
    // prefetchers kept those at about a third of the read bandwidth (docs/kernels.md).
    for (int64_t n = n_begin; n < n_end; ++n) {
      int8_block<1, 1>(a, base + n * K, w.scales + n * groups, K, 1, bias ? bias + n : nullptr,
                       y + n, N);
    }
    return;
  }
  for (int64_t n = n_begin; n < n_end; n += kRowsPerBlock) {
    const int rows = static_cast<int>(n_end - n < kRowsPerBlock ? n_end - n : kRowsPerBlock);
    const float* b = bias ? bias + n : nullptr;
    for (int64_t m = 0; m < M;) {
      const int mb = x_rows(M - m);
      Q16Activations am = a;
      am.high += m * a.stride;
      am.low += m * a.stride;
      am.lane_offsets += m * a.stride / 4;
      am.lane_scales += m * a.stride / 4;
      float* ym = y + m * N + n;
      const int8_t* wn = base + n * K;
      const float* sn = w.scales + n * groups;
      switch (mb) {
        case 1:
          int8_block<1>(am, wn, sn, K, rows, b, ym, N);
          break;
        case 2:
          int8_block<2>(am, wn, sn, K, rows, b, ym, N);
          break;
        case 3:
          int8_block<3>(am, wn, sn, K, rows, b, ym, N);
          break;
        default:
          int8_block<4>(am, wn, sn, K, rows, b, ym, N);
          break;
      }
      m += mb;
    }
  }
}

}  // namespace alem::cpu::avx512_dot
