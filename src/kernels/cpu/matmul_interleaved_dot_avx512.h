// What the interleaved block-weight kernels (model/interleaved_blocks.h) share on AVX512-VNNI:
// the activations split into bytes once per call and the two register widths their arithmetic
// is written over (Lanes8: one group of 8 weight rows per 256-bit register; Lanes16: two groups
// per 512-bit one, from the kernel's Kernel::kPairMinRows rows of x; BlockPairs: one group's two
// block columns per 512-bit one, for a lone group); the loop that walks groups of weight rows and
// rows of x is matmul_interleaved_run.inc, shared with AVX2 (matmul_interleaved_avx2.h).
// matmul_blocks_rows8_kernel.inc (Q4_0, Q4_1, Q8_0, int8) and matmul_blocks_k_rows8_kernel.inc
// (Q4_K, Q5_K, Q6_K) supply the per-group arithmetic. Included only by *_dot_avx512.cc files
// (AVX512-VNNI).
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

#define ALEM_LANES_INLINE inline __attribute__((always_inline))

// The registers a group's arithmetic runs on. Lanes8: one group of 8 weight rows, one row per
// 32-bit lane of a 256-bit register (matmul_interleaved_lanes8.inc, vpdpbusd on AVX512-VL).
// Lanes16: two groups side by side in 512-bit registers (the group at p in the low half, the one
// `gap` bytes later in the high half), so one instruction serves 16 weight rows; run() takes it
// from the kernel's pair_min_rows rows of x (one row for the 4-bit types, 2 for Q8_0 and int8).
#define ALEM_LANES8_DOT(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#include "kernels/cpu/matmul_interleaved_lanes8.inc"
#undef ALEM_LANES8_DOT

struct Lanes16 {
  using I = __m512i;
  using F = __m512;
  static constexpr int kBlocks = 1;
  static constexpr bool kInt16Sums = false;
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
  ALEM_LANES_INLINE static I load_u16(const uint8_t* p, size_t gap) {
    return _mm512_cvtepu16_epi32(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + gap)), 1));
  }
  // int8 scales from their amax codes, bf16 or f16 (int8_amax_scale), both groups.
  template <bool kF16>
  ALEM_LANES_INLINE static F load_amax(const uint8_t* p, size_t gap) {
    const F amax =
        kF16 ? load_f16(p, gap) : _mm512_castsi512_ps(_mm512_slli_epi32(load_u16(p, gap), 16));
    return _mm512_div_ps(amax, _mm512_set1_ps(127.f));
  }
  ALEM_LANES_INLINE static I bytes(char v) { return _mm512_set1_epi8(v); }
  ALEM_LANES_INLINE static I words(int v) { return _mm512_set1_epi32(v); }
  ALEM_LANES_INLINE static I x_bytes(const uint8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  ALEM_LANES_INLINE static void x_chunks(const uint8_t* half, I* chunks) {
    for (int k = 0; k < 8; ++k) chunks[k] = x_bytes(half + 4 * k);
  }
  ALEM_LANES_INLINE static F x_scale(const float* d) { return _mm512_set1_ps(d[0]); }
  ALEM_LANES_INLINE static I block_words(const int32_t* half_sums, int times) {
    return _mm512_set1_epi32(times * (half_sums[0] + half_sums[1]));
  }
  ALEM_LANES_INLINE static I table16(const int8_t* table) {
    return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
  }
  ALEM_LANES_INLINE static I lookup(I table, I idx) { return _mm512_shuffle_epi8(table, idx); }
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
  // As Lanes8's (matmul_interleaved_lanes8.inc): kChains chains of vpdpbusd.
  template <int kInt16Terms, int N, int kChains>
  ALEM_LANES_INLINE static I dot_sum(I acc, const I* u, const I* s) {
    static_assert(kChains == 1 || kChains == 2);
    if constexpr (kChains == 1) {
      for (int j = 0; j < N; ++j) acc = dot(acc, u[j], s[j]);
      return acc;
    }
    I other = zero();
    for (int j = 0; j < N; j += 2) {
      acc = dot(acc, u[j], s[j]);
      if (j + 1 < N) other = dot(other, u[j + 1], s[j + 1]);
    }
    return add(acc, other);
  }
  ALEM_LANES_INLINE static F to_f32(I v) { return _mm512_cvtepi32_ps(v); }
  ALEM_LANES_INLINE static F fzero() { return _mm512_setzero_ps(); }
  ALEM_LANES_INLINE static F fset(float v) { return _mm512_set1_ps(v); }
  ALEM_LANES_INLINE static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  ALEM_LANES_INLINE static F fadd(F a, F b) { return _mm512_add_ps(a, b); }
  ALEM_LANES_INLINE static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  ALEM_LANES_INLINE static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  // y[0 .. 16) = v + bias.
  ALEM_LANES_INLINE static void store(float* y, F v, const float* bias) {
    _mm512_storeu_ps(y, bias ? _mm512_add_ps(v, _mm512_loadu_ps(bias)) : v);
  }
};

// BlockPairs: one group of 8 weight rows, two consecutive block columns side by side (block b
// in the low half, b + 1 in the high half; `gap` is one column's bytes), so 1-3 rows of x run
// 512-bit instructions on one weight stream (the Q4_0-type kernels' lone group: the rest take
// two groups, Lanes16, from one row of x, whose x broadcasts need no shuffles). x's bytes for both
// blocks come from two 16-byte loads, one per half, then one vpshufd per chunk: the CPUs with
// AVX-512 issue two vector loads per cycle, and a broadcast from memory per chunk made them the
// limit (Zen 5: Q4_0 at one row of x ran 38 GB/s from the caches).
struct BlockPairs : Lanes16 {
  static constexpr int kBlocks = 2;
  ALEM_LANES_INLINE static I both_blocks(const uint8_t* p) {
    return _mm512_mask_broadcast_i32x4(
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 0xFF00,
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 64)));
  }
  ALEM_LANES_INLINE static void x_chunks(const uint8_t* half, I* chunks) {
    const I first = both_blocks(half), second = both_blocks(half + 16);
    chunks[0] = _mm512_shuffle_epi32(first, _MM_PERM_AAAA);
    chunks[1] = _mm512_shuffle_epi32(first, _MM_PERM_BBBB);
    chunks[2] = _mm512_shuffle_epi32(first, _MM_PERM_CCCC);
    chunks[3] = _mm512_shuffle_epi32(first, _MM_PERM_DDDD);
    chunks[4] = _mm512_shuffle_epi32(second, _MM_PERM_AAAA);
    chunks[5] = _mm512_shuffle_epi32(second, _MM_PERM_BBBB);
    chunks[6] = _mm512_shuffle_epi32(second, _MM_PERM_CCCC);
    chunks[7] = _mm512_shuffle_epi32(second, _MM_PERM_DDDD);
  }
  ALEM_LANES_INLINE static F x_scale(const float* d) {
    return _mm512_insertf32x8(_mm512_set1_ps(d[0]), _mm256_set1_ps(d[1]), 1);
  }
  ALEM_LANES_INLINE static I block_words(const int32_t* half_sums, int times) {
    return _mm512_mask_set1_epi32(_mm512_set1_epi32(times * (half_sums[0] + half_sums[1])), 0xFF00,
                                  times * (half_sums[2] + half_sums[3]));
  }
  // The two blocks' sums added: the 8 rows' (Lanes8).
  ALEM_LANES_INLINE static __m256 fold(F v) {
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  }
};
constexpr bool kHasBlockPairs = true;

#undef ALEM_LANES_INLINE

// Two groups per register from kPairMinRows rows of x (Lanes16).
using PairLanes = Lanes16;
constexpr bool kHasPairs = true;

#include "kernels/cpu/matmul_interleaved_run.inc"

// The AMX int8 GEMM's weight panels (amx::Int8TilePanel, cpu_kernels.h), made from the chunks
// the kernels above unpack. Rows [n0, n_end) as Lanes16 reads them: the first group, and the gap
// to the second (0 for a matrix's last lone group, which is then read twice).
struct TileGroups {
  const uint8_t* group;
  size_t gap;
};
inline __attribute__((always_inline)) TileGroups tile_groups(const WeightView& w, int64_t n0,
                                                             int64_t n_end) {
  const size_t group_bytes = interleaved_row_bytes(w.dtype, w.cols, w.layout) * kGroup;
  return {static_cast<const uint8_t*>(w.data) + (n0 / kGroup) * group_bytes,
          n_end - n0 > kGroup ? group_bytes : 0};
}
// Block `block` of a panel: the 8 chunk registers (chunk r: values 4r..4r+3 of weight row j in
// 32-bit lane j, the B tile's row r as it is), the 16 rows' scales and, where the type has
// them, minimums.
inline __attribute__((always_inline)) void store_tile_block(const amx::Int8TilePanel& panel,
                                                            int64_t block, const __m512i* chunks,
                                                            __m512 scale, const __m512* minimum) {
  int8_t* codes = panel.codes + block * 512;
  for (int r = 0; r < 8; ++r) _mm512_store_si512(codes + 64 * r, chunks[r]);
  _mm512_store_ps(panel.scales + block * 16, scale);
  if (minimum != nullptr) _mm512_store_ps(panel.minimums + block * 16, *minimum);
}

}  // namespace interleaved
}  // namespace alem::cpu::avx512_vnni
