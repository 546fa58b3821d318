// What the interleaved block-weight kernels (model/interleaved_blocks.h) share: the activations
// split into bytes once per call, the two register widths their arithmetic is written over
// (Lanes8: one group of 8 weight rows per 256-bit register; Lanes16: two groups per 512-bit
// one, for prefill), and the loop that walks groups of weight rows and rows of x.
// matmul_blocks_rows8_dot_avx512.cc (Q4_0, Q4_1, Q8_0) and matmul_blocks_k_rows8_dot_avx512.cc
// (Q4_K, Q5_K, Q6_K) supply the per-group arithmetic. Included only by *_dot_avx512.cc files
// (AVX512-VNNI), inside namespace alem::cpu::avx512_vnni.
//
// The activations are the block kernels' 16-bit ones (quantize_q16: d = amax / 32767 per block
// of 32), split into bytes: x = 256 * hi + lo, hi signed (-128..127) and lo unsigned (0..255).
// With q unsigned weight values, sum(q * x) = 256 * sum(q * hi) + sum(lo * q): two vpdpbusd,
// each with an operand it takes as it is (q unsigned against hi; lo unsigned against q as
// signed bytes, which holds while q < 128). So each block's sum is an exact int32.
//
// Eight-bit mode (a.eight_bit, ALEM_CPU_DOT=all): the int16 values rounded to 8 bits, q8 =
// round(q * 127 / 32767) (|q8| <= 127), kept in the high-byte slot with zero low bytes; the
// kernels then skip the low products and the shift, and `d` holds the scales d * 32767 / 127.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512_vnni {
namespace interleaved {

constexpr int kGroup = kInterleavedRows;
constexpr int kMaxRowsOfX = 4;
// From this many rows of x, kernels that have a two-group form (Kernel::kPairs) take 16 weight
// rows per 512-bit register, up to kMaxRowsOfXPair rows of x at a time. With 2 rows of x the
// two groups' streams lost to one (decode batches are bound by memory); from 4 they won. Six
// rows of x (two sums per row to fit the registers) ran slower than four: the sums' chains
// of dependent vpdpbusd were then the limit.
constexpr int64_t kPairMinRows = 4;
constexpr int kMaxRowsOfXPair = 4;

// One row of x, per block of 32: the bytes, the sums of the values the products use over each
// half (for weights stored with an offset: Q4_0's 8, Q6_K's 32), and the scales.
struct SplitX {
  const uint8_t* bytes;      // [blocks][64]: lo[32] then hi[32]
  const int32_t* half_sums;  // [blocks][2]: sum of values 0..15, of values 16..31
  const float* d;            // [blocks]: the activation scale
  const float* s;            // [blocks]: d x the sum of the int16 activations (minimum terms)
};

// Splits row m of `a` into bytes. `signed_weights`: the weights are signed (Q8_0), so x must be
// the unsigned operand of both products; its high byte is then stored as hi + 128 and the
// kernel takes 128 x the weights' sum back off.
inline void split_activations(const Q16Blocks& a, int64_t m, int64_t blocks, bool signed_weights,
                              uint8_t* bytes, int32_t* half_sums, float* d8) {
  const __m512i ones = _mm512_set1_epi16(1);
  const __m256i bias = _mm256_set1_epi8(signed_weights ? static_cast<char>(0x80) : 0);
  const __m512 to_8_bits = _mm512_set1_ps(127.f / 32767.f);
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i x = _mm512_loadu_si512(a.q + m * a.K + b * 32);
    if (a.eight_bit) {
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(x)));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(x, 1)));
      const __m256i lo8 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(lo, to_8_bits)));
      const __m256i hi8 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(hi, to_8_bits)));
      // 256 * q8 in int16: the split below then puts q8 in the high bytes and 0 in the low.
      x = _mm512_slli_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(lo8), hi8, 1), 8);
      d8[b] = a.d[m * blocks + b] * (32767.f / 127.f);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64), _mm512_cvtepi16_epi8(x));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64 + 32),
                        _mm256_xor_si256(_mm512_cvtepi16_epi8(_mm512_srai_epi16(x, 8)), bias));
    // The values the products use (q8 in eight-bit mode), summed per half of the block.
    const __m512i used = a.eight_bit ? _mm512_srai_epi16(x, 8) : x;
    const __m512i pairs = _mm512_madd_epi16(used, ones);  // 16 lanes of 2 values
    half_sums[2 * b] = _mm512_mask_reduce_add_epi32(0x00FF, pairs);
    half_sums[2 * b + 1] = _mm512_mask_reduce_add_epi32(0xFF00, pairs);
  }
}

inline __m256i broadcast_4_bytes(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

#define ALEM_LANES_INLINE inline __attribute__((always_inline))

// The registers a group's arithmetic runs on. Lanes8: one group of 8 weight rows, one row per
// 32-bit lane of a 256-bit register. Lanes16: two groups side by side in 512-bit registers (the
// group at p in the low half, the one `gap` bytes later in the high half), so one instruction
// serves 16 weight rows; run() takes it from kPairMinRows rows of x (prefill).
struct Lanes8 {
  using I = __m256i;
  using F = __m256;
  ALEM_LANES_INLINE static I load(const uint8_t* p, size_t) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  ALEM_LANES_INLINE static F load_f16(const uint8_t* p, size_t) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  ALEM_LANES_INLINE static F load_f32(const uint8_t* p, size_t) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  ALEM_LANES_INLINE static I bytes(char v) { return _mm256_set1_epi8(v); }
  ALEM_LANES_INLINE static I words(int v) { return _mm256_set1_epi32(v); }
  ALEM_LANES_INLINE static I x_bytes(const uint8_t* p) { return broadcast_4_bytes(p); }
  ALEM_LANES_INLINE static I zero() { return _mm256_setzero_si256(); }
  ALEM_LANES_INLINE static I and_(I a, I b) { return _mm256_and_si256(a, b); }
  ALEM_LANES_INLINE static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  ALEM_LANES_INLINE static I add(I a, I b) { return _mm256_add_epi32(a, b); }
  ALEM_LANES_INLINE static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  template <int n>
  ALEM_LANES_INLINE static I srl16(I v) {
    return _mm256_srli_epi16(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sll16(I v) {
    return _mm256_slli_epi16(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I srl32(I v) {
    return _mm256_srli_epi32(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sll32(I v) {
    return _mm256_slli_epi32(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sra32(I v) {
    return _mm256_srai_epi32(v, n);
  }
  ALEM_LANES_INLINE static I dot(I acc, I u, I s) { return _mm256_dpbusd_epi32(acc, u, s); }
  ALEM_LANES_INLINE static F to_f32(I v) { return _mm256_cvtepi32_ps(v); }
  ALEM_LANES_INLINE static F fzero() { return _mm256_setzero_ps(); }
  ALEM_LANES_INLINE static F fset(float v) { return _mm256_set1_ps(v); }
  ALEM_LANES_INLINE static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  ALEM_LANES_INLINE static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  ALEM_LANES_INLINE static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  // y[0 .. 8) = v + bias.
  ALEM_LANES_INLINE static void store(float* y, F v, const float* bias) {
    _mm256_storeu_ps(y, bias ? _mm256_add_ps(v, _mm256_loadu_ps(bias)) : v);
  }
};
struct Lanes16 {
  using I = __m512i;
  using F = __m512;
  ALEM_LANES_INLINE static I load(const uint8_t* p, size_t gap) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + gap)), 1);
  }
  ALEM_LANES_INLINE static F load_f16(const uint8_t* p, size_t gap) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + gap)), 1));
  }
  ALEM_LANES_INLINE static F load_f32(const uint8_t* p, size_t gap) {
    return _mm512_insertf32x8(
        _mm512_castps256_ps512(_mm256_loadu_ps(reinterpret_cast<const float*>(p))),
        _mm256_loadu_ps(reinterpret_cast<const float*>(p + gap)), 1);
  }
  ALEM_LANES_INLINE static I bytes(char v) { return _mm512_set1_epi8(v); }
  ALEM_LANES_INLINE static I words(int v) { return _mm512_set1_epi32(v); }
  ALEM_LANES_INLINE static I x_bytes(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  ALEM_LANES_INLINE static I zero() { return _mm512_setzero_si512(); }
  ALEM_LANES_INLINE static I and_(I a, I b) { return _mm512_and_si512(a, b); }
  ALEM_LANES_INLINE static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  ALEM_LANES_INLINE static I add(I a, I b) { return _mm512_add_epi32(a, b); }
  ALEM_LANES_INLINE static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  template <int n>
  ALEM_LANES_INLINE static I srl16(I v) {
    return _mm512_srli_epi16(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sll16(I v) {
    return _mm512_slli_epi16(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I srl32(I v) {
    return _mm512_srli_epi32(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sll32(I v) {
    return _mm512_slli_epi32(v, n);
  }
  template <int n>
  ALEM_LANES_INLINE static I sra32(I v) {
    return _mm512_srai_epi32(v, n);
  }
  ALEM_LANES_INLINE static I dot(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
  ALEM_LANES_INLINE static F to_f32(I v) { return _mm512_cvtepi32_ps(v); }
  ALEM_LANES_INLINE static F fzero() { return _mm512_setzero_ps(); }
  ALEM_LANES_INLINE static F fset(float v) { return _mm512_set1_ps(v); }
  ALEM_LANES_INLINE static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  ALEM_LANES_INLINE static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  ALEM_LANES_INLINE static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  // y[0 .. 16) = v + bias.
  ALEM_LANES_INLINE static void store(float* y, F v, const float* bias) {
    _mm512_storeu_ps(y, bias ? _mm512_add_ps(v, _mm512_loadu_ps(bias)) : v);
  }
};

#undef ALEM_LANES_INLINE

// y[m][n_begin .. n_end) for the rows m_begin .. m_end of x. `Kernel` supplies
//   static constexpr bool kSignedWeights;
//   static constexpr bool kPairs;  // and, if true, pair<MR, kEightBit>(x, group, group_bytes,
//       columns, bias, y): the same for the two groups from `group`, y[i][0 .. 16)
//   template <int MR, bool kEightBit> static void group(const SplitX* x, const uint8_t* group,
//       int64_t columns, const float* bias, float* const* y);
// which computes y[i][0 .. 8) for MR rows of x from one group of 8 weight rows (`columns` block
// columns of the matrix's own block size). Weight groups are the outer loop, so a group's
// bytes stay in cache across all the rows of x (prefill).
// alem's int8 (I8) counts as a block type of 32 values here.
template <class Kernel>
void run(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w, const float* bias,
         float* y, int64_t n_begin, int64_t n_end) {
  const int64_t blocks = w.cols / 32;
  const int64_t columns = w.dtype == DType::I8 ? blocks : w.cols / dtype_block_elements(w.dtype);
  const size_t group_bytes = interleaved_row_bytes(w.dtype, w.cols) * kGroup;
  // This thread's rows of x, split into bytes once (64 bytes + 8 per block and row).
  // Per-thread scratch (cpu_kernels.h): no allocation on the decode path.
  const int64_t rows = m_end - m_begin;
  auto* bytes = static_cast<uint8_t*>(
      thread_scratch(ScratchSlot::kSplitXBytes, static_cast<size_t>(rows * blocks * 64)));
  auto* sums = static_cast<int32_t*>(thread_scratch(
      ScratchSlot::kSplitXSums, static_cast<size_t>(rows * blocks * 2) * sizeof(int32_t)));
  auto* scales8 = static_cast<float*>(
      thread_scratch(ScratchSlot::kSplitXScales,
                     a.eight_bit ? static_cast<size_t>(rows * blocks) * sizeof(float) : 0));
  auto* x = static_cast<SplitX*>(
      thread_scratch(ScratchSlot::kSplitXRows, static_cast<size_t>(rows) * sizeof(SplitX)));
  for (int64_t i = 0; i < rows; ++i) {
    uint8_t* xb = bytes + i * blocks * 64;
    int32_t* xs = sums + i * blocks * 2;
    float* d8 = a.eight_bit ? scales8 + i * blocks : nullptr;
    split_activations(a, m_begin + i, blocks, Kernel::kSignedWeights, xb, xs, d8);
    x[i] = {xb, xs, a.eight_bit ? d8 : a.d + (m_begin + i) * blocks, a.s + (m_begin + i) * blocks};
  }
  // MR rows of x from row i against the group of 8 weight rows starting at row n (kPair: and
  // the next group, with 512-bit registers).
  const auto rows_of_x = [&]<int MR, bool kEightBit, bool kPair>(int64_t i, int64_t n) {
    float* out[MR];
    for (int r = 0; r < MR; ++r) out[r] = y + (m_begin + i + r) * w.rows + n;
    const uint8_t* group = static_cast<const uint8_t*>(w.data) + (n / kGroup) * group_bytes;
    const float* group_bias = bias ? bias + n : nullptr;
    if constexpr (kPair) {
      Kernel::template pair<MR, kEightBit>(x + i, group, group_bytes, columns, group_bias, out);
    } else {
      Kernel::template group<MR, kEightBit>(x + i, group, columns, group_bias, out);
    }
  };
  const auto every_row_of_x = [&]<bool kEightBit, bool kPair>(int64_t n) {
    constexpr int kMax = kPair ? kMaxRowsOfXPair : kMaxRowsOfX;
    int64_t i = 0;
    for (; i + kMax <= rows; i += kMax) rows_of_x.template operator()<kMax, kEightBit, kPair>(i, n);
    const auto tail = [&]<int MR>() {
      if constexpr (MR < kMax) {
        if (rows - i == MR) rows_of_x.template operator()<MR, kEightBit, kPair>(i, n);
      }
    };
    static_assert(kMaxRowsOfX <= 6 && kMaxRowsOfXPair <= 6);
    tail.template operator()<5>();
    tail.template operator()<4>();
    tail.template operator()<3>();
    tail.template operator()<2>();
    tail.template operator()<1>();
  };
  // Groups outermost: one group (or pair of groups) at a time against every row of x. Pairs
  // only from kPairMinRows rows of x: a lone row reads the weights as one stream (decode).
  const bool pairs = Kernel::kPairs && rows >= kPairMinRows;
  const auto by_group = [&]<bool kEightBit>() {
    int64_t n = n_begin;
    if constexpr (Kernel::kPairs) {
      for (; pairs && n + 2 * kGroup <= n_end; n += 2 * kGroup)
        every_row_of_x.template operator()<kEightBit, true>(n);
    }
    for (; n < n_end; n += kGroup) every_row_of_x.template operator()<kEightBit, false>(n);
  };
  if (a.eight_bit) {
    by_group.template operator()<true>();
  } else {
    by_group.template operator()<false>();
  }
}

}  // namespace interleaved
}  // namespace alem::cpu::avx512_vnni
