// bf16 weights with coded exponents (model/bf16_coded.h) on AVX2 CPUs: the same bytes as on
// AVX-512, unpacked in 256-bit registers. The chunk's layout was made for AVX-512's byte
// unpacking across four 128-bit lanes; AVX2's works on two, so each half of a chunk's low bytes
// meets its half of the code nibbles and the two unpackings give weights 0..15, 16..31, 32..47
// and 48..63 in order. A decode step on AVX2 reads every weight once and is bound by memory, so
// 12 bits a weight instead of 16 is the step's cost cut by a quarter.
//
// The exact decode matmul at 1..kCodedMaxRows rows of x widens bf16 to f32 as matmul_avx2.cc's
// even/odd kernel does (a shift for the even weights, a mask for the odd), against x in
// permute_x_for_coded's order; larger matmuls run the plain kernels on rows unpacked by
// unpack_coded_rows (CpuBackend::matmul, on_plain_rows).
#include <immintrin.h>

#include "core/dtype.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/registers_avx2.h"

namespace alem::cpu::avx2 {
namespace {

// A row's 16-byte code table in both 128-bit lanes (vpshufb looks up within lanes).
inline __m256i row_table(const uint8_t* table) {
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
}

// One chunk of 64 weights as bf16, 16 in each of w[0..3] in order: the low bytes of positions
// 0..31 meet the codes' low nibbles, those of positions 32..63 their high nibbles.
inline void unpack_chunk(const uint8_t* chunk, __m256i table, __m256i w[4]) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i low0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk));
  const __m256i low1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 32));
  const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 64));
  const __m256i high0 = _mm256_shuffle_epi8(table, _mm256_and_si256(codes, nibble));
  const __m256i high1 =
      _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble));
  w[0] = _mm256_unpacklo_epi8(low0, high0);  // weights 0..15
  w[1] = _mm256_unpacklo_epi8(low1, high1);  // 16..31
  w[2] = _mm256_unpackhi_epi8(low0, high0);  // 32..47
  w[3] = _mm256_unpackhi_epi8(low1, high1);  // 48..63
}

// MB rows of x (permuted, and plain for the exceptions; stride K) against weight rows
// [n_begin, n_end), one weight row at a time: the matrix is one sequential stream and each chunk
// is unpacked once for all MB rows. AVX2's 16 registers hold 4 chains of FMAs for one row of x,
// 2 per row for two, one per row for more.
template <int MB>
void coded_rows(const float* xp, const float* x, const Bf16CodedView& w, const float* bias,
                float* y, int64_t N, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  constexpr int kChains = MB == 1 ? 4 : (MB == 2 ? 2 : 1);
  const bool prefetch =
      stream_prefetches(StreamKind::kLight, static_cast<size_t>(MB * K) * sizeof(float));
  const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = w.row(n);
    const __m256i table = row_table(w.tables + n * kBf16CodedTableBytes);
    __m256 acc[MB][kChains];
    for (int m = 0; m < MB; ++m) {
      for (int c = 0; c < kChains; ++c) acc[m][c] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      const uint8_t* chunk = row + k / kBf16CodedChunk * kBf16CodedChunkBytes;
      prefetch_stream(prefetch, chunk);
      prefetch_stream(prefetch, chunk + 64);
      __m256i v[4];
      unpack_chunk(chunk, table, v);
      for (int q = 0; q < 4; ++q) {
        // A bf16 value is the top half of its f32: the even weights shifted up, the odd masked.
        const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v[q], 16));
        const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v[q], high_half));
        for (int m = 0; m < MB; ++m) {
          const float* xk = xp + m * K + k + 16 * q;
          __m256& a = acc[m][(2 * q) % kChains];
          a = _mm256_fmadd_ps(_mm256_load_ps(xk), even, a);
          __m256& b = acc[m][(2 * q + 1) % kChains];
          b = _mm256_fmadd_ps(_mm256_load_ps(xk + 8), odd, b);
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      __m256 total = acc[m][0];
      for (int c = 1; c < kChains; ++c) total = _mm256_add_ps(total, acc[m][c]);
      float sum = horizontal_sum(total);
      for (uint32_t i = w.exception_begin[n]; i < w.exception_begin[n + 1]; ++i) {
        sum += bf16_to_f32(static_cast<uint16_t>(w.exceptions[i] & 0xFFFF)) *
               x[m * K + (w.exceptions[i] >> 16)];
      }
      y[m * N + n] = sum + (bias ? bias[n] : 0.f);
    }
  }
}

}  // namespace

void unpack_coded_rows(const Bf16CodedView& w, int64_t r0, int64_t rows, uint16_t* out) {
  const int64_t K = w.cols;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = w.row(r0 + r);
    const __m256i table = row_table(w.tables + (r0 + r) * kBf16CodedTableBytes);
    uint16_t* o = out + r * K;
    for (int64_t k = 0; k < K; k += kBf16CodedChunk) {
      __m256i v[4];
      unpack_chunk(row + k / kBf16CodedChunk * kBf16CodedChunkBytes, table, v);
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k + 16 * q), v[q]);
      }
    }
    const uint32_t* e = w.exceptions;
    for (uint32_t i = w.exception_begin[r0 + r]; i < w.exception_begin[r0 + r + 1]; ++i) {
      o[e[i] >> 16] = static_cast<uint16_t>(e[i] & 0xFFFF);
    }
  }
}

// Each 16 values of x: the 8 even-indexed ones, then the 8 odd ones (the order coded_rows
// widens a chunk's weights in).
void permute_x_for_coded(const float* x, int64_t M, int64_t K, float* out) {
  for (int64_t i = 0; i < M * K; i += 16) {
    for (int j = 0; j < 8; ++j) {
      out[i + j] = x[i + 2 * j];
      out[i + 8 + j] = x[i + 2 * j + 1];
    }
  }
}

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

}  // namespace alem::cpu::avx2
