// Q4_0, Q4_1, Q8_0 and alem's int8 matmul on interleaved weights (model/interleaved_blocks.h)
// with AVX512-VNNI
// vpdpbusd: 8 weight rows per 256-bit register, one per 32-bit lane, for every M, and from 4 rows
// of x (prefill) two groups side by side in 512-bit registers (Lanes16: 16 weight rows per
// instruction; matmul_interleaved_dot_avx512.h). One template body serves both widths. Only
// called when the CPU reports AVX512-VNNI; the CPU backend interleaves only then.
//
// The activations are split into bytes once per call (matmul_interleaved_dot_avx512.h), so each
// block's sum is the same exact int32 as the row-major kernels', and only the f32 summation
// across blocks differs. Q4_0's offset of 8 is the block sum's start (-8 x sum(x), the same for
// the 8 rows).
//
// Per block column of a group (256 weights, 144 bytes for Q4_0): 4 loads of nibbles, 12 masks
// and shifts, the 8 scales in one conversion; per row of x: 16 vpdpbusd against 4 activation
// bytes broadcast to all lanes, a shift and three adds, one conversion, one multiply, one fma.
// The result's lanes are the weight rows' outputs: no reduction across lanes, one store. Up to
// 4 rows of x share the unpacked nibbles (a small batch, or prefill 4 rows at a time).
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_dot_avx512.h"

namespace alem::cpu::avx512_vnni {
namespace {

using interleaved::Lanes16;
using interleaved::Lanes8;
using interleaved::SplitX;

// Prefetches the `lines` cache lines of the column (and of the second group's column) ahead
// (prefetch_stream: Q8_0 at one row of x is a light stream; more rows, or 4-bit weights, heavy).
template <class V, StreamKind kind>
inline void prefetch_columns(const uint8_t* column, size_t gap, int lines) {
  for (int line = 0; line < lines; ++line) {
    prefetch_stream<kind>(column + 64 * line);
    if constexpr (std::is_same_v<V, Lanes16>) prefetch_stream<kind>(column + gap + 64 * line);
  }
}

// y[m][n ..) for MR rows of x from the group of 8 weight rows starting at row n (Lanes8), or
// from it and the next group, `gap` bytes on (Lanes16).
template <class V, DType T, int MR, bool kEightBit>
void group_rows(const SplitX* x, const uint8_t* group, size_t gap, int64_t blocks,
                const float* bias, float* const* y) {
  constexpr int scale_bytes = T == DType::Q4_0 ? 16 : 32;  // 8 d (and 8 m) in f16
  constexpr int column_bytes = scale_bytes + 128;
  const auto low_nibbles = V::bytes(0x0F);
  typename V::F acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = V::fzero();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    prefetch_columns<V, StreamKind::kHeavy>(column, gap, (column_bytes + 63) / 64);
    const auto wd = V::load_f16(column, gap);
    typename V::I q_lo[4], q_hi[4];  // chunk k: values 4k..4k+3 and 16+4k..16+4k+3 of each row
    for (int k = 0; k < 4; ++k) {
      const auto v = V::load(column + scale_bytes + 32 * k, gap);
      q_lo[k] = V::and_(v, low_nibbles);
      q_hi[k] = V::and_(V::template srl16<4>(v), low_nibbles);
    }
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      const int32_t* sums = x[i].half_sums + 2 * b;
      auto low_a = T == DType::Q4_0 ? V::words(-8 * (sums[0] + sums[1])) : V::zero();
      auto low_b = V::zero(), high_a = V::zero(), high_b = V::zero();
      for (int k = 0; k < 4; ++k) {
        if constexpr (!kEightBit) {
          low_a = V::dot(low_a, V::x_bytes(lo + 4 * k), q_lo[k]);
          low_b = V::dot(low_b, V::x_bytes(lo + 16 + 4 * k), q_hi[k]);
        }
        high_a = V::dot(high_a, q_lo[k], V::x_bytes(hi + 4 * k));
        high_b = V::dot(high_b, q_hi[k], V::x_bytes(hi + 16 + 4 * k));
      }
      // Eight-bit: the values sit in the high bytes alone, taken at their own weight.
      const auto high = V::add(high_a, high_b);
      const auto dot = V::add(V::add(low_a, low_b), kEightBit ? high : V::template sll32<8>(high));
      acc[i] = V::fma(V::to_f32(dot), V::mul(wd, V::fset(x[i].d[b])), acc[i]);
      if constexpr (T == DType::Q4_1) {
        acc[i] = V::fma(V::load_f16(column + 16, gap), V::fset(x[i].s[b]), acc[i]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) V::store(y[i], acc[i], bias);
}

// Q8_0, and alem's int8 (kF32Scales: the 8 scales in f32): per block column the 8 rows' scales,
// then 8 chunks of signed bytes (values 4k..4k+3 of each row). With hi' = hi + 128 unsigned,
// sum(w * x) = sum(lo * w) + 256 * (sum(hi' * w) - 128 * sum(w)); the weights' sums (vpdpbusd
// against ones) serve every row of x.
template <class V, int MR, bool kEightBit, bool kF32Scales>
void group_rows_q8_0(const SplitX* x, const uint8_t* group, size_t gap, int64_t blocks,
                     const float* bias, float* const* y) {
  constexpr int values_at = kF32Scales ? 32 : 16;  // after the 8 scales
  constexpr int column_bytes = values_at + 256;
  const auto ones = V::bytes(1);
  typename V::F acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = V::fzero();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* column = group + b * column_bytes;
    prefetch_columns<V, wide_weights_stream(MR)>(column, gap, (column_bytes + 63) / 64);
    typename V::F wd;
    if constexpr (kF32Scales) {
      wd = V::load_f32(column, gap);
    } else {
      wd = V::load_f16(column, gap);
    }
    typename V::I w[8];
    auto sum_a = V::zero(), sum_b = V::zero();
    for (int k = 0; k < 8; ++k) w[k] = V::load(column + values_at + 32 * k, gap);
    for (int k = 0; k < 8; k += 2) {
      sum_a = V::dot(sum_a, ones, w[k]);
      sum_b = V::dot(sum_b, ones, w[k + 1]);
    }
    const auto offset = V::template sll32<7>(V::add(sum_a, sum_b));  // 128 sum(w)
    for (int i = 0; i < MR; ++i) {
      const uint8_t* lo = x[i].bytes + b * 64;
      const uint8_t* hi = lo + 32;
      auto low_a = V::zero(), low_b = V::zero(), high_a = V::zero(), high_b = V::zero();
      for (int k = 0; k < 8; k += 2) {
        if constexpr (!kEightBit) {
          low_a = V::dot(low_a, V::x_bytes(lo + 4 * k), w[k]);
          low_b = V::dot(low_b, V::x_bytes(lo + 4 * k + 4), w[k + 1]);
        }
        high_a = V::dot(high_a, V::x_bytes(hi + 4 * k), w[k]);
        high_b = V::dot(high_b, V::x_bytes(hi + 4 * k + 4), w[k + 1]);
      }
      const auto high = V::isub(V::add(high_a, high_b), offset);
      const auto dot = V::add(V::add(low_a, low_b), kEightBit ? high : V::template sll32<8>(high));
      acc[i] = V::fma(V::to_f32(dot), V::mul(wd, V::fset(x[i].d[b])), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) V::store(y[i], acc[i], bias);
}

// The per-group arithmetic for interleaved::run.
template <DType T>
struct Nibbles {
  static constexpr bool kSignedWeights = false;
  static constexpr bool kPairs = true;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    group_rows<Lanes8, T, MR, kEightBit>(x, group, 0, columns, bias, y);
  }
  template <int MR, bool kEightBit>
  static void pair(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t columns,
                   const float* bias, float* const* y) {
    group_rows<Lanes16, T, MR, kEightBit>(x, group, group_bytes, columns, bias, y);
  }
};
// Q8_0 (kF32Scales false), and alem's int8: Q8_0's columns with f32 scales.
template <bool kF32Scales>
struct Bytes {
  static constexpr bool kSignedWeights = true;
  static constexpr bool kPairs = true;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    group_rows_q8_0<Lanes8, MR, kEightBit, kF32Scales>(x, group, 0, columns, bias, y);
  }
  template <int MR, bool kEightBit>
  static void pair(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t columns,
                   const float* bias, float* const* y) {
    group_rows_q8_0<Lanes16, MR, kEightBit, kF32Scales>(x, group, group_bytes, columns, bias, y);
  }
};

}  // namespace

void matmul_blocks_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                               const WeightView& w, const float* bias, float* y, int64_t n_begin,
                               int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  switch (w.dtype) {
    case DType::Q4_0:
      interleaved::run<Nibbles<DType::Q4_0>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q4_1:
      interleaved::run<Nibbles<DType::Q4_1>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q8_0:
      interleaved::run<Bytes<false>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::I8:
      interleaved::run<Bytes<true>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    default:
      matmul_blocks_k_interleaved(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
  }
}

}  // namespace alem::cpu::avx512_vnni
