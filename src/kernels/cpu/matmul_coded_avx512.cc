// bf16 weights with coded exponents (model/bf16_coded.h) on AVX-512F/BW: the exact decode
// matmul at one row of x (x kept in f32, as matmul_avx512.cc's bf16 kernels), and the unpacking
// of rows to plain bf16 that every larger matmul runs its usual kernel on
// (CpuBackend::matmul_coded). At one row of x a matmul reads each weight once and is bound by
// memory: here 12 bits a weight instead of 16, unpacked in registers.
#include <immintrin.h>

#include "core/dtype.h"
#include "kernels/cpu/bf16_coded_avx512.h"
#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512 {

void unpack_coded_rows(const Bf16CodedView& w, int64_t r0, int64_t rows, uint16_t* out) {
  const int64_t K = w.cols;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w.row(r0 + r);
    const __m512i table = coded::row_table(w.tables + (r0 + r) * kBf16CodedTableBytes);
    uint16_t* o = out + r * K;
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      __m512i w0, w1;
      coded::unpack_chunk(row + k / kBf16CodedChunk * kBf16CodedChunkBytes, table, w0, w1);
      _mm512_storeu_si512(o + k, w0);
      _mm512_storeu_si512(o + k + 32, w1);
    }
    const uint32_t* e = w.exceptions;
    for (uint32_t i = w.exception_begin[r0 + r]; i < w.exception_begin[r0 + r + 1]; ++i) {
      o[e[i] >> 16] = static_cast<uint16_t>(e[i] & 0xFFFF);
    }
  }
}

// Lane 4 L + j of the four f32 vectors a chunk's w0 and w1 widen to (below) holds weight
// 32 h + 8 L + 4 g + j of the chunk (vector 2 h + g); x goes into the same order.
void permute_x_for_coded(const float* x, int64_t M, int64_t K, float* out) {
  for (int64_t k = 0; k < M * K; k += kBf16CodedChunk) {
    for (int v = 0; v < 4; ++v) {
      for (int lane = 0; lane < 16; ++lane) {
        const int L = lane / 4, j = lane % 4;
        out[k + 16 * v + lane] = x[k + 32 * (v / 2) + 8 * L + 4 * (v % 2) + j];
      }
    }
  }
}

namespace {

// MB rows of x (1 .. kCodedMaxRows; permuted rows and plain rows, both of stride K) against
// weight rows [n_begin, n_end), one weight row at a time: the matrix is one stream, each chunk
// unpacked once for all MB rows. One row of x takes four chains of FMAs; more take one per row.
template <int MB>
void coded_rows(const float* x_permuted, const float* x, const Bf16CodedView& w, const float* bias,
                float* y, int64_t N, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  constexpr int kChains = MB == 1 ? 4 : 1;
  const bool prefetch =
      stream_prefetches(StreamKind::kLight, static_cast<size_t>(MB * K) * sizeof(float));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = w.row(n);
    const __m512i table = coded::row_table(w.tables + n * kBf16CodedTableBytes);
    __m512 acc[MB][kChains];
    for (int m = 0; m < MB; ++m) {
      for (int c = 0; c < kChains; ++c) acc[m][c] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      __m512i w0, w1;
      coded::stream_chunk(row, k, table, prefetch, w0, w1);
      // A bf16 value is the top half of its f32: unpacking with zero words widens it.
      const __m512 f[4] = {_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, w0)),
                           _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, w0)),
                           _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, w1)),
                           _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, w1))};
      for (int m = 0; m < MB; ++m) {
        for (int v = 0; v < 4; ++v) {
          __m512& a = acc[m][v % kChains];
          a = _mm512_fmadd_ps(f[v], _mm512_loadu_ps(x_permuted + m * K + k + 16 * v), a);
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      __m512 total = acc[m][0];
      for (int c = 1; c < kChains; ++c) total = _mm512_add_ps(total, acc[m][c]);
      float sum = _mm512_reduce_add_ps(total);
      for (uint32_t i = w.exception_begin[n]; i < w.exception_begin[n + 1]; ++i) {
        sum += bf16_to_f32(static_cast<uint16_t>(w.exceptions[i] & 0xFFFF)) *
               x[m * K + (w.exceptions[i] >> 16)];
      }
      y[m * N + n] = sum + (bias ? bias[n] : 0.f);
    }
  }
}

}  // namespace

void matvec_coded(const float* x_permuted, const float* x, int64_t M, const Bf16CodedView& w,
                  const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t N = w.rows;
  switch (M) {
    case 1:
      return coded_rows<1>(x_permuted, x, w, bias, y, N, n_begin, n_end);
    case 2:
      return coded_rows<2>(x_permuted, x, w, bias, y, N, n_begin, n_end);
    case 3:
      return coded_rows<3>(x_permuted, x, w, bias, y, N, n_begin, n_end);
    default:
      return coded_rows<4>(x_permuted, x, w, bias, y, N, n_begin, n_end);
  }
}

}  // namespace alem::cpu::avx512
