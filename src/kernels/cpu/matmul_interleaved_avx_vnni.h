// What the interleaved block-weight kernels (model/interleaved_blocks.h) need on CPUs with AVX2
// and AVX-VNNI (Intel's Alder Lake and later clients, Sierra Forest, AMD's Zen 5) but no
// AVX-512: AVX2's byte split of the activations (matmul_interleaved_split_avx2.inc) and
// Lanes8 (matmul_interleaved_lanes8.inc) with its dot product done by one 256-bit vpdpbusd, as
// on AVX512-VNNI. So every type takes the VNNI arithmetic of matmul_blocks_rows8_kernel.inc and
// matmul_blocks_k_rows8_kernel.inc, Q8_0 and int8 included (x is the unsigned operand, its high
// byte stored + 128), where plain AVX2 needs two byte instructions or int16 products.
//
// Two encodings of the same instruction, one per translation unit:
//   - avx_vnni (*_avx_vnni.cc, built with -mavxvnni): the VEX form, for AVX-VNNI CPUs;
//   - avx_vnni_evex (*_avx_vnni_evex.cc, the same source with ALEM_AVX_VNNI_EVEX defined, AVX2
//     flags only): the EVEX form of AVX512-VNNI with AVX512-VL, written as inline assembly so
//     the rest of the code is the AVX2 code the VEX unit compiles to. It computes exactly the
//     same, and lets CPUs with AVX-512 but no AVX-VNNI (AMD's Zen 4, Intel's Ice Lake) run and
//     test this kernel set (ALEM_CPU_ISA=avx_vnni).
// The includer defines ALEM_AVX_VNNI_EVEX or not, then includes this header and opens
// namespace alem::cpu::ALEM_AVX_VNNI_NAMESPACE for the per-group arithmetic.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"

#ifdef ALEM_AVX_VNNI_EVEX
#define ALEM_AVX_VNNI_NAMESPACE avx_vnni_evex
#else
#define ALEM_AVX_VNNI_NAMESPACE avx_vnni
#endif

namespace alem::cpu::ALEM_AVX_VNNI_NAMESPACE {
namespace interleaved {

#include "kernels/cpu/matmul_interleaved_split_avx2.inc"

#define ALEM_LANES_INLINE inline __attribute__((always_inline))

// acc plus, per 32-bit lane, the four products of u's unsigned bytes and s's signed bytes.
ALEM_LANES_INLINE __m256i dot_bytes(__m256i acc, __m256i u, __m256i s) {
#ifdef ALEM_AVX_VNNI_EVEX
  // AT&T order: vpdpbusd signed, unsigned, accumulator; %{ %} are a literal { }.
  asm("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "xm"(s));
  return acc;
#else
  return _mm256_dpbusd_avx_epi32(acc, u, s);
#endif
}

#define ALEM_LANES8_DOT(acc, u, s) dot_bytes((acc), (u), (s))
#include "kernels/cpu/matmul_interleaved_lanes8.inc"
#undef ALEM_LANES8_DOT
#undef ALEM_LANES_INLINE

using PairLanes = Lanes8;  // never used as a pair: kHasPairs is false
constexpr bool kHasPairs = false;
using BlockPairs = Lanes8;  // never used: kHasBlockPairs is false
constexpr bool kHasBlockPairs = false;

#include "kernels/cpu/matmul_interleaved_run.inc"

}  // namespace interleaved
}  // namespace alem::cpu::ALEM_AVX_VNNI_NAMESPACE
