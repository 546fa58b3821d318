// What the interleaved block-weight kernels (model/interleaved_blocks.h) need on AVX2: the
// activations split into bytes once per call, Lanes8 (matmul_interleaved_lanes8.inc) with its
// dot product of unsigned and signed bytes done by vpmaddubsw (pairs into int16) and vpmaddwd
// against ones (pairs of those into int32), and the loop over groups and rows of x
// (matmul_interleaved_run.inc). Included only by *_avx2.cc files, which supply the per-group
// arithmetic (matmul_blocks_rows8_kernel.inc, matmul_blocks_k_rows8_kernel.inc).
//
// vpmaddubsw saturates each pair of products at int16, so only weights whose bytes keep every
// pair within it take these byte products: unsigned values of up to 6 bits against x's unsigned
// low bytes (2 x 255 x 63 = 32130) or signed high bytes (2 x 63 x 128). Q8_0 and int8 (signed
// bytes against x's bytes: up to 2 x 255 x 128) take int16 products instead
// (matmul_blocks_rows8_int16_avx2.cc). No two-group form: 256-bit registers only.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx2 {
namespace interleaved {

namespace detail {
inline int sum_i32(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1))));
}
// 16 int16 values rounded to 8 bits (round(q * 127 / 32767), nearest even) and shifted back
// into the high byte: the eight-bit mode's values, as matmul_interleaved_dot_avx512.h makes them.
inline __m256i to_eight_bits(__m256i x) {
  const __m256 scale = _mm256_set1_ps(127.f / 32767.f);
  const __m256i a = _mm256_cvtps_epi32(
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(x))), scale));
  const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(
      _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(x, 1))), scale));
  return _mm256_slli_epi16(_mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8), 8);
}
}  // namespace detail

// Splits row m of `a` into bytes, as the AVX512-VNNI form does (matmul_interleaved_dot_avx512.h:
// lo[32] then hi[32] per block, the half sums, the eight-bit scales).
inline void split_activations(const Q16Blocks& a, int64_t m, int64_t blocks, bool signed_weights,
                              uint8_t* bytes, int32_t* half_sums, float* d8) {
  const __m256i ones = _mm256_set1_epi16(1), low_byte = _mm256_set1_epi16(0x00FF);
  const __m256i bias = _mm256_set1_epi8(signed_weights ? static_cast<char>(0x80) : 0);
  for (int64_t b = 0; b < blocks; ++b) {
    const int16_t* q = a.q + m * a.K + b * 32;
    __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
    __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 16));
    if (a.eight_bit) {
      x0 = detail::to_eight_bits(x0);
      x1 = detail::to_eight_bits(x1);
      d8[b] = a.d[m * blocks + b] * (32767.f / 127.f);
    }
    // packs interleaves 128-bit lanes; the permute puts the values back in element order.
    const __m256i lo = _mm256_permute4x64_epi64(
        _mm256_packus_epi16(_mm256_and_si256(x0, low_byte), _mm256_and_si256(x1, low_byte)), 0xD8);
    const __m256i h0 = _mm256_srai_epi16(x0, 8), h1 = _mm256_srai_epi16(x1, 8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi16(h0, h1), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64 + 32),
                        _mm256_xor_si256(hi, bias));
    // The values the products use (q8 in eight-bit mode), summed per half of the block.
    half_sums[2 * b] = detail::sum_i32(_mm256_madd_epi16(a.eight_bit ? h0 : x0, ones));
    half_sums[2 * b + 1] = detail::sum_i32(_mm256_madd_epi16(a.eight_bit ? h1 : x1, ones));
  }
}

#define ALEM_LANES_INLINE inline __attribute__((always_inline))
#define ALEM_LANES8_DOT(acc, u, s) \
  _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define ALEM_LANES8_PAIRS(u, s) _mm256_maddubs_epi16((u), (s))
#include "kernels/cpu/matmul_interleaved_lanes8.inc"
#undef ALEM_LANES8_PAIRS
#undef ALEM_LANES8_DOT
#undef ALEM_LANES_INLINE

using PairLanes = Lanes8;  // never used as a pair: kHasPairs is false
constexpr bool kHasPairs = false;

#include "kernels/cpu/matmul_interleaved_run.inc"

}  // namespace interleaved
}  // namespace alem::cpu::avx2
