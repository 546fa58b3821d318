// Q4_0, Q4_1, Q8_0 and int8 matmul on interleaved weights (model/interleaved_blocks.h) with AVX2
// and AVX-VNNI: the AVX512-VNNI kernel's arithmetic (matmul_blocks_rows8_kernel.inc) on 256-bit
// registers, 8 weight rows per register, one vpdpbusd per byte dot product
// (matmul_interleaved_avx_vnni.h). Compiled a second time, in the EVEX encoding, by
// matmul_blocks_rows8_avx_vnni_evex.cc.
#include <algorithm>
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_avx_vnni.h"
#include "model/gguf_quant.h"

namespace alem::cpu::ALEM_AVX_VNNI_NAMESPACE {
#include "kernels/cpu/matmul_blocks_rows8_kernel.inc"
}  // namespace alem::cpu::ALEM_AVX_VNNI_NAMESPACE
