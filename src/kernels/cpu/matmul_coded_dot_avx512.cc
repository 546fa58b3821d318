// bf16 weights with coded exponents (model/bf16_coded.h) against x rounded to bf16, on
// AVX512-BF16's vdpbf16ps: the decode matmul at one row of x where the bf16 dot products are
// taken (matmul_dot_avx512.cc's precision). The weights stream at 12 bits each and are unpacked
// in registers, six instructions per 64 weights beside the two dot products.
#include <immintrin.h>

#include "core/dtype.h"
#include "kernels/cpu/bf16_coded_avx512.h"
#include "kernels/cpu/cpu_kernels.h"

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// reports once inlined here; nothing is read uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace alem::cpu::avx512_dot {

void matvec_coded_bf16(const uint16_t* xb, const Bf16CodedView& w, const float* bias, float* y,
                       int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  const bool prefetch =
      stream_prefetches(StreamKind::kLight, static_cast<size_t>(K) * sizeof(uint16_t));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = w.row(n);
    const __m512i table = coded::row_table(w.tables + n * kBf16CodedTableBytes);
    // Two chains, one per half chunk, keep ahead of the vdpbf16ps latency.
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      __m512i w0, w1;
      coded::stream_chunk(row, k, table, prefetch, w0, w1);
      acc0 = _mm512_dpbf16_ps(acc0, (__m512bh)_mm512_loadu_si512(xb + k), (__m512bh)w0);
      acc1 = _mm512_dpbf16_ps(acc1, (__m512bh)_mm512_loadu_si512(xb + k + 32), (__m512bh)w1);
    }
    float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (uint32_t i = w.exception_begin[n]; i < w.exception_begin[n + 1]; ++i) {
      sum += bf16_to_f32(static_cast<uint16_t>(w.exceptions[i] & 0xFFFF)) *
             bf16_to_f32(xb[w.exceptions[i] >> 16]);
    }
    y[n] = sum + (bias ? bias[n] : 0.f);
  }
}

}  // namespace alem::cpu::avx512_dot
