// Matmul kernels for AVX-512 CPUs (16 floats per vector): y[M][N] = x[M][K] * W[N][K]^T.
//  * matmul_stream (decode, small M): each thread streams its rows of W exactly once, in their
//    stored dtype, converting 16 weights at a time in registers and applying them to every row
//    of x (dot-product form, horizontal sums at the end of each row). Memory-bound by design.
//    bf16 weights (decode and continuous-batching decode) take their own form that converts 32
//    weights with 2 instructions and feeds each to every row of x (stream_bf16): one weight row
//    at a time up to 4 rows of x (while x stays in the L1), 4 weight rows side by side from 5,
//    and from 8 rows of x, 8 weight rows against 2 rows of x held in registers (wide_block,
//    which f16 weights take too).
//  * matmul_packed (prefill): W is converted and transposed, one 48-column x kDepth tile at a
//    time, into an f32 panel on the stack that stays in L1 while an 8x48 register-blocked
//    micro-kernel (24 accumulators, x values broadcast) sweeps every row of x over it.
// bf16 -> f32 is a 16-bit shift and int8 is q * scale in f32, exactly what the reference does,
// so results differ from it only by summation order. x is never rounded to bf16.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"

namespace alem::cpu::avx512 {
namespace {

constexpr int kMicroRows = 8;  // rows of x per micro-kernel call
constexpr int kDepth = 256;    // k extent of one packed panel (48 x 256 f32 = 48 KiB)
constexpr int kVectors = kPanelCols / 16;

template <DType D>
constexpr int64_t element_bytes() {
  return D == DType::F32 ? 4 : (D == DType::I8 ? 1 : 2);
}

// One weight row as the kernels read it: its first byte and (int8 only) its group scales.
struct WeightRow {
  const uint8_t* data;
  const float* scales;
};

template <DType D>
inline WeightRow weight_row(const WeightView& w, int64_t n) {
  WeightRow row;
  row.data = static_cast<const uint8_t*>(w.data) + n * w.cols * element_bytes<D>();
  row.scales = D == DType::I8 ? w.scales + n * (w.cols / kInt8GroupSize) : nullptr;
  return row;
}

inline __m512 bf16x16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// 16 weights of `row` from column k as f32.
template <DType D>
inline __m512 load_weights(const WeightRow& row, int64_t k) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row.data) + k);
  } else if constexpr (D == DType::BF16) {
    return bf16x16_to_f32(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(row.data) + k)));
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(reinterpret_cast<const uint16_t*>(row.data) + k)));
  } else {
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row.data + k));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)),
                         _mm512_set1_ps(row.scales[k / kInt8GroupSize]));
  }
}

// The first popcount(mask) weights from column k; lanes outside the mask are zero.
template <DType D>
inline __m512 load_weights_masked(const WeightRow& row, int64_t k, __mmask16 mask) {
  if constexpr (D == DType::F32) {
    return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(row.data) + k);
  } else if constexpr (D == DType::BF16) {
    return bf16x16_to_f32(
        _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(row.data) + k));
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(
        _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(row.data) + k));
  } else {
    const __m128i q = _mm_maskz_loadu_epi8(mask, row.data + k);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)),
                         _mm512_set1_ps(row.scales[k / kInt8GroupSize]));
  }
}

inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1);
}

// ----------------------------------------------------------------------------------------------
// Streaming (decode) kernel: Rows weight rows x MB rows of x, dot-product form.

template <DType D, int MB, int Rows>
void stream_block(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                  float* y, int64_t N) {
  WeightRow rows[Rows];
  for (int r = 0; r < Rows; ++r) rows[r] = weight_row<D>(w, n + r);
  __m512 acc[MB][Rows];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  // The next group of rows follows this one in memory; fetch it while this one is computed.
  const int64_t group_bytes = Rows * K * element_bytes<D>();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[Rows];
    for (int r = 0; r < Rows; ++r) {
      _mm_prefetch(
          reinterpret_cast<const char*>(rows[r].data + group_bytes + k * element_bytes<D>()),
          _MM_HINT_T0);
      wv[r] = load_weights<D>(rows[r], k);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_loadu_ps(x + m * K + k);
      for (int r = 0; r < Rows; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mask = first_lanes(K - k);
    __m512 wv[Rows];
    for (int r = 0; r < Rows; ++r) wv[r] = load_weights_masked<D>(rows[r], k, mask);
    for (int m = 0; m < MB; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
      for (int r = 0; r < Rows; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) {
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
  }
}

// int8 variant of stream_block for one row of x: per 32-weight group, sum q*x over the group in
// f32, then scale the partial sum once (w = q * scale, so this is the same sum regrouped; it saves
// a multiply per vector, which matters because int8 decode is bound by conversion work, not
// memory).
template <int MB, int Rows>
void stream_block_int8(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                       float* y, int64_t N) {
  const int8_t* rows[Rows];
  const float* scales[Rows];
  for (int r = 0; r < Rows; ++r) {
    rows[r] = static_cast<const int8_t*>(w.data) + (n + r) * K;
    scales[r] = w.scales + (n + r) * (K / kInt8GroupSize);
  }
  __m512 acc[MB][Rows];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) acc[m][r] = _mm512_setzero_ps();
  }
  const int64_t group_bytes = Rows * K;
  for (int64_t k = 0; k < K; k += kInt8GroupSize) {
    __m512 low[Rows], high[Rows];
    for (int r = 0; r < Rows; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(rows[r] + group_bytes + k), _MM_HINT_T0);
      const __m128i* q = reinterpret_cast<const __m128i*>(rows[r] + k);
      low[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q)));
      high[r] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1)));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 x_low = _mm512_loadu_ps(x + m * K + k);
      const __m512 x_high = _mm512_loadu_ps(x + m * K + k + 16);
      for (int r = 0; r < Rows; ++r) {
        const __m512 group_sum = _mm512_fmadd_ps(high[r], x_high, _mm512_mul_ps(low[r], x_low));
        acc[m][r] =
            _mm512_fmadd_ps(group_sum, _mm512_set1_ps(scales[r][k / kInt8GroupSize]), acc[m][r]);
      }
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) {
      y[m * N + n + r] = _mm512_reduce_add_ps(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
  }
}

// One weight row against one row of x (decode). Rows are walked one after another, so the whole
// matrix is read as one sequential stream: the hardware prefetchers follow it at full speed,
// where 4 or 8 rows read side by side (short streams that restart every row) ran at a third of
// the read bandwidth on an AMD Zen 4 (docs/kernels.md). Two accumulators hide the FMA latency;
// the weights are prefetched ahead (prefetch_stream).
template <DType D>
void stream_row(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                float* y, bool prefetch) {
  const WeightRow row = weight_row<D>(w, n);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    // The rows lie one after another, so the stream runs on into the next rows.
    for (int line = 0; line < 32 * element_bytes<D>(); line += 64) {
      prefetch_stream(prefetch, row.data + k * element_bytes<D>() + line);
    }
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load_weights<D>(row, k), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), load_weights<D>(row, k + 16), acc1);
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = first_lanes(K - k);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, x + k), load_weights_masked<D>(row, k, mask),
                           acc0);
  }
  y[n] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + (bias ? bias[n] : 0.f);
}

template <DType D, int MB, int Rows>
void stream_block_any(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                      float* y, int64_t N) {
  if constexpr (D == DType::I8 && MB == 1) {
    stream_block_int8<MB, Rows>(x, K, w, n, bias, y, N);
  } else {
    stream_block<D, MB, Rows>(x, K, w, n, bias, y, N);
  }
}

// Up to 4 rows of x at once (the weight rows stay in L1 between passes over groups of 4).
template <DType D, int Rows>
void stream_block_rows(const float* x, int64_t M, int64_t K, const WeightView& w, int64_t n,
                       const float* bias, float* y, int64_t N) {
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const float* xm = x + m0 * K;
    float* ym = y + m0 * N;
    switch (M - m0 >= 4 ? 4 : M - m0) {
      case 1:
        stream_block_any<D, 1, Rows>(xm, K, w, n, bias, ym, N);
        break;
      case 2:
        stream_block_any<D, 2, Rows>(xm, K, w, n, bias, ym, N);
        break;
      case 3:
        stream_block_any<D, 3, Rows>(xm, K, w, n, bias, ym, N);
        break;
      default:
        stream_block_any<D, 4, Rows>(xm, K, w, n, bias, ym, N);
        break;
    }
  }
}

// ----------------------------------------------------------------------------------------------
// Small-batch bf16 kernel (2..16 rows of x: continuous-batching decode). One 512-bit load brings
// 32 bf16 weights; a shift gives the even-indexed ones as f32 and a mask the odd-indexed ones
// (2 conversion instructions per 32 weights instead of 4 per 32 through a widening move). x is
// permuted once per call into the same even/odd order, so every dot product is unchanged but
// for summation order. A 4x4 register block (16 accumulators) lets each converted weight vector
// feed 4 rows of x and each x vector 4 weight rows, and the 16 accumulators are reduced
// together by one shuffle tree rather than one horizontal sum each.

constexpr int kPairRows = 4;   // weight rows per register block
constexpr int kBlockRows = 4;  // rows of x per register block

// out lane i = sum of the 16 lanes of v[i], for i < 16.
inline __m512 reduce16(const __m512 v[16]) {
  __m512 a[8];
  for (int i = 0; i < 8; ++i) {
    // Per 128-bit lane: [v2i, v2i+1, v2i, v2i+1] partial sums.
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 b[4];
  for (int j = 0; j < 4; ++j) {
    // Per 128-bit lane: that lane's sums of v4j .. v4j+3.
    const __m512d lo = _mm512_castps_pd(a[2 * j]), hi = _mm512_castps_pd(a[2 * j + 1]);
    b[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(lo, hi)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(lo, hi)));
  }
  // Fold the four 128-bit lanes: 128-bit lane j of the result holds b[j]'s totals.
  const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// xp[m][32j .. 32j+16) = x[m][32j + 0, 2, .., 30], xp[m][32j+16 .. 32j+32) = the odd ones.
void permute_even_odd(const float* x, int64_t M, int64_t K, float* xp) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t i = 0; i < M * K; i += 32) {
    const __m512 lo = _mm512_loadu_ps(x + i), hi = _mm512_loadu_ps(x + i + 16);
    _mm512_store_ps(xp + i, _mm512_permutex2var_ps(lo, even, hi));
    _mm512_store_ps(xp + i + 16, _mm512_permutex2var_ps(lo, odd, hi));
  }
}

// y[m][n + r] for m < MB, r < rows (<= kPairRows weight rows side by side), from permuted x
// rows xp (stride K): the small-batch kernel from 5 rows of x, where the step is bound by loads
// of x, which the weight rows side by side share.
// The weight rows two blocks ahead are prefetched from `ahead` (row stride ahead_row_bytes,
// ahead_pair_bytes per pair of weights): the plain matrix's own rows, or a coded matrix's
// (bf16_coded.h) while this block reads them unpacked.
struct PairAhead {
  const char* rows = nullptr;
  int64_t row_bytes = 0;
  int pair_bytes = 0;
};

// A register block's start: its PR weight rows from w (row stride K; rows past `rows` repeat the
// first, so a short last block reads valid memory) and its accumulators zeroed.
template <int MB, int PR>
inline void start_block(const uint16_t* w, int64_t K, int rows, const uint16_t* (&row)[PR],
                        __m512 (&acc)[MB][PR]) {
  for (int r = 0; r < PR; ++r) row[r] = w + (r < rows ? r : 0) * K;
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < PR; ++r) acc[m][r] = _mm512_setzero_ps();
  }
}

template <int MB>
void bf16_pair_block(const float* xp, int64_t K, const uint16_t* w, int rows, const float* bias,
                     float* y, int64_t N, PairAhead ahead) {
  constexpr int PR = kPairRows;
  const uint16_t* row[PR];
  __m512 acc[MB][PR];
  start_block(w, K, rows, row, acc);
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t k = 0; k < K; k += 32) {
    __m512 even[PR], odd[PR];
    for (int r = 0; r < PR; ++r) {
      // Weight rows are contiguous: fetch two blocks ahead (8 rows, as the M <= 2 path does).
      _mm_prefetch(ahead.rows + r * ahead.row_bytes + k / 2 * ahead.pair_bytes, _MM_HINT_T0);
      const __m512i v = _mm512_loadu_si512(row[r] + k);
      even[r] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      odd[r] = _mm512_castsi512_ps(_mm512_and_si512(v, high_half));
    }
    for (int m = 0; m < MB; ++m) {
      const __m512 xe = _mm512_load_ps(xp + m * K + k);
      const __m512 xo = _mm512_load_ps(xp + m * K + k + 16);
      for (int r = 0; r < PR; ++r) {
        acc[m][r] = _mm512_fmadd_ps(xe, even[r], acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(xo, odd[r], acc[m][r]);
      }
    }
  }
  __m512 v[16];
  for (int i = 0; i < 16; ++i) {
    v[i] = i < MB * PR ? acc[i / PR][i % PR] : _mm512_setzero_ps();
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, reduce16(v));
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < rows; ++r) y[m * N + r] = sums[m * PR + r] + (bias ? bias[r] : 0.f);
  }
}

// Rows of x per register block for the `left` rows still to do: 4 at a time, but 5 as 3 + 2
// so no block runs a single row.
inline int block_rows(int64_t left) {
  return left == 5 ? 3 : static_cast<int>(left < kBlockRows ? left : kBlockRows);
}

// bf16_pair_block for a run-time count of x rows (1 .. kBlockRows).
void bf16_pair_block_rows(int mb, const float* xm, int64_t K, const uint16_t* w, int rows,
                          const float* bias, float* y, int64_t N, PairAhead ahead) {
  switch (mb) {
    case 1:
      return bf16_pair_block<1>(xm, K, w, rows, bias, y, N, ahead);
    case 2:
      return bf16_pair_block<2>(xm, K, w, rows, bias, y, N, ahead);
    case 3:
      return bf16_pair_block<3>(xm, K, w, rows, bias, y, N, ahead);
    default:
      return bf16_pair_block<4>(xm, K, w, rows, bias, y, N, ahead);
  }
}

// From this many rows of x, 8 weight rows are taken side by side against 2 rows of x held in
// registers (wide_block) instead of 4 against 4. x no longer fits the L1 at these sizes
// (16 rows of K = 2048 in f32 are 128 KiB), so every pass over a block of weight rows reads its
// rows of x from the L2: 4 weight rows per x vector asked the L2 for 16 bytes per FMA, which held
// the Zen 5's full-width FMA units to 55-65% of their peak; 8 ask for 8. The 1.1B shape's
// matmuls at 16-32 rows of x, one thread, weights from DRAM: 140-180 -> 175-230 GFLOP/s (f32 FMA
// peak 263-277). At 5-7 rows the 4 x 4 block stays ahead (docs/kernels.md).
constexpr int64_t kWideMinRows = 8;
constexpr int kWideRows = 8;  // weight rows per wide block

// The weight rows a wide block's successor two ahead will read, prefetched into the L1 in
// address order (one sequential stream), spread evenly over the passes of the block: `bytes` is
// this pass's share, `step` bytes of it per 32 weights of a row.
struct WideAhead {
  const char* bytes = nullptr;
  int64_t step = 0;

  void prefetch(int64_t s) const {
    const uintptr_t lo = reinterpret_cast<uintptr_t>(bytes) + static_cast<uintptr_t>(s * step);
    for (uintptr_t at = (lo + 63) & ~uintptr_t{63}; at < lo + step; at += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
    }
  }
};

// 32 16-bit weights from `at` as two f32 vectors, in the order x is kept in for them: bf16 as
// its even- and odd-indexed values (a shift and a mask; x permuted by permute_even_odd), f16 as
// the first and the last 16 (vcvtph2ps; x as it is).
template <DType D>
inline void widen32(const uint16_t* at, __m512* first, __m512* second) {
  const __m512i v = _mm512_loadu_si512(at);
  if constexpr (D == DType::BF16) {
    *first = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    *second =
        _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  } else {
    static_assert(D == DType::F16);
    *first = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
    *second = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
  }
}

// y[m][n + r] for m < MB (1 .. 3), r < rows (<= kWideRows), from x rows xp (stride K, K % 32 ==
// 0; bf16: permuted to even/odd order) and kWideRows bf16 or f16 weight rows w (stride K; rows
// past `rows` repeat the first). Per 32 weights: MB x vector pairs loaded once, then each weight
// row converted (widen32) and fed to every row of x: MB x kWideRows accumulators, 2 FMAs each.
// Only weights [k0, k1) when K is tiled (kWideTileK): the first tile writes y with the bias, the
// others add to it.
template <DType D, int MB>
void wide_block(const float* xp, int64_t K, int64_t k0, int64_t k1, const uint16_t* w, int rows,
                const float* bias, float* y, int64_t N, WideAhead ahead) {
  constexpr int PR = kWideRows;
  const uint16_t* row[PR];
  __m512 acc[MB][PR];
  start_block(w, K, rows, row, acc);
  for (int64_t k = k0; k < k1; k += 32) {
    ahead.prefetch((k - k0) / 32);
    __m512 xe[MB], xo[MB];
    for (int m = 0; m < MB; ++m) {
      xe[m] = _mm512_loadu_ps(xp + m * K + k);
      xo[m] = _mm512_loadu_ps(xp + m * K + k + 16);
    }
    for (int r = 0; r < PR; ++r) {
      __m512 first, second;
      widen32<D>(row[r] + k, &first, &second);
      for (int m = 0; m < MB; ++m) {
        acc[m][r] = _mm512_fmadd_ps(xe[m], first, acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(xo[m], second, acc[m][r]);
      }
    }
  }
  constexpr int kSums = (MB * PR + 15) / 16 * 16;
  alignas(64) float sums[kSums];
  for (int g = 0; g < kSums; g += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) {
      v[i] = g + i < MB * PR ? acc[(g + i) / PR][(g + i) % PR] : _mm512_setzero_ps();
    }
    _mm512_store_ps(sums + g, reduce16(v));
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < rows; ++r) {
      const float sum = sums[m * PR + r];
      y[m * N + r] = k0 > 0 ? y[m * N + r] + sum : sum + (bias ? bias[r] : 0.f);
    }
  }
}

// Rows of up to kWideWholeK weights are taken whole: 8 rows of 2048 bf16 weights are 32 KiB,
// which stay in the L1 across the passes over rows of x. Longer rows are cut into even tiles of
// at most kWideTileK (24 KiB for 8 rows): the 1.1B shape's down matrix (K = 5632, 4 tiles of
// 1408) at 64 rows of x, one thread, ran 160-170 GFLOP/s whole and 195-207 tiled. Tiles of K =
// 2048 itself gained nothing on the 1.1B shape's other matrices.
constexpr int64_t kWideWholeK = 2048;
constexpr int64_t kWideTileK = 1536;

inline int64_t wide_tile_k(int64_t K) {
  if (K <= kWideWholeK) return K;
  const int64_t tiles = (K + kWideTileK - 1) / kWideTileK;
  return ((K + tiles - 1) / tiles + 31) / 32 * 32;
}

// All M (>= 2) rows of x against `rows` weight rows w (kWideRows at most), 2 rows of x per pass
// and the last 3 together when M is odd; `next` (next_bytes long) is what the block two ahead
// will read.
template <DType D>
void wide_blocks(const float* xp, int64_t M, int64_t K, const uint16_t* w, int rows,
                 const float* bias, float* y, int64_t N, const void* next, int64_t next_bytes) {
  const int64_t passes = M / 2, steps = K / 32;
  const int64_t step = (next_bytes + passes * steps - 1) / (passes * steps);
  const char* ahead_at = static_cast<const char*>(next);
  const int64_t tile = wide_tile_k(K);
  for (int64_t k0 = 0; k0 < K; k0 += tile) {
    const int64_t k1 = std::min(K, k0 + tile);
    for (int64_t m = 0; m < M;) {
      const WideAhead ahead{ahead_at, step};
      ahead_at += (k1 - k0) / 32 * step;
      if (M - m == 3) {
        wide_block<D, 3>(xp + m * K, K, k0, k1, w, rows, bias, y + m * N, N, ahead);
        m += 3;
      } else {
        wide_block<D, 2>(xp + m * K, K, k0, k1, w, rows, bias, y + m * N, N, ahead);
        m += 2;
      }
    }
  }
}

// Up to this many rows of x, bf16 weight rows are walked one at a time (stream_rows_bf16, all
// rows of x in one pass): the matrix is one sequential stream. Rows side by side (4 short
// streams restarting every row) read memory at a third of the speed on an AMD Zen 4, which
// costs more than the register reuse saves while the step is memory-bound. From 5 rows the step
// is bound by loads of x, which 4 weight rows side by side share (alem bench batch,
// docs/kernels.md: concurrency 2 and 4 served 1.8x and 1.45x the tokens/s; one weight row at 8
// rows lost 20%).
constexpr int64_t kOneWeightRowMaxM = 4;

// Whether M rows of x of K values take the one-weight-row kernel: up to kOneWeightRowMaxM rows
// whose x stays in the L1 (kOneWeightRowMaxXBytes), and always one row.
inline bool one_weight_row(int64_t M, int64_t K) {
  return M == 1 || (M <= kOneWeightRowMaxM &&
                    M * K * static_cast<int64_t>(sizeof(float)) <= kOneWeightRowMaxXBytes);
}

// bf16 decode, MB (1 .. kOneWeightRowMaxM) rows of x permuted to even/odd order
// (permute_even_odd, stride K, K % 32 == 0), over weight rows [n_begin, n_end): one 512-bit load
// brings 32 weights, a shift and a mask make them f32, and two accumulators per row of x and 64
// weight bytes (four for one row) hide the FMA latency. The widening load of stream_row (a
// cross-lane vpmovzxwd per 16 weights) kept the AMD Zen 4's kernel at about 44 GB/s even from
// the cache, too close to its 30 GB/s read bandwidth to keep the stream busy. Rows are walked
// one after another: the matrix is one sequential stream.
template <int MB>
void stream_rows_bf16(const float* xp, int64_t K, const uint16_t* base, const float* bias, float* y,
                      int64_t N, int64_t n_begin, int64_t n_end) {
  const bool prefetch =
      stream_prefetches(wide_weights_stream(MB), static_cast<size_t>(MB * K) * sizeof(float));
  const __m512i high_half = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint16_t* row = base + n * K;
    __m512 acc[MB][4];
    for (int m = 0; m < MB; ++m) {
      for (int c = 0; c < 4; ++c) acc[m][c] = _mm512_setzero_ps();
    }
    const auto weights32 = [&](int64_t k, int chain) {  // 32 weights at k into chains chain, +1
      const __m512i v = _mm512_loadu_si512(row + k);
      const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
      const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(v, high_half));
      for (int m = 0; m < MB; ++m) {
        const float* xk = xp + m * K + k;
        acc[m][chain] = _mm512_fmadd_ps(_mm512_load_ps(xk), even, acc[m][chain]);
        acc[m][chain + 1] = _mm512_fmadd_ps(_mm512_load_ps(xk + 16), odd, acc[m][chain + 1]);
      }
    };
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      prefetch_stream(prefetch, row + k);
      weights32(k, 0);
      prefetch_stream(prefetch, row + k + 32);
      weights32(k + 32, 2);
    }
    if (k < K) weights32(k, 0);  // the last 32 weights when K is an odd multiple of 32
    for (int m = 0; m < MB; ++m) {
      const __m512 sum =
          _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]), _mm512_add_ps(acc[m][2], acc[m][3]));
      y[m * N + n] = _mm512_reduce_add_ps(sum) + (bias ? bias[n] : 0.f);
    }
  }
}

// bf16 matmul for M rows of x permuted to even/odd order (K % 32 == 0) over weight rows
// [n_begin, n_end), below the packed GEMM's sizes.
// stream_rows_bf16 for a run-time M in 1 .. kOneWeightRowMaxM.
void stream_rows_bf16_m(int64_t M, const float* xp, int64_t K, const uint16_t* base,
                        const float* bias, float* y, int64_t N, int64_t n_begin, int64_t n_end) {
  switch (M) {
    case 1:
      return stream_rows_bf16<1>(xp, K, base, bias, y, N, n_begin, n_end);
    case 2:
      return stream_rows_bf16<2>(xp, K, base, bias, y, N, n_begin, n_end);
    case 3:
      return stream_rows_bf16<3>(xp, K, base, bias, y, N, n_begin, n_end);
    default:
      return stream_rows_bf16<4>(xp, K, base, bias, y, N, n_begin, n_end);
  }
}

void stream_bf16_rows(const float* xp, int64_t M, const WeightView& w, const float* bias, float* y,
                      int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  if (one_weight_row(M, K)) {
    stream_rows_bf16_m(M, xp, K, base, bias, y, N, n_begin, n_end);
    return;
  }
  if (M >= kWideMinRows) {
    for (int64_t n = n_begin; n < n_end; n += kWideRows) {
      const int rows = static_cast<int>(n_end - n < kWideRows ? n_end - n : kWideRows);
      wide_blocks<DType::BF16>(xp, M, K, base + n * K, rows, bias ? bias + n : nullptr, y + n, N,
                               base + (n + 2 * kWideRows) * K, kWideRows * K * 2);
    }
    return;
  }
  for (int64_t n = n_begin; n < n_end; n += kPairRows) {
    const int rows = static_cast<int>(n_end - n < kPairRows ? n_end - n : kPairRows);
    const float* b = bias ? bias + n : nullptr;
    for (int64_t m = 0; m < M;) {
      const int mb = block_rows(M - m);
      const PairAhead ahead{reinterpret_cast<const char*>(base + (n + 2 * kPairRows) * K), 2 * K,
                            4};
      bf16_pair_block_rows(mb, xp + m * K, K, base + n * K, rows, b, y + m * N + n, N, ahead);
      m += mb;
    }
  }
}

// The same from x as it is: permuted once per call into this thread's scratch.
void stream_bf16(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                 int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  float* xp = static_cast<float*>(
      thread_scratch(ScratchSlot::kPermutedX, static_cast<size_t>(M * K) * sizeof(float)));
  permute_even_odd(x, M, K, xp);
  stream_bf16_rows(xp, M, w, bias, y, n_begin, n_end);
}

template <DType D>
void stream_impl(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                 int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  if (D == DType::BF16 && K % 32 == 0) {
    stream_bf16(x, M, w, bias, y, n_begin, n_end);
    return;
  }
  if (D == DType::F16 && K % 32 == 0 && M >= kWideMinRows) {
    // The bf16 kernel's wide blocks, on x as it is (f16 converts in order).
    const uint16_t* base = static_cast<const uint16_t*>(w.data);
    for (int64_t n = n_begin; n < n_end; n += kWideRows) {
      const int rows = static_cast<int>(n_end - n < kWideRows ? n_end - n : kWideRows);
      wide_blocks<DType::F16>(x, M, K, base + n * K, rows, bias ? bias + n : nullptr, y + n, N,
                              base + (n + 2 * kWideRows) * K, kWideRows * K * 2);
    }
    return;
  }
  int64_t n = n_begin;
  if (M == 1) {
    // x (f32) is re-read for every weight row: its size decides the prefetches (cpu_kernels.h).
    const bool prefetch =
        stream_prefetches(StreamKind::kLight, static_cast<size_t>(K) * sizeof(float));
    for (; n < n_end; ++n) {
      if constexpr (D == DType::I8) {
        stream_block_int8<1, 1>(x, K, w, n, bias, y, N);
      } else {
        stream_row<D>(x, K, w, n, bias, y, prefetch);
      }
    }
    return;
  }
  if (M <= 2) {
    for (; n + 8 <= n_end; n += 8) stream_block_rows<D, 8>(x, M, K, w, n, bias, y, N);
  }
  for (; n + 4 <= n_end; n += 4) stream_block_rows<D, 4>(x, M, K, w, n, bias, y, N);
  for (; n < n_end; ++n) stream_block_rows<D, 1>(x, M, K, w, n, bias, y, N);
}

// ----------------------------------------------------------------------------------------------
// Packed (prefill) GEMM.

// panel[k][c] = W[n0 + c][k0 + k] as f32 for c < kPanelCols, k < depth; columns at or past
// `cols` are zero.
template <DType D>
void pack_panel(const WeightView& w, int64_t n0, int cols, int64_t k0, int depth, float* panel) {
  for (int group = 0; group < kVectors; ++group) {
    WeightRow rows[16];
    for (int j = 0; j < 16; ++j) {
      const int c = group * 16 + j;
      rows[j] = weight_row<D>(w, n0 + (c < cols ? c : 0));
    }
    for (int kk = 0; kk < depth; kk += 16) {
      const int count = depth - kk < 16 ? depth - kk : 16;
      const __mmask16 mask = first_lanes(count);
      __m512 r[16];
      for (int j = 0; j < 16; ++j) {
        if (group * 16 + j >= cols) {
          r[j] = _mm512_setzero_ps();
        } else if (count == 16) {
          r[j] = load_weights<D>(rows[j], k0 + kk);
        } else {
          r[j] = load_weights_masked<D>(rows[j], k0 + kk, mask);
        }
      }
      transpose16x16(r);
      for (int i = 0; i < count; ++i) {
        _mm512_store_ps(panel + (kk + i) * kPanelCols + group * 16, r[i]);
      }
    }
  }
}

// y[m][0..cols) (+)= sum_k x[m][k] * panel[k][..] for MR rows; `first` writes (adding bias),
// otherwise accumulates into y.
template <int MR>
void micro_kernel(const float* x, int64_t ldx, const float* panel, int depth, float* y, int64_t ldy,
                  int cols, bool first, const float* bias) {
  __m512 acc[MR][kVectors];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_setzero_ps();
  }
  for (int k = 0; k < depth; ++k) {
    __m512 b[kVectors];
    for (int v = 0; v < kVectors; ++v) b[v] = _mm512_load_ps(panel + k * kPanelCols + v * 16);
    for (int m = 0; m < MR; ++m) {
      const __m512 a = _mm512_set1_ps(x[m * ldx + k]);
      for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm512_fmadd_ps(a, b[v], acc[m][v]);
    }
  }
  for (int v = 0; v < kVectors; ++v) {
    const int remaining = cols - v * 16;
    if (remaining <= 0) break;
    const __mmask16 mask = first_lanes(remaining);
    const __m512 base =
        bias && first ? _mm512_maskz_loadu_ps(mask, bias + v * 16) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      float* out = y + m * ldy + v * 16;
      const __m512 prior = first ? base : _mm512_maskz_loadu_ps(mask, out);
      _mm512_mask_storeu_ps(out, mask, _mm512_add_ps(acc[m][v], prior));
    }
  }
}

constexpr int kPanelAlign = 64;

}  // namespace

#include "kernels/cpu/matmul_driver.inc"

void permute_x_even_odd(const float* x, int64_t M, int64_t K, float* out) {
  permute_even_odd(x, M, K, out);
}

void stream_bf16_permuted(const float* xp, int64_t M, const WeightView& w, const float* bias,
                          float* y, int64_t n_begin, int64_t n_end) {
  if (w.layout != BlockLayout::kBf16Coded) {
    stream_bf16_rows(xp, M, w, bias, y, n_begin, n_end);
    return;
  }
  // Coded weights: a block of rows at a time unpacked into a buffer in the L1 (16 KiB at
  // K = 2048 for kPairRows rows), then the plain kernels on it; the rows stream in order, one
  // sequential stream.
  const int64_t K = w.cols, N = w.rows;
  const Bf16CodedView coded = bf16_coded_view(w.data, N, K);
  const bool wide = M >= kWideMinRows;
  const int64_t block = wide ? kWideRows : kPairRows;
  auto* rows_bf16 = static_cast<uint16_t*>(
      thread_scratch(ScratchSlot::kCodedRows, static_cast<size_t>(block * K) * sizeof(uint16_t)));
  for (int64_t n = n_begin; n < n_end; n += block) {
    const int rows = static_cast<int>(n_end - n < block ? n_end - n : block);
    unpack_coded_rows(coded, n, rows, rows_bf16);
    const float* b = bias ? bias + n : nullptr;
    if (wide) {
      wide_blocks<DType::BF16>(xp, M, K, rows_bf16, rows, b, y + n, N,
                               coded.row(std::min(n + 2 * block, N - 1)),
                               block * static_cast<int64_t>(coded.row_bytes()));
      continue;
    }
    const PairAhead ahead{
        reinterpret_cast<const char*>(coded.row(std::min(n + 2 * kPairRows, N - 1))),
        static_cast<int64_t>(coded.row_bytes()), 3};
    if (one_weight_row(M, K)) {
      stream_rows_bf16_m(M, xp, K, rows_bf16, b, y + n, N, 0, rows);
      continue;
    }
    for (int64_t m = 0; m < M;) {
      const int mb = block_rows(M - m);
      bf16_pair_block_rows(mb, xp + m * K, K, rows_bf16, rows, b, y + m * N + n, N, ahead);
      m += mb;
    }
  }
}

}  // namespace alem::cpu::avx512
