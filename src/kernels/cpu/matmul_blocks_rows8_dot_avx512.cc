// Q4_0, Q4_1, Q8_0 and alem's int8 matmul on interleaved weights (model/interleaved_blocks.h)
// with AVX512-VNNI vpdpbusd: 8 weight rows per 256-bit register, one per 32-bit lane; from 4
// rows of x (prefill) two groups side by side in 512-bit registers (Lanes16: 16 weight rows per
// instruction), and for 1-3 rows of x on 4-bit and 5-bit weights two block columns of one group
// side by side (BlockPairs; both in matmul_interleaved_dot_avx512.h). One template body
// (matmul_blocks_rows8_kernel.inc, shared with AVX2) serves both widths. Only called when the
// CPU reports AVX512-VNNI.
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_dot_avx512.h"
#include "model/gguf_quant.h"

// This copy also makes the AMX int8 GEMM's weight panels (amx::Int8TilePanel).
#define ALEM_INT8_TILE_PANELS
namespace alem::cpu::avx512_vnni {
#include "kernels/cpu/matmul_blocks_rows8_kernel.inc"
}  // namespace alem::cpu::avx512_vnni
