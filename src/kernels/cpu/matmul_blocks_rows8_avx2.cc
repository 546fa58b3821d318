// Q4_0 and Q4_1 matmul on interleaved weights (model/interleaved_blocks.h) with AVX2: the
// AVX512-VNNI kernel's arithmetic (matmul_blocks_rows8_kernel.inc) on 256-bit registers, 8
// weight rows per register, its byte dot product done by vpmaddubsw and vpmaddwd
// (matmul_interleaved_avx2.h). Q8_0 and int8, whose signed bytes would saturate those byte
// products, go to their int16 kernel (matmul_bytes_interleaved,
// matmul_blocks_rows8_int16_avx2.cc).
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_avx2.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx2 {
#define ALEM_SIGNED_BYTES_KERNEL matmul_bytes_interleaved
#include "kernels/cpu/matmul_blocks_rows8_kernel.inc"
#undef ALEM_SIGNED_BYTES_KERNEL
}  // namespace alem::cpu::avx2
