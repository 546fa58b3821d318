// Q4_0, Q4_1 and Q8_0 matmul on interleaved weights (model/interleaved_blocks.h) with AVX512-VNNI
// vpdpbusd on 256-bit registers: 8 weight rows per register, one per 32-bit lane, for every M.
// Only called when the CPU reports AVX512-VNNI; the CPU backend interleaves only then.
//
// The activations are the block kernels' 16-bit ones (quantize_q16: d = amax / 32767 per block
// of 32), split into bytes once per call: x = 256 * hi + lo, hi signed (-128..127) and lo
// unsigned (0..255). With q the unsigned nibbles (0..15),
//   sum(q * x) = 256 * sum(q * hi) + sum(lo * q),
// two vpdpbusd each with an operand it takes as it is: q unsigned against hi, lo unsigned
// against q as signed bytes. Q4_0's offset of 8 is the block sum's start (-8 x sum(x), the same
// for the 8 rows). So each block's sum is the same exact int32 as the row-major kernels', and
// only the f32 summation across blocks differs.
//
// Per block column of a group (256 weights, 144 bytes for Q4_0): 4 loads of nibbles, 12 masks
// and shifts, the 8 scales in one conversion; per row of x: 16 vpdpbusd against 4 activation
// bytes broadcast to all lanes, a shift and three adds, one conversion, one multiply, one fma.
// The result's 8 lanes are the 8 rows' outputs: no reduction across lanes, one store. Up to 4
// rows of x share the unpacked nibbles (a small batch, or prefill 4 rows at a time).
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace alem::cpu::avx512_vnni {
namespace {

constexpr int kGroup = kInterleavedRows;
constexpr int kMaxRowsOfX = 4;
// Bytes between a prefetch and its use in the 4-bit kernel: the weights are one sequential
// stream, and decode needs about 6 KB in flight to cover memory latency (576 bytes left a
// quarter of the bandwidth unused on large matrices; Q8_0 measured no better for it).
constexpr int kAheadBytes = 5760;

// One row of x, per block: the low bytes (32), the high bytes (32), and Q4_0's start.
struct SplitX {
  const uint8_t* bytes;  // [blocks][64]: lo[32] then hi[32]
  const int32_t* start;  // [blocks]: -8 x the block's int16 activations summed (Q4_0)
  const float* d;        // [blocks]: the activation scale
  const float* s;        // [blocks]: d x the sum of the int16 activations (Q4_1's minimum term)
};

// Q8_0 stores hi + 128 (unsigned) instead: its weights are signed, so vpdpbusd needs x as the
// unsigned operand, and the kernel takes 128 x the weights' sum back off.
//
// Eight-bit mode (a.eight_bit): the int16 values rounded to 8 bits, q8 = round(q * 127 / 32767)
// (|q8| <= 127), kept in the high-byte slot with zero low bytes; the kernel then skips the low
// products and the shift, and `d8` receives the scales d * 32767 / 127.
template <DType T>
void split_activations(const Q16Blocks& a, int64_t m, int64_t blocks, uint8_t* bytes,
                       int32_t* start, float* d8) {
  const __m512i ones = _mm512_set1_epi16(1);
  const __m256i bias = _mm256_set1_epi8(T == DType::Q8_0 ? static_cast<char>(0x80) : 0);
  const __m512 to_8_bits = _mm512_set1_ps(127.f / 32767.f);
  for (int64_t b = 0; b < blocks; ++b) {
    __m512i x = _mm512_loadu_si512(a.q + m * a.K + b * 32);
    if (a.eight_bit) {
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(x)));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(x, 1)));
      const __m256i lo8 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(lo, to_8_bits)));
      const __m256i hi8 = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(hi, to_8_bits)));
      // 256 * q8 in int16: the split below then puts q8 in the high bytes and 0 in the low.
      x = _mm512_slli_epi16(_mm512_inserti64x4(_mm512_castsi256_si512(lo8), hi8, 1), 8);
      d8[b] = a.d[m * blocks + b] * (32767.f / 127.f);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64), _mm512_cvtepi16_epi8(x));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bytes + b * 64 + 32),
                        _mm256_xor_si256(_mm512_cvtepi16_epi8(_mm512_srai_epi16(x, 8)), bias));
    // Q4_0's start: -8 x the sum of the values the products use (q8 in eight-bit mode).
    const __m512i used = a.eight_bit ? _mm512_srai_epi16(x, 8) : x;
    start[b] = -8 * _mm512_reduce_add_epi32(_mm512_madd_epi16(used, ones));
  }
}

inline __m256i broadcast_4_bytes(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// y[m][n .. n + 8) for MR rows of x from the group of 8 weight rows starting at row n.
template <DType T, int MR, bool kEightBit>
void group_rows(const SplitX* x, const uint8_t* group, int64_t blocks, const float* bias,
                float* const* y) {
  constexpr int scale_bytes = T == DType::Q4_0 ? 16 : 32;  // 8 d (and 8 m) in f16
  constexpr int column_bytes = scale_bytes + 128;
  constexpr int ahead = kAheadBytes / column_bytes * column_bytes;  // whole block columns
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    _mm_prefetch(reinterpret_cast<const char*>(column + ahead), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(column + ahead + 64), _MM_HINT_T0);
    const __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column)));
    __m256i q_lo[4], q_hi[4];  // chunk k: values 4k..4k+3 and 16+4k..16+4k+3 of each row
    for (int k = 0; k < 4; ++k) {
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(column + scale_bytes + 32 * k));
      q_lo[k] = _mm256_and_si256(v, low_nibbles);
      q_hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
    }
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      __m256i low_a = T == DType::Q4_0 ? _mm256_set1_epi32(x[i].start[b]) : _mm256_setzero_si256();
      __m256i low_b = _mm256_setzero_si256(), high_a = _mm256_setzero_si256(),
              high_b = _mm256_setzero_si256();
      for (int k = 0; k < 4; ++k) {
        if constexpr (!kEightBit) {
          low_a = _mm256_dpbusd_epi32(low_a, broadcast_4_bytes(lo + 4 * k), q_lo[k]);
          low_b = _mm256_dpbusd_epi32(low_b, broadcast_4_bytes(lo + 16 + 4 * k), q_hi[k]);
        }
        high_a = _mm256_dpbusd_epi32(high_a, q_lo[k], broadcast_4_bytes(hi + 4 * k));
        high_b = _mm256_dpbusd_epi32(high_b, q_hi[k], broadcast_4_bytes(hi + 16 + 4 * k));
      }
      // Eight-bit: the values sit in the high bytes alone, taken at their own weight.
      const __m256i high = _mm256_add_epi32(high_a, high_b);
      const __m256i dot = _mm256_add_epi32(_mm256_add_epi32(low_a, low_b),
                                           kEightBit ? high : _mm256_slli_epi32(high, 8));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                               _mm256_mul_ps(wd, _mm256_set1_ps(x[i].d[b])), acc[i]);
      if constexpr (T == DType::Q4_1) {
        const __m256 wm =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column + 16)));
        acc[i] = _mm256_fmadd_ps(wm, _mm256_set1_ps(x[i].s[b]), acc[i]);
      }
    }
  }
  const __m256 b8 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(y[i], _mm256_add_ps(acc[i], b8));
}

// Q8_0: per block column 8 chunks of signed bytes (values 4k..4k+3 of each row). With hi'
// = hi + 128 unsigned, sum(w * x) = sum(lo * w) + 256 * (sum(hi' * w) - 128 * sum(w)); the
// weights' sums (vpdpbusd against ones) serve every row of x.
template <int MR, bool kEightBit>
void group_rows_q8_0(const SplitX* x, const uint8_t* group, int64_t blocks, const float* bias,
                     float* const* y) {
  constexpr int column_bytes = 16 + 256;
  const __m256i ones = _mm256_set1_epi8(1);
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    for (int line = 0; line < 5; ++line) {
      _mm_prefetch(reinterpret_cast<const char*>(column + 2 * column_bytes + 64 * line),
                   _MM_HINT_T0);
    }
    const __m256 wd = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(column)));
    __m256i w[8];
    __m256i sum_a = _mm256_setzero_si256(), sum_b = _mm256_setzero_si256();
    for (int k = 0; k < 8; ++k) {
      w[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(column + 16 + 32 * k));
    }
    for (int k = 0; k < 8; k += 2) {
      sum_a = _mm256_dpbusd_epi32(sum_a, ones, w[k]);
      sum_b = _mm256_dpbusd_epi32(sum_b, ones, w[k + 1]);
    }
    const __m256i offset = _mm256_slli_epi32(_mm256_add_epi32(sum_a, sum_b), 7);  // 128 sum(w)
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      __m256i low_a = _mm256_setzero_si256(), low_b = _mm256_setzero_si256(),
              high_a = _mm256_setzero_si256(), high_b = _mm256_setzero_si256();
      for (int k = 0; k < 8; k += 2) {
        if constexpr (!kEightBit) {
          low_a = _mm256_dpbusd_epi32(low_a, broadcast_4_bytes(lo + 4 * k), w[k]);
          low_b = _mm256_dpbusd_epi32(low_b, broadcast_4_bytes(lo + 4 * k + 4), w[k + 1]);
        }
        high_a = _mm256_dpbusd_epi32(high_a, broadcast_4_bytes(hi + 4 * k), w[k]);
        high_b = _mm256_dpbusd_epi32(high_b, broadcast_4_bytes(hi + 4 * k + 4), w[k + 1]);
      }
      const __m256i high = _mm256_sub_epi32(_mm256_add_epi32(high_a, high_b), offset);
      const __m256i dot = _mm256_add_epi32(_mm256_add_epi32(low_a, low_b),
                                           kEightBit ? high : _mm256_slli_epi32(high, 8));
      acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                               _mm256_mul_ps(wd, _mm256_set1_ps(x[i].d[b])), acc[i]);
    }
  }
  const __m256 b8 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(y[i], _mm256_add_ps(acc[i], b8));
}

template <DType T, int MR, bool kEightBit>
void rows_of_x(const SplitX* x, const WeightView& w, const float* bias, float* y, int64_t m0,
               int64_t n_begin, int64_t n_end) {
  const int64_t K = w.cols, N = w.rows, blocks = K / 32;
  const size_t group_bytes = dtype_row_bytes(w.dtype, K) * kGroup;
  for (int64_t n = n_begin; n < n_end; n += kGroup) {
    float* out[MR];
    for (int i = 0; i < MR; ++i) out[i] = y + (m0 + i) * N + n;
    const uint8_t* group = static_cast<const uint8_t*>(w.data) + (n / kGroup) * group_bytes;
    if constexpr (T == DType::Q8_0) {
      group_rows_q8_0<MR, kEightBit>(x, group, blocks, bias ? bias + n : nullptr, out);
    } else {
      group_rows<T, MR, kEightBit>(x, group, blocks, bias ? bias + n : nullptr, out);
    }
  }
}

// Weight groups outermost, so a group's bytes stay in cache across the rows of x (prefill).
template <DType T, bool kEightBit>
void groups_of_x(const SplitX* x, int64_t rows, const WeightView& w, const float* bias, float* y,
                 int64_t m_begin, int64_t n_begin, int64_t n_end) {
  for (int64_t n = n_begin; n < n_end; n += kGroup) {
    int64_t i = 0;
    for (; i + kMaxRowsOfX <= rows; i += kMaxRowsOfX)
      rows_of_x<T, kMaxRowsOfX, kEightBit>(x + i, w, bias, y, m_begin + i, n, n + kGroup);
    switch (rows - i) {
      case 3:
        rows_of_x<T, 3, kEightBit>(x + i, w, bias, y, m_begin + i, n, n + kGroup);
        break;
      case 2:
        rows_of_x<T, 2, kEightBit>(x + i, w, bias, y, m_begin + i, n, n + kGroup);
        break;
      case 1:
        rows_of_x<T, 1, kEightBit>(x + i, w, bias, y, m_begin + i, n, n + kGroup);
        break;
      default:
        break;
    }
  }
}

template <DType T>
void matmul_typed(const Q16Blocks& a, int64_t m_begin, int64_t m_end, const WeightView& w,
                  const float* bias, float* y, int64_t n_begin, int64_t n_end) {
  const int64_t blocks = w.cols / 32;
  // This thread's rows of x, split into bytes once (64 bytes + 4 per block and row).
  thread_local std::vector<uint8_t> bytes;
  thread_local std::vector<int32_t> starts;
  thread_local std::vector<float> scales8;
  const int64_t rows = m_end - m_begin;
  bytes.resize(static_cast<size_t>(rows * blocks * 64));
  starts.resize(static_cast<size_t>(rows * blocks));
  scales8.resize(a.eight_bit ? static_cast<size_t>(rows * blocks) : 0);
  thread_local std::vector<SplitX> x;  // per call, without an allocation on the decode path
  x.resize(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    uint8_t* xb = bytes.data() + i * blocks * 64;
    int32_t* xs = starts.data() + i * blocks;
    float* d8 = a.eight_bit ? scales8.data() + i * blocks : nullptr;
    split_activations<T>(a, m_begin + i, blocks, xb, xs, d8);
    x[i] = {xb, xs, a.eight_bit ? d8 : a.d + (m_begin + i) * blocks, a.s + (m_begin + i) * blocks};
  }
  if (a.eight_bit) {
    groups_of_x<T, true>(x.data(), rows, w, bias, y, m_begin, n_begin, n_end);
  } else {
    groups_of_x<T, false>(x.data(), rows, w, bias, y, m_begin, n_begin, n_end);
  }
}

}  // namespace

void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  switch (w.dtype) {
    case DType::Q4_0:
      matmul_typed<DType::Q4_0>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q4_1:
      matmul_typed<DType::Q4_1>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    default:
      matmul_typed<DType::Q8_0>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
  }
}

}  // namespace alem::cpu::avx512_vnni
