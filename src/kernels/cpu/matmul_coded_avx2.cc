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

// Half h (0 or 1) of a chunk of 64 weights as bf16, in order: the low bytes of positions
// 32 h .. 32 h + 31 meet the codes' low (h = 0) or high (h = 1) nibbles; the unpacking gives
// weights 16 h .. 16 h + 15 in lo and 32 + 16 h .. 32 + 16 h + 15 in hi. A kernel takes a half at
// a time, so only two vectors of weights are live beside its accumulators.
inline void unpack_half(const uint8_t* chunk, __m256i codes, int h, __m256i table, __m256i& lo,
                        __m256i& hi) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 32 * h));
  const __m256i high = _mm256_shuffle_epi8(
      table, _mm256_and_si256(h == 0 ? codes : _mm256_srli_epi16(codes, 4), nibble));
  lo = _mm256_unpacklo_epi8(low, high);
  hi = _mm256_unpackhi_epi8(low, high);
}

inline __m256i chunk_codes(const uint8_t* chunk) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 64));
}

// MB rows of x (permuted, and plain for the exceptions; stride K) against weight rows
// [n_begin, n_end), one weight row at a time: the matrix is one sequential stream and each chunk
// is unpacked once for all MB rows. Four chains of FMAs per row of x at one or two rows, two at
// three or four (AVX2's 16 registers).
template <int MB>
void coded_rows(const float* xp, const float* x, const Bf16CodedView& w, const float* bias,
                float* y, int64_t N, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols;
  constexpr int kChains = MB <= 2 ? 4 : 2;
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
      const __m256i codes = chunk_codes(chunk);
      for (int h = 0; h < 2; ++h) {
        __m256i v[2];
        unpack_half(chunk, codes, h, table, v[0], v[1]);
        for (int i = 0; i < 2; ++i) {
          // A bf16 value is the top half of its f32: the even weights shifted up, the odd masked.
          const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v[i], 16));
          const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v[i], high_half));
          const int q = h + 2 * i;  // weights 16 q .. 16 q + 15
          for (int m = 0; m < MB; ++m) {
            const float* xk = xp + m * K + k + 16 * q;
            __m256& a = acc[m][(2 * q) % kChains];
            a = _mm256_fmadd_ps(_mm256_load_ps(xk), even, a);
            __m256& b = acc[m][(2 * q + 1) % kChains];
            b = _mm256_fmadd_ps(_mm256_load_ps(xk + 8), odd, b);
          }
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
      const uint8_t* chunk = row + k / kBf16CodedChunk * kBf16CodedChunkBytes;
      const __m256i codes = chunk_codes(chunk);
      for (int h = 0; h < 2; ++h) {
        __m256i lo, hi;
        unpack_half(chunk, codes, h, table, lo, hi);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k + 16 * h), lo);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + k + 32 + 16 * h), hi);
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
