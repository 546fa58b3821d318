// Q4_0, Q4_1 and Q8_0 matmul on interleaved weights (model/interleaved_blocks.h) with AVX512-VNNI
// vpdpbusd on 256-bit registers: 8 weight rows per register, one per 32-bit lane, for every M.
// Only called when the CPU reports AVX512-VNNI; the CPU backend interleaves only then.
//
// The activations are split into bytes once per call (matmul_interleaved_dot_avx512.h), so each
// block's sum is the same exact int32 as the row-major kernels', and only the f32 summation
// across blocks differs. Q4_0's offset of 8 is the block sum's start (-8 x sum(x), the same for
// the 8 rows).
//
// Per block column of a group (256 weights, 144 bytes for Q4_0): 4 loads of nibbles, 12 masks
// and shifts, the 8 scales in one conversion; per row of x: 16 vpdpbusd against 4 activation
// bytes broadcast to all lanes, a shift and three adds, one conversion, one multiply, one fma.
// The result's 8 lanes are the 8 rows' outputs: no reduction across lanes, one store. Up to 4
// rows of x share the unpacked nibbles (a small batch, or prefill 4 rows at a time).
#include "kernels/cpu/matmul_interleaved_dot_avx512.h"

namespace alem::cpu::avx512_vnni {
namespace {

using interleaved::broadcast_4_bytes;
using interleaved::SplitX;

using interleaved::kAheadBytes;

// y[m][n .. n + 8) for MR rows of x from the group of 8 weight rows starting at row n.
template <DType T, int MR, bool kEightBit>
void group_rows(const SplitX* x, const uint8_t* group, int64_t blocks, const float* bias,
                float* const* y) {
  constexpr int scale_bytes = T == DType::Q4_0 ? 16 : 32;  // 8 d (and 8 m) in f16
  constexpr int column_bytes = scale_bytes + 128;
  constexpr int ahead = kAheadBytes / column_bytes * column_bytes;  // whole block columns
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    _mm_prefetch(reinterpret_cast<const char*>(column + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(column + ahead + 64), _MM_HINT_T0);
    const __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column)));
    __m256i q_lo[4], q_hi[4];  // chunk k: values 4k..4k+3 and 16+4k..16+4k+3 of each row
    for (int k = 0; k < 4; ++k) {
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(column + scale_bytes + 32 * k));
      q_lo[k] = _mm256_and_si256(v, low_nibbles);
      q_hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
    }
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      const int32_t* sums = x[i].half_sums + 2 * b;
      __m256i low_a =
          T == DType::Q4_0 ? _mm256_set1_epi32(-8 * (sums[0] + sums[1])) : _mm256_setzero_si256();
      __m256i low_b = _mm256_setzero_si256(), high_a = _mm256_setzero_si256(),
              high_b = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        if constexpr (!kEightBit) {
          low_a = _mm256_dpbusd_epi32(low_a, broadcast_4_bytes(lo + 4 * k), q_lo[k]);
          low_b = _mm256_dpbusd_epi32(low_b, broadcast_4_bytes(lo + 16 + 4 * k), q_hi[k]);
        }
        high_a = _mm256_dpbusd_epi32(high_a, q_lo[k], broadcast_4_bytes(hi + 4 * k));
        high_b = _mm256_dpbusd_epi32(high_b, q_hi[k], broadcast_4_bytes(hi + 16 + 4 * k));
      }
      // Eight-bit: the values sit in the high bytes alone, taken at their own weight.
      const __m256i high = _mm256_add_epi32(high_a, high_b);
      const __m256i dot = _mm256_add_epi32(_mm256_add_epi32(low_a, low_b),
                                           kEightBit ? high : _mm256_slli_epi32(high, 8));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                               _mm256_mul_ps(wd, _mm256_set1_ps(x[i].d[b])), acc[i]);
      if constexpr (T == DType::Q4_1) {
        const __m256 wm =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column + 16)));
        acc[i] = _mm256_fmadd_ps(wm, _mm256_set1_ps(x[i].s[b]), acc[i]);
      }
    }
  }
  const __m256 b8 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(y[i], _mm256_add_ps(acc[i], b8));
}

// The two groups of 8 weight rows from `group` and `group + group_bytes` side by side in 512-bit
// registers (the first group's rows in the low half, the next group's in the high half), so
// one instruction serves 16 weight rows: the prefill form (pair_rows in interleaved::run).
inline __m512i load_pair(const uint8_t* first, const uint8_t* second) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(first))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(second)), 1);
}
inline __m512 load_pair_f16(const uint8_t* first, const uint8_t* second) {
  return _mm512_cvtph_ps(_mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(first))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(second)), 1));
}
inline __m512i broadcast_4_bytes_512(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// group_rows for the two groups starting at rows n and n + 8: y[m][n .. n + 16).
template <DType T, int MR, bool kEightBit>
void group_pair_rows(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t blocks,
                     const float* bias, float* const* y) {
  constexpr int scale_bytes = T == DType::Q4_0 ? 16 : 32;
  constexpr int column_bytes = scale_bytes + 128;
  constexpr int ahead = kAheadBytes / column_bytes * column_bytes;
  const uint8_t* second = group + group_bytes;
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* c0 = group + b * column_bytes;
    const uint8_t* c1 = second + b * column_bytes;
    _mm_prefetch(reinterpret_cast<const char*>(c0 + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c0 + ahead + 64), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c1 + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c1 + ahead + 64), _MM_HINT_T0);
    const __m512 wd = load_pair_f16(c0, c1);
    __m512i q_lo[4], q_hi[4];
    for (int k = 0; k < 4; ++k) {
      const __m512i v = load_pair(c0 + scale_bytes + 32 * k, c1 + scale_bytes + 32 * k);
      q_lo[k] = _mm512_and_si512(v, low_nibbles);
      q_hi[k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles);
    }
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      const int32_t* sums = x[i].half_sums + 2 * b;
      __m512i low_a =
          T == DType::Q4_0 ? _mm512_set1_epi32(-8 * (sums[0] + sums[1])) : _mm512_setzero_si512();
      __m512i low_b = _mm512_setzero_si512(), high_a = _mm512_setzero_si512(),
              high_b = _mm512_setzero_si512();
      for (int k = 0; k < 4; ++k) {
        if constexpr (!kEightBit) {
          low_a = _mm512_dpbusd_epi32(low_a, broadcast_4_bytes_512(lo + 4 * k), q_lo[k]);
          low_b = _mm512_dpbusd_epi32(low_b, broadcast_4_bytes_512(lo + 16 + 4 * k), q_hi[k]);
        }
        high_a = _mm512_dpbusd_epi32(high_a, q_lo[k], broadcast_4_bytes_512(hi + 4 * k));
        high_b = _mm512_dpbusd_epi32(high_b, q_hi[k], broadcast_4_bytes_512(hi + 16 + 4 * k));
      }
      const __m512i low = _mm512_add_epi32(low_a, low_b);
      const __m512i high = _mm512_add_epi32(high_a, high_b);
      const __m512i dot = _mm512_add_epi32(low, kEightBit ? high : _mm512_slli_epi32(high, 8));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                               _mm512_mul_ps(wd, _mm512_set1_ps(x[i].d[b])), acc[i]);
      if constexpr (T == DType::Q4_1) {
        acc[i] =
            _mm512_fmadd_ps(load_pair_f16(c0 + 16, c1 + 16), _mm512_set1_ps(x[i].s[b]), acc[i]);
      }
    }
  }
  const __m512 b16 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(y[i], _mm512_add_ps(acc[i], b16));
}

// Q8_0: per block column 8 chunks of signed bytes (values 4k..4k+3 of each row). With hi'
// = hi + 128 unsigned, sum(w * x) = sum(lo * w) + 256 * (sum(hi' * w) - 128 * sum(w)); the
// weights' sums (vpdpbusd against ones) serve every row of x.
template <int MR, bool kEightBit>
void group_rows_q8_0(const SplitX* x, const uint8_t* group, int64_t blocks, const float* bias,
                     float* const* y) {
  constexpr int column_bytes = 16 + 256;
  constexpr int ahead = kAheadBytes / column_bytes * column_bytes;  // whole block columns
  const __m256i ones = _mm256_set1_epi8(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    for (int line = 0; line < 5; ++line) {
      _mm_prefetch(reinterpret_cast<const char*>(column + ahead + 64 * line), _MM_HINT_T0);
    }
    const __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column)));
    __m256i w[8];
    __m256i sum_a = _mm256_setzero_si256(), sum_b = _mm256_setzero_si256();
    for (int k = 0; k < 8; ++k) {
      w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(column + 16 + 32 * k));
    }
    for (int k = 0; k < 8; k += 2) {
      sum_a = _mm256_dpbusd_epi32(sum_a, ones, w[k]);
      sum_b = _mm256_dpbusd_epi32(sum_b, ones, w[k + 1]);
    }
    const __m256i offset = _mm256_slli_epi32(_mm256_add_epi32(sum_a, sum_b), 7);  // 128 sum(w)
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      __m256i low_a = _mm256_setzero_si256(), low_b = _mm256_setzero_si256(),
              high_a = _mm256_setzero_si256(), high_b = _mm256_setzero_si256();
      for (int k = 0; k < 8; k += 2) {
        if constexpr (!kEightBit) {
          low_a = _mm256_dpbusd_epi32(low_a, broadcast_4_bytes(lo + 4 * k), w[k]);
          low_b = _mm256_dpbusd_epi32(low_b, broadcast_4_bytes(lo + 4 * k + 4), w[k + 1]);
        }
        high_a = _mm256_dpbusd_epi32(high_a, broadcast_4_bytes(hi + 4 * k), w[k]);
        high_b = _mm256_dpbusd_epi32(high_b, broadcast_4_bytes(hi + 4 * k + 4), w[k + 1]);
      }
      const __m256i high = _mm256_sub_epi32(_mm256_add_epi32(high_a, high_b), offset);
      const __m256i dot = _mm256_add_epi32(_mm256_add_epi32(low_a, low_b),
                                           kEightBit ? high : _mm256_slli_epi32(high, 8));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                               _mm256_mul_ps(wd, _mm256_set1_ps(x[i].d[b])), acc[i]);
    }
  }
  const __m256 b8 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(y[i], _mm256_add_ps(acc[i], b8));
}

// group_rows_q8_0 for the two groups starting at rows n and n + 8 (see group_pair_rows).
template <int MR, bool kEightBit>
void group_pair_rows_q8_0(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t blocks,
                          const float* bias, float* const* y) {
  constexpr int column_bytes = 16 + 256;
  constexpr int ahead = kAheadBytes / column_bytes * column_bytes;
  const uint8_t* second = group + group_bytes;
  const __m512i ones = _mm512_set1_epi8(1);
  __m512 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* c0 = group + b * column_bytes;
    const uint8_t* c1 = second + b * column_bytes;
    for (int line = 0; line < 5; ++line) {
      _mm_prefetch(reinterpret_cast<const char*>(c0 + ahead + 64 * line), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c1 + ahead + 64 * line), _MM_HINT_T0);
    }
    const __m512 wd = load_pair_f16(c0, c1);
    __m512i w[8];
    __m512i sum_a = _mm512_setzero_si512(), sum_b = _mm512_setzero_si512();
    for (int k = 0; k < 8; ++k) w[k] = load_pair(c0 + 16 + 32 * k, c1 + 16 + 32 * k);
    for (int k = 0; k < 8; k += 2) {
      sum_a = _mm512_dpbusd_epi32(sum_a, ones, w[k]);
      sum_b = _mm512_dpbusd_epi32(sum_b, ones, w[k + 1]);
    }
    const __m512i offset = _mm512_slli_epi32(_mm512_add_epi32(sum_a, sum_b), 7);  // 128 sum(w)
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      __m512i low_a = _mm512_setzero_si512(), low_b = _mm512_setzero_si512(),
              high_a = _mm512_setzero_si512(), high_b = _mm512_setzero_si512();
      for (int k = 0; k < 8; k += 2) {
        if constexpr (!kEightBit) {
          low_a = _mm512_dpbusd_epi32(low_a, broadcast_4_bytes_512(lo + 4 * k), w[k]);
          low_b = _mm512_dpbusd_epi32(low_b, broadcast_4_bytes_512(lo + 4 * k + 4), w[k + 1]);
        }
        high_a = _mm512_dpbusd_epi32(high_a, broadcast_4_bytes_512(hi + 4 * k), w[k]);
        high_b = _mm512_dpbusd_epi32(high_b, broadcast_4_bytes_512(hi + 4 * k + 4), w[k + 1]);
      }
      const __m512i low = _mm512_add_epi32(low_a, low_b);
      __m512i high = _mm512_add_epi32(high_a, high_b);
      high = _mm512_sub_epi32(high, offset);
      const __m512i dot = _mm512_add_epi32(low, kEightBit ? high : _mm512_slli_epi32(high, 8));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                               _mm512_mul_ps(wd, _mm512_set1_ps(x[i].d[b])), acc[i]);
    }
  }
  const __m512 b16 = bias ? _mm512_loadu_ps(bias) : _mm512_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm512_storeu_ps(y[i], _mm512_add_ps(acc[i], b16));
}

// The per-group arithmetic for interleaved::run.
template <DType T>
struct Nibbles {
  static constexpr bool kSignedWeights = false;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    group_rows<T, MR, kEightBit>(x, group, columns, bias, y);
  }
  static constexpr bool kPairs = true;
  template <int MR, bool kEightBit>
  static void pair(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t columns,
                   const float* bias, float* const* y) {
    group_pair_rows<T, MR, kEightBit>(x, group, group_bytes, columns, bias, y);
  }
};
struct Bytes {
  static constexpr bool kSignedWeights = true;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    group_rows_q8_0<MR, kEightBit>(x, group, columns, bias, y);
  }
  static constexpr bool kPairs = true;
  template <int MR, bool kEightBit>
  static void pair(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t columns,
                   const float* bias, float* const* y) {
    group_pair_rows_q8_0<MR, kEightBit>(x, group, group_bytes, columns, bias, y);
  }
};

}  // namespace

void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  switch (w.dtype) {
    case DType::Q4_0:
      interleaved::run<Nibbles<DType::Q4_0>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q4_1:
      interleaved::run<Nibbles<DType::Q4_1>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q8_0:
      interleaved::run<Bytes>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    default:
      matmul_blocks_k_interleaved(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
  }
}

}  // namespace alem::cpu::avx512_vnni
