// K-quant block-weight matmul (Q4_K, Q5_K, Q6_K) on AVX512-VNNI: the kernels of
// matmul_blocks_k_kernel.inc with the int16 dot product done by vpdpwssd on 256-bit registers.
// Only called when the CPU reports AVX512-VNNI (cpu::has_avx512_vnni).
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx512_vnni {

#define ALEM_BLOCK_DOT(acc, w, x) _mm256_dpwssd_epi32((acc), (w), (x))
#include "kernels/cpu/matmul_blocks_k_kernel.inc"
#undef ALEM_BLOCK_DOT

}  // namespace alem::cpu::avx512_vnni
