/* Force-included into llama.cpp's LLAMA_ISA=avx_vnni build (bench/llama_build.sh) on a CPU that
 * has AVX512-VNNI with AVX512-VL but not AVX-VNNI (AMD's Zen 4, Intel's Ice Lake): ggml's
 * AVX-VNNI code calls _mm256_dpbusd_avx_epi32, whose VEX encoding such a CPU cannot run, so this
 * writes the same instruction in its EVEX encoding, as alem's avx_vnni_evex kernels do
 * (src/kernels/cpu/matmul_interleaved_avx_vnni.h). Both compute exactly the same. */
#ifndef ALEM_LLAMA_AVX_VNNI_EVEX_H
#define ALEM_LLAMA_AVX_VNNI_EVEX_H
#include <immintrin.h>

static inline __m256i alem_evex_dpbusd(__m256i acc, __m256i u, __m256i s) {
  /* AT&T order: signed, unsigned, accumulator; %{ %} are a literal { }. */
  __asm__("%{evex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s));
  return acc;
}
#define _mm256_dpbusd_avx_epi32(acc, u, s) alem_evex_dpbusd((acc), (u), (s))
#endif
