// Block-weight matmul (Q4_0, Q4_1, Q8_0) on AVX512-VNNI: the kernels of
// matmul_blocks_kernel.inc with the int16 dot product done by vpdpwssd (on 256-bit registers,
// AVX512-VL), which multiplies, pairs and accumulates in one instruction. Only called when the CPU
// reports AVX512-VNNI (cpu::has_avx512_vnni).
//
// One row of x (a decode step) takes a 512-bit kernel instead: two blocks per step, so one
// vpdpwssd covers 32 weights. Per pair of blocks the activations are rearranged once (low halves
// of both blocks in one register, high halves in another: the nibble layout of Q4 blocks) and
// serve 4 weight rows; each block keeps its own scale in 8 of the 16 f32 lanes. What does not
// depend on the weight row is done once per pair for the 4 rows: Q4_0's offset of 8 (the
// accumulator starts at -8 * the activations, so the nibbles are used unsigned), and the scales
// (the 8 f16 weight scales of 4 rows x 2 blocks gathered by scalar loads, converted in one
// instruction and multiplied by the activation scales; one permute spreads a row's pair over
// its lanes). Per pair and row that leaves: load, widen, mask, shift, two vpdpwssd, permute,
// convert, fma. Same int16 activations and exact int32 block sums as the 256-bit kernels, so
// the same results up to f32 summation order. On cores with full-width 512-bit units (Intel)
// this halves the instructions per weight; Zen 4 splits them in two and loses nothing.
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/transpose_avx512.h"
#include "model/gguf_quant.h"

namespace alem::cpu::avx512_vnni {
namespace {

inline float f16_at(const uint8_t* p) {
  uint16_t h;
  __builtin_memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline __m256i load_two_128(const uint8_t* first, const uint8_t* second) {
  return _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(first))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(second)), 1);
}

// Weight rows side by side. One: the matrix is then read as one sequential stream, which the
// hardware prefetchers follow at full speed; 4 rows side by side (short streams restarting every
// row) ran decode at a third less on an AMD Zen 4, and 2 measured the same as 1
// (docs/kernels-quantized.md).
constexpr int kRows = 1;

template <DType T>
constexpr int block_bytes_of() {
  return T == DType::Q4_0 ? 18 : (T == DType::Q4_1 ? 20 : 34);
}

// Per pair of blocks and NR weight rows: the 2*NR f16 scales (row r: block b, then b + 1) as 8
// f32 lanes, from scalar loads (no shuffles: the scales sit 18, 20 or 34 bytes apart).
template <int NR, int bb>
inline __m256 pair_scales(const uint8_t* const* rows, size_t offset) {
  uint64_t packed[2] = {0, 0};
  for (int r = 0; r < NR; ++r) {
    uint16_t d0, d1;
    __builtin_memcpy(&d0, rows[r] + offset, 2);
    __builtin_memcpy(&d1, rows[r] + offset + bb, 2);
    packed[r / 2] |= (static_cast<uint64_t>(d0) | static_cast<uint64_t>(d1) << 16)
                     << (32 * (r % 2));
  }
  return _mm256_cvtph_ps(
      _mm_set_epi64x(static_cast<long long>(packed[1]), static_cast<long long>(packed[0])));
}

// One row of x laid out for the pair loop, once per call rather than once per weight row: per
// pair of blocks the low halves (values 0-15 of block b, then of b + 1), the high halves (16-31)
// and, for Q4_0, the accumulator's start (-8 x the activations in each lane). The same int32
// arithmetic as building them in the loop; with weight rows read one at a time that work was
// repeated for every row and took as many 512-bit operations as the weights' own.
struct PairedX {
  __m512i lo, hi, start;
};

template <DType T>
void pair_x(const int16_t* xq, int64_t pairs, PairedX* out) {
  for (int64_t i = 0; i < pairs; ++i) {
    const int16_t* x = xq + i * 64;
    const __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 32);
    out[i].lo = _mm512_shuffle_i64x2(x0, x1, 0x44);  // 0-15 of b, 0-15 of b + 1
    out[i].hi = _mm512_shuffle_i64x2(x0, x1, 0xEE);  // 16-31 of each
    // Q4_0's offset of 8 comes off the block sums as -8 * the activations in each lane, so the
    // nibbles stay unsigned.
    out[i].start = _mm512_setzero_si512();
    if constexpr (T == DType::Q4_0) {
      const __m512i minus8 = _mm512_set1_epi16(-8);
      out[i].start = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(out[i].start, minus8, out[i].lo),
                                         minus8, out[i].hi);
    }
  }
}

template <DType T, int NR>
void single_row_rows(const Q16Blocks& a, const PairedX* px, int64_t m0, const WeightView& w,
                     const float* bias, float* y, int64_t n0) {
  constexpr int bb = block_bytes_of<T>();
  const int64_t K = w.cols, N = w.rows, blocks = K / 32;
  const size_t row_bytes = static_cast<size_t>(blocks) * bb;
  const uint8_t* rows[NR];
  for (int r = 0; r < NR; ++r) rows[r] = static_cast<const uint8_t*>(w.data) + (n0 + r) * row_bytes;
  const int16_t* xq = a.q + m0 * K;
  const float* xd = a.d + m0 * blocks;
  const float* xs = a.s + m0 * blocks;
  // Lane l of a block pair's 16 f32 lanes belongs to block b (l < 8) or b + 1: row r's scale
  // pair sits at lanes 2r, 2r + 1 of pair_scales.
  __m512i spread[NR];
  for (int r = 0; r < NR; ++r) {
    spread[r] = _mm512_mask_set1_epi32(_mm512_set1_epi32(2 * r), 0xFF00, 2 * r + 1);
  }
  __m512 acc[NR];
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  __m256 min_acc = _mm256_setzero_ps();  // Q4_1: lanes 2r, 2r + 1 = row r's minimum terms
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    const PairedX& x = px[b / 2];
    const __m512i x_lo = x.lo, x_hi = x.hi, start = x.start;
    // xd[b], xd[b + 1] in lanes 0, 1 repeated: times row r's (d_b, d_b+1) in lanes 2r, 2r + 1.
    const __m256 x_pair =
        _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(xd + b)));
    const __m512 scales = _mm512_castps256_ps512(
        _mm256_mul_ps(pair_scales<NR, bb>(rows, static_cast<size_t>(b) * bb), x_pair));
    if constexpr (T == DType::Q4_1) {
      const __m256 s_pair =
          _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(xs + b)));
      min_acc = _mm256_fmadd_ps(pair_scales<NR, bb>(rows, static_cast<size_t>(b) * bb + 2), s_pair,
                                min_acc);
    }
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = rows[r] + b * bb;
      _mm_prefetch(reinterpret_cast<const char*>(p + 8 * bb), _MM_HINT_T0);
      __m512i w_lo, w_hi;
      if constexpr (T == DType::Q8_0) {
        w_lo = _mm512_cvtepi8_epi16(load_two_128(p + 2, p + bb + 2));
        w_hi = _mm512_cvtepi8_epi16(load_two_128(p + 18, p + bb + 18));
      } else {
        constexpr int offset = T == DType::Q4_0 ? 2 : 4;
        const __m512i bytes = _mm512_cvtepu8_epi16(load_two_128(p + offset, p + bb + offset));
        w_lo = _mm512_and_si512(bytes, _mm512_set1_epi16(0x0F));
        w_hi = _mm512_srli_epi16(bytes, 4);
      }
      const __m512i dot = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(start, w_lo, x_lo), w_hi, x_hi);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(spread[r], scales),
                               acc[r]);
    }
  }
  float mins[NR];
  {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, min_acc);
    for (int r = 0; r < NR; ++r) mins[r] = lanes[2 * r] + lanes[2 * r + 1];
  }
  if (b < blocks) {  // an odd last block: the same with the second block's lanes left at zero
    const __m512i x_lo =
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * 32)));
    const __m512i x_hi = _mm512_castsi256_si512(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * 32 + 16)));
    for (int r = 0; r < NR; ++r) {
      const uint8_t* p = rows[r] + b * bb;
      // Only the first block's values are read: build its registers alone.
      __m512i w_lo, w_hi;
      const float d = f16_at(p);
      if constexpr (T == DType::Q8_0) {
        w_lo = _mm512_castsi256_si512(
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2))));
        w_hi = _mm512_castsi256_si512(
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 18))));
      } else {
        const int offset = T == DType::Q4_0 ? 2 : 4;
        const __m256i bytes =
            _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + offset)));
        __m256i lo = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
        __m256i hi = _mm256_srli_epi16(bytes, 4);
        if constexpr (T == DType::Q4_0) {
          lo = _mm256_sub_epi16(lo, _mm256_set1_epi16(8));
          hi = _mm256_sub_epi16(hi, _mm256_set1_epi16(8));
        }
        w_lo = _mm512_castsi256_si512(lo);
        w_hi = _mm512_castsi256_si512(hi);
      }
      // The upper halves of the cast registers are undefined: mask the products to 8 lanes.
      const __m512i dot = _mm512_maskz_dpwssd_epi32(
          0x00FF, _mm512_maskz_dpwssd_epi32(0x00FF, _mm512_setzero_si512(), w_lo, x_lo), w_hi,
          x_hi);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(d * xd[b]), acc[r]);
      if constexpr (T == DType::Q4_1) mins[r] += f16_at(p + 2) * xs[b];
    }
  }
  for (int r = 0; r < NR; ++r) {
    y[m0 * N + n0 + r] = _mm512_reduce_add_ps(acc[r]) + mins[r] + (bias ? bias[n0 + r] : 0.f);
  }
}

template <DType T>
void single_row(const Q16Blocks& a, int64_t m0, const WeightView& w, const float* bias, float* y,
                int64_t n_begin, int64_t n_end) {
  const int64_t pairs = w.cols / 64;
  // 64-byte aligned per-thread scratch (cpu_kernels.h), as PairedX asks.
  auto* paired = static_cast<PairedX*>(
      thread_scratch(ScratchSlot::kPairedX, static_cast<size_t>(pairs) * sizeof(PairedX)));
  pair_x<T>(a.q + m0 * w.cols, pairs, paired);
  int64_t n = n_begin;
  for (; n + kRows <= n_end; n += kRows) single_row_rows<T, kRows>(a, paired, m0, w, bias, y, n);
  for (; n < n_end; ++n) single_row_rows<T, 1>(a, paired, m0, w, bias, y, n);
}

}  // namespace

#define ALEM_BLOCK_DOT(acc, w, x) _mm256_dpwssd_epi32((acc), (w), (x))
#define ALEM_BLOCK_SINGLE_ROW single_row
#include "kernels/cpu/matmul_blocks_kernel.inc"
#undef ALEM_BLOCK_SINGLE_ROW
#undef ALEM_BLOCK_DOT

}  // namespace alem::cpu::avx512_vnni
