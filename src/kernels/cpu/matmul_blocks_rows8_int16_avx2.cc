// Q8_0, alem's int8, IQ4_NL and IQ4_XS on interleaved weights (model/interleaved_blocks.h) with
// AVX2. Their signed weight bytes against x's bytes would saturate AVX2's byte products
// (vpmaddubsw; see matmul_interleaved_avx2.h), so this kernel multiplies x's int16 values
// directly (the IQ4 types' values first looked up from their indices by vpshufb): per block
// column of a group (8 rows x 32 values, the 8 scales first) every chunk of 32 bytes (values
// 4k..4k+3 of each row) is widened once to int16, rows 0-3 in one register and 4-7 in another,
// and serves up to 4 rows of x; per row of x and chunk, x's 4 values broadcast, two vpmaddwd and
// two adds. Each row's two int32 lanes are summed at the block's end (one vphaddd and a
// permute), so the block sum is the same exact int32 as the row-major kernel's, scaled once by
// the 8 rows' scales in one multiply. 8 rows per 256-bit register; no two-group form.
#include "kernels/cpu/matmul_interleaved_avx2.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx2 {
namespace {

using interleaved::SplitX;

// The 8 chunks of 32 signed bytes of one block of 32 (values 4k..4k+3 of each row): loaded
// (Q8_0, int8), or looked up from 4 chunks of IQ4 index nibbles by vpshufb (chunk k's low
// nibbles the indices of chunk k, its high ones those of chunk k + 4).
template <bool kIq4>
inline __attribute__((always_inline)) void block_chunks(const uint8_t* values, __m256i* w) {
  if constexpr (kIq4) {
    const __m256i table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4Values)));
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
    for (int k = 0; k < 4; ++k) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 32 * k));
      w[k] = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low_nibbles));
      w[4 + k] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles));
    }
  } else {
    for (int k = 0; k < 8; ++k)
      w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(values + 32 * k));
  }
}

// acc[i] += the 8 rows' exact int32 sums of the block's w times x[i]'s block b, times wd and x's
// scale. Per chunk, rows 0-3 (two lanes each: values 4k, 4k+1 and 4k+2, 4k+3) and rows 4-7.
template <int MR>
inline __attribute__((always_inline)) void accumulate_int16(const __m256i* w, __m256 wd,
                                                            const SplitX* x, int64_t b,
                                                            __m256* acc) {
  __m256i low_rows[MR], high_rows[MR];
  for (int i = 0; i < MR; ++i) low_rows[i] = high_rows[i] = _mm256_setzero_si256();
  for (int k = 0; k < 8; ++k) {
    const __m256i w03 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(w[k]));
    const __m256i w47 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(w[k], 1));
    for (int i = 0; i < MR; ++i) {
      long long four;
      __builtin_memcpy(&four, x[i].q + b * 32 + 4 * k, 8);
      const __m256i xk = _mm256_set1_epi64x(four);
      low_rows[i] = _mm256_add_epi32(low_rows[i], _mm256_madd_epi16(w03, xk));
      high_rows[i] = _mm256_add_epi32(high_rows[i], _mm256_madd_epi16(w47, xk));
      // Keeps GCC from reassociating the sums: it computed all 64 products of a block first
      // and spilled them to the stack (prefill at 92 GFLOP/s; 127 with the sums in order).
      asm("" : "+x"(low_rows[i]), "+x"(high_rows[i]));
    }
  }
  for (int i = 0; i < MR; ++i) {
    // hadd per 128-bit lane: rows 0, 1, 4, 5 | 2, 3, 6, 7; the permute orders them 0..7.
    const __m256i sums =
        _mm256_permute4x64_epi64(_mm256_hadd_epi32(low_rows[i], high_rows[i]), 0xD8);
    acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(wd, _mm256_set1_ps(x[i].d[b])),
                             acc[i]);
  }
}

template <int MR>
inline void store_rows(const __m256* acc, const float* bias, float* const* y) {
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(y[i], bias ? _mm256_add_ps(acc[i], _mm256_loadu_ps(bias)) : acc[i]);
  }
}

// y[i][0 .. 8) for MR rows of x from the group of 8 weight rows at `group`: Q8_0's f16 scales,
// int8's f32 ones (or its 16-bit amax codes, in Q8_0's column: S), or IQ4_NL's column (f16
// scales, then 4 chunks of index nibbles).
template <int MR, DType T, Int8Scales S = Int8Scales::kF32>
void group_rows_int16(const SplitX* x, const uint8_t* group, int64_t blocks, bool prefetch,
                      const float* bias, float* const* y) {
  constexpr bool kF32Scales = T == DType::I8 && S == Int8Scales::kF32;
  constexpr bool kAmax = T == DType::I8 && S != Int8Scales::kF32;
  constexpr int values_at = kF32Scales ? 32 : 16;  // after the 8 scales
  constexpr int column_bytes = values_at + (T == DType::IQ4_NL ? 128 : 256);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  const bool enabled = prefetch && stream_prefetches(wide_weights_stream(MR), 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    for (int line = 0; line < (column_bytes + 63) / 64; ++line)
      prefetch_stream(enabled, column + 64 * line);
    __m256 wd;
    if constexpr (kF32Scales) {
      wd = _mm256_loadu_ps(reinterpret_cast<const float*>(column));
    } else if constexpr (kAmax) {
      wd = interleaved::Lanes8::load_amax<S == Int8Scales::kF16Amax>(column, 0);
    } else {
      wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column)));
    }
    __m256i w[8];
    block_chunks<T == DType::IQ4_NL>(column + values_at, w);
    accumulate_int16<MR>(w, wd, x, b, acc);
  }
  store_rows<MR>(acc, bias, y);
}

// IQ4_XS: per super-block column, each run of 32 with its scale d * (s - 32)
// (interleaved::iq4_xs_run_scale), then as IQ4_NL's block.
template <int MR>
void group_rows_int16_iq4_xs(const SplitX* x, const uint8_t* group, int64_t columns, bool prefetch,
                             const float* bias, float* const* y) {
  using V = interleaved::Lanes8;
  using Column = interleaved::Iq4XsColumn;
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  const bool enabled = prefetch && stream_prefetches(StreamKind::kHeavy, 0);
  for (int64_t c = 0; c < columns; ++c) {
    const uint8_t* column = group + c * Column::kBytes;
    for (int line = 0; line < (Column::kBytes + 63) / 64; ++line)
      prefetch_stream(enabled, column + 64 * line);
    const __m256 d = V::load_f16(column, 0);
    const __m256i scales_high = V::load_u16(column + Column::kScalesHigh, 0);
    const __m256i scales_low = V::load(column + Column::kScalesLow, 0);
    const auto run = [&]<int S>() {
      __m256i w[8];
      block_chunks<true>(column + Column::kValues + 4 * 32 * S, w);
      accumulate_int16<MR>(w, interleaved::iq4_xs_run_scale<V, S>(d, scales_low, scales_high), x,
                           c * 8 + S, acc);
    };
    interleaved::for_each_of_eight(run);
  }
  store_rows<MR>(acc, bias, y);
}

template <DType T, Int8Scales S = Int8Scales::kF32>
struct Int16Bytes {
  static constexpr bool kInt16X = true;
  static constexpr bool kSignedWeights = true;
  static constexpr bool kPairs = false;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, bool prefetch,
                    const float* bias, float* const* y) {
    // kEightBit (ggml's 8-bit activations, never asked of AVX2) is moot: x keeps its 16 bits.
    if constexpr (T == DType::IQ4_XS) {
      group_rows_int16_iq4_xs<MR>(x, group, columns, prefetch, bias, y);
    } else {
      group_rows_int16<MR, T, S>(x, group, columns, prefetch, bias, y);
    }
  }
};

}  // namespace

void matmul_bytes_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                              const WeightView& w, const float* bias, float* y, int64_t n_begin,
                              int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  if (w.dtype == DType::Q8_0) {
    interleaved::run<Int16Bytes<DType::Q8_0>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
  } else if (w.dtype == DType::I8 && w.layout == BlockLayout::kInterleaved8AmaxScales) {
    interleaved::run<Int16Bytes<DType::I8, Int8Scales::kBf16Amax>>(a, m_begin, m_end, w, bias, y,
                                                                   n_begin, n_end);
  } else if (w.dtype == DType::I8 && w.layout == BlockLayout::kInterleaved8F16AmaxScales) {
    interleaved::run<Int16Bytes<DType::I8, Int8Scales::kF16Amax>>(a, m_begin, m_end, w, bias, y,
                                                                  n_begin, n_end);
  } else if (w.dtype == DType::I8) {
    interleaved::run<Int16Bytes<DType::I8>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
  } else if (w.dtype == DType::IQ4_XS) {
    interleaved::run<Int16Bytes<DType::IQ4_XS>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
  } else {
    interleaved::run<Int16Bytes<DType::IQ4_NL>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
  }
}

}  // namespace alem::cpu::avx2
