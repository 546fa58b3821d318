// Matmul kernels for AVX2/FMA CPUs (8 floats per vector), the same two forms as
// matmul_avx512.cc: a streaming dot-product kernel for decode, and a packed GEMM for prefill
// (W tiles converted and transposed into a 16-column f32 panel, 6x16 micro-kernel with 12
// accumulators, which fits AVX2's 16 registers). AVX2 has no masked 16-bit loads, so ragged
// edges go through a small zero-padded copy instead.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/registers_avx2.h"

namespace alem::cpu::avx2 {
namespace {

constexpr int kMicroRows = 6;
constexpr int kDepth = 256;  // 16 x 256 f32 = 16 KiB panel
constexpr int kVectors = kPanelCols / 8;

template <DType D>
constexpr int64_t element_bytes() {
  return D == DType::F32 ? 4 : (D == DType::I8 ? 1 : 2);
}

struct WeightRow {
  const uint8_t* data;
  const float* scales;
};

template <DType D>
inline WeightRow weight_row(const WeightView& w, int64_t n) {
  WeightRow row;
  row.data = static_cast<const uint8_t*>(w.data) + n * w.cols * element_bytes<D>();
  row.scales = D == DType::I8 ? w.scales + n * (w.cols / kInt8GroupSize) : nullptr;
  return row;
}

// 8 weights of `row` from column k as f32.
template <DType D>
inline __m256 load_weights(const WeightRow& row, int64_t k) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row.data) + k);
  } else if constexpr (D == DType::BF16) {
    const __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row.data) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else if constexpr (D == DType::F16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(
        reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row.data) + k)));
  } else {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row.data + k));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
                         _mm256_set1_ps(row.scales[k / kInt8GroupSize]));
  }
}

// The first `count` (< 8) weights from column k, the other lanes zero.
template <DType D>
inline __m256 load_weights_partial(const WeightRow& row, int64_t k, int count) {
  alignas(32) uint8_t padded[8 * element_bytes<D>()] = {};
  const uint8_t* src = row.data + k * element_bytes<D>();
  for (int i = 0; i < count * element_bytes<D>(); ++i) padded[i] = src[i];
  WeightRow copy{padded, row.scales ? row.scales + k / kInt8GroupSize : nullptr};
  return load_weights<D>(copy, 0);
}

inline __m256 load_floats_partial(const float* src, int count) {
  alignas(32) float padded[8] = {};
  for (int i = 0; i < count; ++i) padded[i] = src[i];
  return _mm256_load_ps(padded);
}

// ----------------------------------------------------------------------------------------------
// Streaming (decode) kernel.

template <DType D, int MB, int Rows>
void stream_block(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                  float* y, int64_t N) {
  WeightRow rows[Rows];
  for (int r = 0; r < Rows; ++r) rows[r] = weight_row<D>(w, n + r);
  __m256 acc[MB][Rows];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) acc[m][r] = _mm256_setzero_ps();
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[Rows];
    for (int r = 0; r < Rows; ++r) wv[r] = load_weights<D>(rows[r], k);
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
      for (int r = 0; r < Rows; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  if (k < K) {
    const int count = static_cast<int>(K - k);
    __m256 wv[Rows];
    for (int r = 0; r < Rows; ++r) wv[r] = load_weights_partial<D>(rows[r], k, count);
    for (int m = 0; m < MB; ++m) {
      const __m256 xv = load_floats_partial(x + m * K + k, count);
      for (int r = 0; r < Rows; ++r) acc[m][r] = _mm256_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < Rows; ++r) {
      y[m * N + n + r] = horizontal_sum(acc[m][r]) + (bias ? bias[n + r] : 0.f);
    }
  }
}

// One weight row against one row of x (decode). Rows are walked one after another, so the matrix
// is read as one sequential stream, which the hardware prefetchers follow at full speed (rows
// side by side are short streams that restart every row: half the decode speed on an AMD Zen 4
// running these kernels; docs/kernels.md). Four accumulators hide the FMA latency; the weights
// are prefetched ahead (prefetch_stream).
template <DType D>
void stream_row(const float* x, int64_t K, const WeightView& w, int64_t n, const float* bias,
                float* y, bool prefetch) {
  const WeightRow row = weight_row<D>(w, n);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    // The rows lie one after another, so the stream runs on into the next rows.
    for (int line = 0; line < 32 * element_bytes<D>(); line += 64) {
      prefetch_stream(prefetch, row.data + k * element_bytes<D>() + line);
    }
    for (int i = 0; i < 4; ++i) {
      acc[i] =
          _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8 * i), load_weights<D>(row, k + 8 * i), acc[i]);
    }
  }
  for (; k + 8 <= K; k += 8) {
    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), load_weights<D>(row, k), acc[0]);
  }
  if (k < K) {
    const int count = static_cast<int>(K - k);
    acc[1] = _mm256_fmadd_ps(load_floats_partial(x + k, count),
                             load_weights_partial<D>(row, k, count), acc[1]);
  }
  const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
  y[n] = horizontal_sum(sum) + (bias ? bias[n] : 0.f);
}

template <DType D, int Rows>
void stream_block_rows(const float* x, int64_t M, int64_t K, const WeightView& w, int64_t n,
                       const float* bias, float* y, int64_t N) {
  for (int64_t m0 = 0; m0 < M; m0 += 2) {
    if (M - m0 >= 2) {
      stream_block<D, 2, Rows>(x + m0 * K, K, w, n, bias, y + m0 * N, N);
    } else {
      stream_block<D, 1, Rows>(x + m0 * K, K, w, n, bias, y + m0 * N, N);
    }
  }
}

// bf16 at 1 .. kEvenOddMaxM rows of x (K % 32 == 0): one 256-bit load brings 16 weights, a
// shift makes the even-indexed ones f32 and a mask the odd ones, against x permuted once per
// call into the same order (xp[16j .. 16j + 8) the even values of x[16j .. 16j + 16), then the
// odd), as the AVX-512 kernel does. stream_row's widening load (vpmovzxwd, a shuffle per 8
// weights) left the 1.1B shape's decode at 0.66 of the read bandwidth on an AMD Zen 4 with
// ALEM_CPU_ISA=avx2. Rows one after another: one sequential stream.
constexpr int64_t kEvenOddMaxM = 3;

void permute_even_odd(const float* x, int64_t M, int64_t K, float* xp) {
  for (int64_t i = 0; i < M * K; i += 16) {
    const __m256 lo = _mm256_loadu_ps(x + i), hi = _mm256_loadu_ps(x + i + 8);
    // shuffle_ps works per 128-bit lane; the permute puts the lanes in order.
    _mm256_store_ps(xp + i, _mm256_castpd_ps(_mm256_permute4x64_pd(
                                _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8)));
    _mm256_store_ps(xp + i + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(
                                    _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8)));
  }
}

template <int MB>
void stream_rows_bf16(const float* xp, int64_t K, const uint16_t* base, const float* bias, float* y,
                      int64_t N, int64_t n_begin, int64_t n_end) {
  const bool prefetch =
      stream_prefetches(wide_weights_stream(MB), static_cast<size_t>(MB * K) * sizeof(float));
  const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint16_t* row = base + n * K;
    __m256 acc[MB][4];
    for (int m = 0; m < MB; ++m) {
      for (int c = 0; c < 4; ++c) acc[m][c] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k += 32) {
      prefetch_stream(prefetch, row + k);
      for (int half = 0; half < 2; ++half) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k + 16 * half));
        const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, high_half));
        for (int m = 0; m < MB; ++m) {
          const float* xk = xp + m * K + k + 16 * half;
          acc[m][2 * half] = _mm256_fmadd_ps(_mm256_load_ps(xk), even, acc[m][2 * half]);
          acc[m][2 * half + 1] = _mm256_fmadd_ps(_mm256_load_ps(xk + 8), odd, acc[m][2 * half + 1]);
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      const __m256 sum =
          _mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]), _mm256_add_ps(acc[m][2], acc[m][3]));
      y[m * N + n] = horizontal_sum(sum) + (bias ? bias[n] : 0.f);
    }
  }
}

// bf16 from kEvenOddMaxM + 1 rows of x up to the packed GEMM (K % 32 == 0): 4 weight rows side by
// side against 2 rows of x held in registers (8 accumulators, 4 x vectors: AVX2's 16 registers),
// each weight row loaded, made f32 even and odd as above, and fed to both rows of x; the last
// row of x alone when M is odd. The generic widening kernel it replaced ran 53-55 GFLOP/s at 5
// rows and 69-77 at 8 on the Zen 5 with ALEM_CPU_ISA=avx2 (docs/kernels.md). The weight rows two
// blocks ahead are prefetched in address order, spread over the passes of a block.
constexpr int kPairWeightRows = 4;

template <int MB>
void bf16_pair_pass(const float* xp, int64_t K, const uint16_t* w, int rows, const float* bias,
                    float* y, int64_t N, const char* ahead, int64_t ahead_step) {
  constexpr int PR = kPairWeightRows;
  const uint16_t* row[PR];
  for (int r = 0; r < PR; ++r) row[r] = w + (r < rows ? r : 0) * K;
  const __m256i high_half = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m256 acc[MB][PR];
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < PR; ++r) acc[m][r] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < K; k += 16) {
    const uintptr_t lo =
        reinterpret_cast<uintptr_t>(ahead) + static_cast<uintptr_t>(k / 16 * ahead_step);
    for (uintptr_t at = (lo + 63) & ~uintptr_t{63}; at < lo + ahead_step; at += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
    }
    __m256 xe[MB], xo[MB];
    for (int m = 0; m < MB; ++m) {
      xe[m] = _mm256_load_ps(xp + m * K + k);
      xo[m] = _mm256_load_ps(xp + m * K + k + 8);
    }
    for (int r = 0; r < PR; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row[r] + k));
      const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(v, high_half));
      for (int m = 0; m < MB; ++m) {
        acc[m][r] = _mm256_fmadd_ps(xe[m], even, acc[m][r]);
        acc[m][r] = _mm256_fmadd_ps(xo[m], odd, acc[m][r]);
      }
    }
  }
  for (int m = 0; m < MB; ++m) {
    for (int r = 0; r < rows; ++r) {
      y[m * N + r] = horizontal_sum(acc[m][r]) + (bias ? bias[r] : 0.f);
    }
  }
}

void bf16_pair_rows(const float* xp, int64_t M, int64_t K, const uint16_t* base, const float* bias,
                    float* y, int64_t N, int64_t n_begin, int64_t n_end) {
  constexpr int PR = kPairWeightRows;
  const int64_t passes = (M + 1) / 2, steps = K / 16;
  const int64_t step = (PR * K * 2 + passes * steps - 1) / (passes * steps);
  for (int64_t n = n_begin; n < n_end; n += PR) {
    const int rows = static_cast<int>(n_end - n < PR ? n_end - n : PR);
    const float* b = bias ? bias + n : nullptr;
    const char* ahead = reinterpret_cast<const char*>(base + (n + 2 * PR) * K);
    for (int64_t m = 0; m < M; m += 2, ahead += steps * step) {
      if (M - m >= 2) {
        bf16_pair_pass<2>(xp + m * K, K, base + n * K, rows, b, y + m * N + n, N, ahead, step);
      } else {
        bf16_pair_pass<1>(xp + m * K, K, base + n * K, rows, b, y + m * N + n, N, ahead, step);
      }
    }
  }
}

bool stream_bf16_even_odd(const float* x, int64_t M, const WeightView& w, const float* bias,
                          float* y, int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  if (K % 32 != 0) return false;
  float* xp = static_cast<float*>(
      thread_scratch(ScratchSlot::kPermutedX, static_cast<size_t>(M * K) * sizeof(float)));
  permute_even_odd(x, M, K, xp);
  const uint16_t* base = static_cast<const uint16_t*>(w.data);
  if (M > kEvenOddMaxM) {
    bf16_pair_rows(xp, M, K, base, bias, y, N, n_begin, n_end);
    return true;
  }
  switch (M) {
    case 1:
      stream_rows_bf16<1>(xp, K, base, bias, y, N, n_begin, n_end);
      break;
    case 2:
      stream_rows_bf16<2>(xp, K, base, bias, y, N, n_begin, n_end);
      break;
    case 3:
      stream_rows_bf16<3>(xp, K, base, bias, y, N, n_begin, n_end);
      break;
    default:
      stream_rows_bf16<4>(xp, K, base, bias, y, N, n_begin, n_end);
      break;
  }
  return true;
}

template <DType D>
void stream_impl(const float* x, int64_t M, const WeightView& w, const float* bias, float* y,
                 int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows;
  if constexpr (D == DType::BF16) {
    if (stream_bf16_even_odd(x, M, w, bias, y, n_begin, n_end)) return;
  }
  int64_t n = n_begin;
  if (M == 1) {
    // x (f32) is re-read for every weight row: its size decides the prefetches (cpu_kernels.h).
    const bool prefetch =
        stream_prefetches(StreamKind::kLight, static_cast<size_t>(K) * sizeof(float));
    for (; n < n_end; ++n) stream_row<D>(x, K, w, n, bias, y, prefetch);
    return;
  }
  for (; n + 4 <= n_end; n += 4) stream_block_rows<D, 4>(x, M, K, w, n, bias, y, N);
  for (; n < n_end; ++n) stream_block_rows<D, 1>(x, M, K, w, n, bias, y, N);
}

// ----------------------------------------------------------------------------------------------
// Packed (prefill) GEMM.

// panel[k][c] = W[n0 + c][k0 + k] as f32; columns at or past `cols` are zero.
template <DType D>
void pack_panel(const WeightView& w, int64_t n0, int cols, int64_t k0, int depth, float* panel) {
  for (int group = 0; group < kVectors; ++group) {
    WeightRow rows[8];
    for (int j = 0; j < 8; ++j) {
      const int c = group * 8 + j;
      rows[j] = weight_row<D>(w, n0 + (c < cols ? c : 0));
    }
    for (int kk = 0; kk < depth; kk += 8) {
      const int count = depth - kk < 8 ? depth - kk : 8;
      __m256 r[8];
      for (int j = 0; j < 8; ++j) {
        if (group * 8 + j >= cols) {
          r[j] = _mm256_setzero_ps();
        } else if (count == 8) {
          r[j] = load_weights<D>(rows[j], k0 + kk);
        } else {
          r[j] = load_weights_partial<D>(rows[j], k0 + kk, count);
        }
      }
      transpose8x8(r);
      for (int i = 0; i < count; ++i) {
        _mm256_store_ps(panel + (kk + i) * kPanelCols + group * 8, r[i]);
      }
    }
  }
}

template <int MR>
void micro_kernel(const float* x, int64_t ldx, const float* panel, int depth, float* y, int64_t ldy,
                  int cols, bool first, const float* bias) {
  __m256 acc[MR][kVectors];
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm256_setzero_ps();
  }
  for (int k = 0; k < depth; ++k) {
    __m256 b[kVectors];
    for (int v = 0; v < kVectors; ++v) b[v] = _mm256_load_ps(panel + k * kPanelCols + v * 8);
    for (int m = 0; m < MR; ++m) {
      const __m256 a = _mm256_broadcast_ss(x + m * ldx + k);
      for (int v = 0; v < kVectors; ++v) acc[m][v] = _mm256_fmadd_ps(a, b[v], acc[m][v]);
    }
  }
  // Straight from the accumulators, ragged columns through vmaskmovps: with a stack copy of
  // them here (a row buffer for the ragged case), GCC kept all 12 accumulators in memory and
  // stored them at every k (45 GFLOP/s against 104 without, on an AMD Zen 4).
  // Whole vectors take plain loads and stores: AMD's vmaskmovps store is microcoded (12 of
  // them per call and k tile cost 6-8% of the GEMM on a Zen 4).
  for (int v = 0; v < kVectors; ++v) {
    const int remaining = cols - v * 8;
    if (remaining <= 0) break;
    if (remaining >= 8) {
      const __m256 base = bias && first ? _mm256_loadu_ps(bias + v * 8) : _mm256_setzero_ps();
      for (int m = 0; m < MR; ++m) {
        float* out = y + m * ldy + v * 8;
        const __m256 prior = first ? base : _mm256_loadu_ps(out);
        _mm256_storeu_ps(out, _mm256_add_ps(acc[m][v], prior));
      }
      continue;
    }
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(remaining), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 base =
        bias && first ? _mm256_maskload_ps(bias + v * 8, mask) : _mm256_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      float* out = y + m * ldy + v * 8;
      const __m256 prior = first ? base : _mm256_maskload_ps(out, mask);
      _mm256_maskstore_ps(out, mask, _mm256_add_ps(acc[m][v], prior));
    }
  }
}

constexpr int kPanelAlign = 32;

}  // namespace

#include "kernels/cpu/matmul_driver.inc"

}  // namespace alem::cpu::avx2
