// bf16 weights with coded exponents (model/bf16_coded.h) against x rounded to bf16, on
// AVX512-BF16's vdpbf16ps: the decode matmul at one row of x where the bf16 dot products are
// taken (matmul_dot_avx512.cc's precision), up to 8 rows of x (their x, 32 KiB at K = 2048,
// stays in the L1; 11 rows, which leave it, ran 17% behind the plain kernel). The weights stream at
// 12 bits each and are unpacked in registers, six instructions per 64 weights beside the two dot
// products.
#include <immintrin.h>

#include "core/dtype.h"
#include "kernels/cpu/bf16_coded_avx512.h"
#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512_dot {

namespace {

// MB rows of x (1 .. kCodedMaxRowsBf16; bf16, stride K) against weight rows [n_begin, n_end),
// one weight row at a time, each chunk unpacked once for all MB rows. Up to 4 rows of x, two
// chains per row, one per half chunk, keep ahead of the vdpbf16ps latency; more rows are
// chains enough.
template <int MB>
void coded_rows_bf16(const uint16_t* xb, const Bf16CodedView& w, const float* bias, float* y,
                     int64_t N, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  const bool prefetch =
      stream_prefetches(StreamKind::kLight, static_cast<size_t>(MB * K) * sizeof(uint16_t));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = w.row(n);
    const __m512i table = coded::row_table(w.tables + n * kBf16CodedTableBytes);
    constexpr int kChains = MB <= 4 ? 2 : 1;
    __m512 acc[MB][kChains];
    for (int m = 0; m < MB; ++m) {
      for (int c = 0; c < kChains; ++c) acc[m][c] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      __m512i w0, w1;
      coded::stream_chunk(row, k, table, prefetch, w0, w1);
      for (int m = 0; m < MB; ++m) {
        const uint16_t* xm = xb + m * K + k;
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)_mm512_loadu_si512(xm), (__m512bh)w0);
        acc[m][kChains - 1] = _mm512_dpbf16_ps(acc[m][kChains - 1],
                                               (__m512bh)_mm512_loadu_si512(xm + 32), (__m512bh)w1);
      }
    }
    for (int m = 0; m < MB; ++m) {
      float sum = _mm512_reduce_add_ps(kChains == 2 ? _mm512_add_ps(acc[m][0], acc[m][kChains - 1])
                                                    : acc[m][0]);
      for (uint32_t i = w.exception_begin[n]; i < w.exception_begin[n + 1]; ++i) {
        sum += bf16_to_f32(static_cast<uint16_t>(w.exceptions[i] & 0xFFFF)) *
               bf16_to_f32(xb[m * K + (w.exceptions[i] >> 16)]);
      }
      y[m * N + n] = sum + (bias ? bias[n] : 0.f);
    }
  }
}

}  // namespace

void matvec_coded_bf16(const uint16_t* xb, int64_t M, const Bf16CodedView& w, const float* bias,
                       float* y, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows;
  switch (M) {
    case 1:
      return coded_rows_bf16<1>(xb, w, bias, y, N, n_begin, n_end);
    case 2:
      return coded_rows_bf16<2>(xb, w, bias, y, N, n_begin, n_end);
    case 3:
      return coded_rows_bf16<3>(xb, w, bias, y, N, n_begin, n_end);
    case 4:
      return coded_rows_bf16<4>(xb, w, bias, y, N, n_begin, n_end);
    case 5:
      return coded_rows_bf16<5>(xb, w, bias, y, N, n_begin, n_end);
    case 6:
      return coded_rows_bf16<6>(xb, w, bias, y, N, n_begin, n_end);
    case 7:
      return coded_rows_bf16<7>(xb, w, bias, y, N, n_begin, n_end);
    default:
      return coded_rows_bf16<8>(xb, w, bias, y, N, n_begin, n_end);
  }
}

}  // namespace alem::cpu::avx512_dot
