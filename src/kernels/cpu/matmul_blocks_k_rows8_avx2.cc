// Q4_K, Q5_K and Q6_K matmul on interleaved weights (model/interleaved_blocks.h) with AVX2: the
// AVX512-VNNI kernel's arithmetic (matmul_blocks_k_rows8_kernel.inc) on 256-bit registers, its
// byte dot product done by vpmaddubsw and vpmaddwd (matmul_interleaved_avx2.h; Q6_K's 6-bit
// values keep every pair of products within int16).
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_avx2.h"

namespace alem::cpu::avx2 {
#include "kernels/cpu/matmul_blocks_k_rows8_kernel.inc"
}  // namespace alem::cpu::avx2
