// Q4_K, Q5_K and Q6_K matmul on interleaved weights (model/interleaved_blocks.h) with
// AVX512-VNNI vpdpbusd on 256-bit registers: 8 weight rows per register, one per 32-bit lane,
// as the Q4_0 kernel (matmul_blocks_rows8_dot_avx512.cc) does, for every M. Only called when
// the CPU reports AVX512-VNNI; the CPU backend interleaves only then.
//
// A super-block of 256 values is 8 sub-blocks of 32, each lined up with one block of the 16-bit
// activations (matmul_interleaved_dot_avx512.h), so every sub-block's dot product is an exact
// int32 per weight row, scaled once in f32:
//   Q4_K / Q5_K: w = d*sc*q - dmin*m   ->  sum(q*x) * (d*sc*dx) - dmin*m * sx
//                (q: 4 bits, Q5_K plus a fifth from qh; sc, m: 6 bits)
//   Q6_K:        w = d*sc*(q - 32), sc per 16 values  ->  two int32 sums per sub-block (values
//                0..15, 16..31), each started at -32 x the activations' half sum, scaled by
//                d*sc*dx.
// Per super-block column of a group of 8 rows the 8 rows' 6-bit scales are unpacked together:
// the interleaved form keeps each row's 12 bytes as 3 words, one per 32-bit lane, so llama.cpp's
// word masks (scales to bytes 0-7, minimums to 8-15) run on 8 rows at once. Per sub-block: 8
// chunks of 4 values per row, unpacked once for up to 4 rows of x; per row of x, 16 vpdpbusd
// (x's low and high bytes) and the f32 scaling. The 8 lanes are the 8 rows' outputs: one store.
#include "kernels/cpu/matmul_interleaved_dot_avx512.h"

namespace alem::cpu::avx512_vnni {
namespace {

using interleaved::broadcast_4_bytes;
using interleaved::SplitX;

// Every helper below is forced inline: GCC left a 4-chunk dot product of Q6_K out of line, so
// the unpacked values went through the stack and a call in the innermost loop.
#define ALEM_INLINE inline __attribute__((always_inline))

// Where the fields of a super-block column sit (interleaved_blocks.cc, 8 rows each).
template <DType T>
struct Column;
template <>
struct Column<DType::Q4_K> {
  static constexpr int kScales = 32, kHighBits = 0, kValues = 128, kBytes = 1152;
};
template <>
struct Column<DType::Q5_K> {
  static constexpr int kScales = 32, kHighBits = 128, kValues = 384, kBytes = 1408;
};
template <>
struct Column<DType::Q6_K> {  // d, 16 int8 scales (4 words), ql (32 chunks), qh (16 chunks)
  static constexpr int kScales = 16, kValues = 144, kHighBits = 1168, kBytes = 1680;
};

using interleaved::kAheadBytes;

ALEM_INLINE __m256i load(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
ALEM_INLINE __m256 load_f16x8(const uint8_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// Byte `i` of every 32-bit lane, unsigned, as f32.
template <int i>
ALEM_INLINE __m256 byte_of_lanes(__m256i v) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 8 * i), _mm256_set1_epi32(0xFF)));
}

// Q4_K / Q5_K: the 8 rows' 6-bit scales and minimums of one column, as 4 vectors of bytes
// (sub-blocks 0-3 and 4-7, one row per 32-bit lane).
struct ScaleBytes {
  __m256i sc03, sc47, m03, m47;
};
ALEM_INLINE ScaleBytes unpack_scales(const uint8_t* words) {
  const __m256i low6 = _mm256_set1_epi32(0x3f3f3f3f), low4 = _mm256_set1_epi32(0x0f0f0f0f),
                low2 = _mm256_set1_epi32(0x03030303);
  const __m256i u0 = load(words), u1 = load(words + 32), u2 = load(words + 64);
  ScaleBytes s;
  s.sc03 = _mm256_and_si256(u0, low6);
  s.m03 = _mm256_and_si256(u1, low6);
  s.sc47 = _mm256_or_si256(_mm256_and_si256(u2, low4),
                           _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), low2), 4));
  s.m47 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), low4),
                          _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), low2), 4));
  return s;
}

// The 8 chunks (values 4c..4c+3 of every row, c = 0..7) of sub-block S of a Q4_K/Q5_K column.
template <DType T, int S>
ALEM_INLINE void sub_block_values(const uint8_t* column, __m256i* q) {
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  // Sub-blocks 2j and 2j+1 share the 32 bytes of qs at 32j: low nibbles, then high nibbles.
  const uint8_t* chunks = column + Column<T>::kValues + (S / 2) * 8 * 32;
  for (int c = 0; c < 8; ++c) {
    const __m256i v = load(chunks + 32 * c);
    q[c] = _mm256_and_si256(S % 2 == 0 ? v : _mm256_srli_epi16(v, 4), low_nibbles);
    if constexpr (T == DType::Q5_K) {  // the fifth bit: bit S of qh byte (4c + lane byte)
      const __m256i h = load(column + Column<T>::kHighBits + 32 * c);
      const __m256i bit = S <= 4 ? _mm256_slli_epi16(h, 4 - S) : _mm256_srli_epi16(h, S - 4);
      q[c] = _mm256_or_si256(q[c], _mm256_and_si256(bit, _mm256_set1_epi8(0x10)));
    }
  }
}

// The 8 chunks of sub-block S (= 4h + t) of a Q6_K column: the low 4 bits from ql (sub-blocks
// t = 0, 1 take the low nibbles of ql's chunks 16h + 8t .. + 7, t = 2, 3 the high nibbles of
// the same chunks as t - 2), the high 2 bits from bits 2t, 2t+1 of qh's chunks 8h .. 8h + 7.
template <int S>
ALEM_INLINE void q6_sub_block_values(const uint8_t* column, __m256i* q) {
  constexpr int h = S / 4, t = S % 4;
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F), high_pair = _mm256_set1_epi8(0x30);
  const uint8_t* ql = column + Column<DType::Q6_K>::kValues + (16 * h + 8 * (t % 2)) * 32;
  const uint8_t* qh = column + Column<DType::Q6_K>::kHighBits + 8 * h * 32;
  for (int c = 0; c < 8; ++c) {
    const __m256i l = load(ql + 32 * c), hb = load(qh + 32 * c);
    const __m256i low = _mm256_and_si256(t < 2 ? l : _mm256_srli_epi16(l, 4), low_nibbles);
    const __m256i high =
        t < 2 ? _mm256_slli_epi16(hb, 4 - 2 * t) : (t == 2 ? hb : _mm256_srli_epi16(hb, 2));
    q[c] = _mm256_or_si256(low, _mm256_and_si256(high, high_pair));
  }
}

// sum(q * x) over chunks [C0, C0 + 4) of a sub-block as 8 int32 lanes (one per weight row),
// plus `start`. x: the block's bytes (lo[32], hi[32]).
template <bool kEightBit, int C0, int kChunks>
ALEM_INLINE __m256i chunk_dot(const __m256i* q, const uint8_t* x, __m256i start) {
  const uint8_t* lo = x;
  const uint8_t* hi = x + 32;
  __m256i low_a = start, low_b = _mm256_setzero_si256(), high_a = _mm256_setzero_si256(),
          high_b = _mm256_setzero_si256();
  for (int c = C0; c < C0 + kChunks; c += 2) {
    if constexpr (!kEightBit) {
      low_a = _mm256_dpbusd_epi32(low_a, broadcast_4_bytes(lo + 4 * c), q[c]);
      low_b = _mm256_dpbusd_epi32(low_b, broadcast_4_bytes(lo + 4 * c + 4), q[c + 1]);
    }
    high_a = _mm256_dpbusd_epi32(high_a, q[c], broadcast_4_bytes(hi + 4 * c));
    high_b = _mm256_dpbusd_epi32(high_b, q[c + 1], broadcast_4_bytes(hi + 4 * c + 4));
  }
  // Eight-bit: the values sit in the high bytes alone, taken at their own weight.
  const __m256i high = _mm256_add_epi32(high_a, high_b);
  return _mm256_add_epi32(_mm256_add_epi32(low_a, low_b),
                          kEightBit ? high : _mm256_slli_epi32(high, 8));
}

// Spreads the prefetch of the column `kAheadBytes` ahead over its 8 sub-blocks.
template <DType T, int S>
ALEM_INLINE void prefetch_ahead(const uint8_t* column) {
  constexpr int lines = (Column<T>::kBytes + 63) / 64;
  constexpr int ahead = kAheadBytes / Column<T>::kBytes * Column<T>::kBytes;
  // A volatile asm, which the compiler schedules in place: as _mm_prefetch, GCC moved all of a
  // column's prefetches to its start, and a burst of 18 to 27 misses measured as slow as none.
  for (int l = S * lines / 8; l < (S + 1) * lines / 8; ++l) {
    asm volatile("prefetcht0 %0" : : "m"(*(column + ahead + 64 * l)));
  }
}

// Runs f.template operator()<S>() for S = 0 .. 7, the sub-blocks of a column.
template <class F>
ALEM_INLINE void for_each_sub_block(F& f) {
  f.template operator()<0>();
  f.template operator()<1>();
  f.template operator()<2>();
  f.template operator()<3>();
  f.template operator()<4>();
  f.template operator()<5>();
  f.template operator()<6>();
  f.template operator()<7>();
}

// y[i][0 .. 8) = acc[i] + bias.
template <int MR>
ALEM_INLINE void store_rows(const __m256* acc, const float* bias, float* const* y) {
  const __m256 b8 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(y[i], _mm256_add_ps(acc[i], b8));
}

// Q4_K / Q5_K: y[i][0 .. 8) for MR rows of x from one group of 8 weight rows.
template <DType T, int MR, bool kEightBit>
void group_rows_q45(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < columns; ++b) {
    const uint8_t* column = group + b * Column<T>::kBytes;
    const __m256 d = load_f16x8(column),
                 neg_dmin = _mm256_sub_ps(_mm256_setzero_ps(), load_f16x8(column + 16));
    const ScaleBytes scales = unpack_scales(column + Column<T>::kScales);
    const auto sub_block = [&]<int S>() {
      prefetch_ahead<T, S>(column);
      __m256i q[8];
      sub_block_values<T, S>(column, q);
      const __m256i sc_bytes = S < 4 ? scales.sc03 : scales.sc47;
      const __m256i m_bytes = S < 4 ? scales.m03 : scales.m47;
      const __m256 scale = _mm256_mul_ps(d, byte_of_lanes<S % 4>(sc_bytes));
      const __m256 minimum = _mm256_mul_ps(neg_dmin, byte_of_lanes<S % 4>(m_bytes));
      const int64_t block = b * 8 + S;
      for (int i = 0; i < MR; ++i) {
        const __m256i dot =
            chunk_dot<kEightBit, 0, 8>(q, x[i].bytes + block * 64, _mm256_setzero_si256());
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                 _mm256_mul_ps(scale, _mm256_set1_ps(x[i].d[block])), acc[i]);
        acc[i] = _mm256_fmadd_ps(minimum, _mm256_set1_ps(x[i].s[block]), acc[i]);
      }
    };
    for_each_sub_block(sub_block);
  }
  store_rows<MR>(acc, bias, y);
}

// Q6_K: y[i][0 .. 8) for MR rows of x from one group of 8 weight rows.
template <int MR, bool kEightBit>
void group_rows_q6(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                   float* const* y) {
  constexpr DType T = DType::Q6_K;
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < columns; ++b) {
    const uint8_t* column = group + b * Column<T>::kBytes;
    const __m256 d = load_f16x8(column);
    const uint8_t* scale_words = column + Column<T>::kScales;
    const auto sub_block = [&]<int S>() {
      prefetch_ahead<T, S>(column);
      __m256i q[8];
      q6_sub_block_values<S>(column, q);
      // Scales 2S and 2S + 1 (int8): bytes 2(S%2), 2(S%2)+1 of word S/2, sign-extended.
      const __m256i word = load(scale_words + 32 * (S / 2));
      const __m256 scale_a = _mm256_mul_ps(
          d, _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(word, 24 - 16 * (S % 2)), 24)));
      const __m256 scale_b = _mm256_mul_ps(
          d, _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(word, 16 - 16 * (S % 2)), 24)));
      const int64_t block = b * 8 + S;
      for (int i = 0; i < MR; ++i) {
        const uint8_t* xb = x[i].bytes + block * 64;
        const int32_t* half = x[i].half_sums + 2 * block;
        const __m256i dot_a = chunk_dot<kEightBit, 0, 4>(q, xb, _mm256_set1_epi32(-32 * half[0]));
        const __m256i dot_b = chunk_dot<kEightBit, 4, 4>(q, xb, _mm256_set1_epi32(-32 * half[1]));
        const __m256 dx = _mm256_set1_ps(x[i].d[block]);
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_a), _mm256_mul_ps(scale_a, dx), acc[i]);
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_b), _mm256_mul_ps(scale_b, dx), acc[i]);
      }
    };
    for_each_sub_block(sub_block);
  }
  store_rows<MR>(acc, bias, y);
}

// The per-group arithmetic for interleaved::run.
template <DType T>
struct SuperBlocks {
  static constexpr bool kSignedWeights = false;
  static constexpr bool kPairs = false;  // one group per register (too few registers for two)
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    if constexpr (T == DType::Q6_K) {
      group_rows_q6<MR, kEightBit>(x, group, columns, bias, y);
    } else {
      group_rows_q45<T, MR, kEightBit>(x, group, columns, bias, y);
    }
  }
};

#undef ALEM_INLINE

}  // namespace

void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  switch (w.dtype) {
    case DType::Q4_K:
      interleaved::run<SuperBlocks<DType::Q4_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q5_K:
      interleaved::run<SuperBlocks<DType::Q5_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    default:
      interleaved::run<SuperBlocks<DType::Q6_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
  }
}

}  // namespace alem::cpu::avx512_vnni
