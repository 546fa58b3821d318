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

#include "kernels/cpu/matmul_interleaved_split_avx2.inc"

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
using BlockPairs = Lanes8;  // never used: kHasBlockPairs is false
constexpr bool kHasBlockPairs = false;

#include "kernels/cpu/matmul_interleaved_run.inc"

}  // namespace interleaved
}  // namespace alem::cpu::avx2
