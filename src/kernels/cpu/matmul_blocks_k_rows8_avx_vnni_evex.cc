// matmul_blocks_k_rows8_avx_vnni.cc with vpdpbusd in its EVEX encoding (AVX512-VNNI with
// AVX512-VL) and AVX2 code otherwise: the AVX-VNNI kernel set as CPUs with AVX-512 but no
// AVX-VNNI run it (matmul_interleaved_avx_vnni.h).
#define ALEM_AVX_VNNI_EVEX 1
#include "kernels/cpu/matmul_blocks_k_rows8_avx_vnni.cc"
