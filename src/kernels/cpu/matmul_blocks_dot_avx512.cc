// Block-weight matmul (Q4_0, Q4_1, Q8_0) on AVX512-VNNI: the kernels of
// matmul_blocks_kernel.inc with the int16 dot product done by vpdpwssd (on 256-bit registers,
// AVX512-VL), which multiplies, pairs and accumulates in one instruction. Only called when the CPU
// reports AVX512-VNNI (cpu::has_avx512_vnni).
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512_vnni {

#define ALEM_BLOCK_DOT(acc, w, x) _mm256_dpwssd_epi32((acc), (w), (x))
#include "kernels/cpu/matmul_blocks_kernel.inc"
#undef ALEM_BLOCK_DOT

}  // namespace alem::cpu::avx512_vnni
