// K-quant block-weight matmul (Q4_K, Q5_K, Q6_K) on AVX2: the kernels of
// matmul_blocks_k_kernel.inc with the int16 dot product done by vpmaddwd.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx2 {

#define ALEM_BLOCK_DOT(acc, w, x) _mm256_add_epi32((acc), _mm256_madd_epi16((w), (x)))
#include "kernels/cpu/matmul_blocks_k_kernel.inc"
#undef ALEM_BLOCK_DOT

}  // namespace alem::cpu::avx2
