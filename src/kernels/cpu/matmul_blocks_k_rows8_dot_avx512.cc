// Q4_K, Q5_K and Q6_K matmul on interleaved weights (model/interleaved_blocks.h) with
// AVX512-VNNI vpdpbusd: 8 weight rows per 256-bit register, one per 32-bit lane, as the Q4_0
// kernel (matmul_blocks_rows8_dot_avx512.cc) does, and from 4 rows of x (prefill) two groups
// side by side in 512-bit registers (Lanes16: 16 weight rows per instruction). One template
// body serves both widths. Only called when the CPU reports AVX512-VNNI; the CPU backend
// interleaves only then.
//
// A super-block of 256 values is 8 sub-blocks of 32, each lined up with one block of the 16-bit
// activations (matmul_interleaved_dot_avx512.h), so every sub-block's dot product is an exact
// int32 per weight row, scaled once in f32:
//   Q4_K / Q5_K: w = d*sc*q - dmin*m   ->  sum(q*x) * (d*sc*dx) - dmin*m * sx
//                (q: 4 bits, Q5_K plus a fifth from qh; sc, m: 6 bits)
//   Q6_K:        w = d*sc*(q - 32), sc per 16 values  ->  two int32 sums per sub-block (values
//                0..15, 16..31), each started at -32 x the activations' half sum, scaled by
//                d*sc*dx.
// Per super-block column of a group of 8 rows the 8 rows' 6-bit scales are unpacked together:
// the interleaved form keeps each row's 12 bytes as 3 words, one per 32-bit lane, so llama.cpp's
// word masks (scales to bytes 0-7, minimums to 8-15) run on 8 rows at once. Per sub-block: 8
// chunks of 4 values per row, unpacked once for up to 4 rows of x; per row of x, 16 vpdpbusd
// (x's low and high bytes) and the f32 scaling. The 8 lanes are the 8 rows' outputs: one store.
#include <type_traits>

#include "kernels/cpu/matmul_interleaved_dot_avx512.h"

namespace alem::cpu::avx512_vnni {
namespace {

using interleaved::Lanes16;
using interleaved::Lanes8;
using interleaved::SplitX;

// Every helper below is forced inline: GCC left a 4-chunk dot product of Q6_K out of line, so
// the unpacked values went through the stack and a call in the innermost loop.
#define ALEM_INLINE inline __attribute__((always_inline))

// Where the fields of a super-block column sit (interleaved_blocks.cc, 8 rows each).
template <DType T>
struct Column;
template <>
struct Column<DType::Q4_K> {
  static constexpr int kScales = 32, kHighBits = 0, kValues = 128, kBytes = 1152;
};
template <>
struct Column<DType::Q5_K> {
  static constexpr int kScales = 32, kHighBits = 128, kValues = 384, kBytes = 1408;
};
template <>
struct Column<DType::Q6_K> {  // d, 16 int8 scales (4 words), ql (32 chunks), qh (16 chunks)
  static constexpr int kScales = 16, kValues = 144, kHighBits = 1168, kBytes = 1680;
};

// Byte `i` of every 32-bit lane, unsigned, as f32.
template <class V, int i>
ALEM_INLINE typename V::F byte_of_lanes(typename V::I v) {
  return V::to_f32(V::and_(V::template srl32<8 * i>(v), V::words(0xFF)));
}

// Q4_K / Q5_K: the rows' 6-bit scales and minimums of one column, as 4 vectors of bytes
// (sub-blocks 0-3 and 4-7, one row per 32-bit lane).
template <class V>
struct ScaleBytes {
  typename V::I sc03, sc47, m03, m47;
};
template <class V>
ALEM_INLINE ScaleBytes<V> unpack_scales(const uint8_t* words, size_t gap) {
  const auto low6 = V::words(0x3f3f3f3f), low4 = V::words(0x0f0f0f0f), low2 = V::words(0x03030303);
  const auto u0 = V::load(words, gap), u1 = V::load(words + 32, gap), u2 = V::load(words + 64, gap);
  ScaleBytes<V> s;
  s.sc03 = V::and_(u0, low6);
  s.m03 = V::and_(u1, low6);
  s.sc47 = V::or_(V::and_(u2, low4), V::template sll32<4>(V::and_(V::template srl32<6>(u0), low2)));
  s.m47 = V::or_(V::and_(V::template srl32<4>(u2), low4),
                 V::template sll32<4>(V::and_(V::template srl32<6>(u1), low2)));
  return s;
}

// The 8 chunks (values 4c..4c+3 of every row, c = 0..7) of sub-block S of a Q4_K/Q5_K column.
template <class V, DType T, int S>
ALEM_INLINE void sub_block_values(const uint8_t* column, size_t gap, typename V::I* q) {
  const auto low_nibbles = V::bytes(0x0F);
  // Sub-blocks 2j and 2j+1 share the 32 bytes of qs at 32j: low nibbles, then high nibbles.
  const uint8_t* chunks = column + Column<T>::kValues + (S / 2) * 8 * 32;
  for (int c = 0; c < 8; ++c) {
    const auto v = V::load(chunks + 32 * c, gap);
    q[c] = V::and_(S % 2 == 0 ? v : V::template srl16<4>(v), low_nibbles);
    if constexpr (T == DType::Q5_K) {  // the fifth bit: bit S of qh byte (4c + lane byte)
      const auto h = V::load(column + Column<T>::kHighBits + 32 * c, gap);
      typename V::I bit;
      if constexpr (S <= 4) {
        bit = V::template sll16<4 - S>(h);
      } else {
        bit = V::template srl16<S - 4>(h);
      }
      q[c] = V::or_(q[c], V::and_(bit, V::bytes(0x10)));
    }
  }
}

// The 8 chunks of sub-block S (= 4h + t) of a Q6_K column: the low 4 bits from ql (sub-blocks
// t = 0, 1 take the low nibbles of ql's chunks 16h + 8t .. + 7, t = 2, 3 the high nibbles of
// the same chunks as t - 2), the high 2 bits from bits 2t, 2t+1 of qh's chunks 8h .. 8h + 7.
template <class V, int S>
ALEM_INLINE void q6_sub_block_values(const uint8_t* column, size_t gap, typename V::I* q) {
  constexpr int h = S / 4, t = S % 4;
  const auto low_nibbles = V::bytes(0x0F), high_pair = V::bytes(0x30);
  const uint8_t* ql = column + Column<DType::Q6_K>::kValues + (16 * h + 8 * (t % 2)) * 32;
  const uint8_t* qh = column + Column<DType::Q6_K>::kHighBits + 8 * h * 32;
  for (int c = 0; c < 8; ++c) {
    const auto l = V::load(ql + 32 * c, gap), hb = V::load(qh + 32 * c, gap);
    const auto low = V::and_(t < 2 ? l : V::template srl16<4>(l), low_nibbles);
    typename V::I high;
    if constexpr (t < 2) {
      high = V::template sll16<4 - 2 * t>(hb);
    } else if constexpr (t == 2) {
      high = hb;
    } else {
      high = V::template srl16<2>(hb);
    }
    q[c] = V::or_(low, V::and_(high, high_pair));
  }
}

// sum(q * x) over chunks [C0, C0 + kChunks) of a sub-block, one int32 lane per weight row, plus
// `start`. x: the block's bytes (lo[32], hi[32]).
template <class V, bool kEightBit, int C0, int kChunks>
ALEM_INLINE typename V::I chunk_dot(const typename V::I* q, const uint8_t* x, typename V::I start) {
  const uint8_t* lo = x;
  const uint8_t* hi = x + 32;
  auto low_a = start, low_b = V::zero(), high_a = V::zero(), high_b = V::zero();
  for (int c = C0; c < C0 + kChunks; c += 2) {
    if constexpr (!kEightBit) {
      low_a = V::dot(low_a, V::x_bytes(lo + 4 * c), q[c]);
      low_b = V::dot(low_b, V::x_bytes(lo + 4 * c + 4), q[c + 1]);
    }
    high_a = V::dot(high_a, q[c], V::x_bytes(hi + 4 * c));
    high_b = V::dot(high_b, q[c + 1], V::x_bytes(hi + 4 * c + 4));
  }
  // Eight-bit: the values sit in the high bytes alone, taken at their own weight.
  const auto high = V::add(high_a, high_b);
  return V::add(V::add(low_a, low_b), kEightBit ? high : V::template sll32<8>(high));
}

// Spreads the prefetches of the column's lines (prefetch_stream: the lines as far ahead of
// these) over its 8 sub-blocks.
template <DType T, int S>
ALEM_INLINE void prefetch_ahead(const uint8_t* column) {
  constexpr int lines = (Column<T>::kBytes + 63) / 64;
  for (int l = S * lines / 8; l < (S + 1) * lines / 8; ++l)
    prefetch_stream<StreamKind::kHeavy>(column + 64 * l);
}
template <class V, DType T, int S>
ALEM_INLINE void prefetch_ahead(const uint8_t* column, size_t gap) {
  prefetch_ahead<T, S>(column);
  if constexpr (std::is_same_v<V, Lanes16>) prefetch_ahead<T, S>(column + gap);
}

// Runs f.template operator()<S>() for S = 0 .. 7, the sub-blocks of a column.
template <class F>
ALEM_INLINE void for_each_sub_block(F& f) {
  f.template operator()<0>();
  f.template operator()<1>();
  f.template operator()<2>();
  f.template operator()<3>();
  f.template operator()<4>();
  f.template operator()<5>();
  f.template operator()<6>();
  f.template operator()<7>();
}

// Q4_K / Q5_K: y[i][0 .. rows of V) for MR rows of x from one group of 8 weight rows (Lanes8)
// or two (Lanes16, the second `gap` bytes on).
template <class V, DType T, int MR, bool kEightBit>
void group_rows_q45(const SplitX* x, const uint8_t* group, size_t gap, int64_t columns,
                    const float* bias, float* const* y) {
  typename V::F acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = V::fzero();
  for (int64_t b = 0; b < columns; ++b) {
    const uint8_t* column = group + b * Column<T>::kBytes;
    const auto d = V::load_f16(column, gap),
               neg_dmin = V::sub(V::fzero(), V::load_f16(column + 16, gap));
    const ScaleBytes<V> scales = unpack_scales<V>(column + Column<T>::kScales, gap);
    const auto sub_block = [&]<int S>() {
      prefetch_ahead<V, T, S>(column, gap);
      typename V::I q[8];
      sub_block_values<V, T, S>(column, gap, q);
      const auto sc_bytes = S < 4 ? scales.sc03 : scales.sc47;
      const auto m_bytes = S < 4 ? scales.m03 : scales.m47;
      const auto scale = V::mul(d, byte_of_lanes<V, S % 4>(sc_bytes));
      const auto minimum = V::mul(neg_dmin, byte_of_lanes<V, S % 4>(m_bytes));
      const int64_t block = b * 8 + S;
      for (int i = 0; i < MR; ++i) {
        const auto dot = chunk_dot<V, kEightBit, 0, 8>(q, x[i].bytes + block * 64, V::zero());
        acc[i] = V::fma(V::to_f32(dot), V::mul(scale, V::fset(x[i].d[block])), acc[i]);
        acc[i] = V::fma(minimum, V::fset(x[i].s[block]), acc[i]);
      }
    };
    for_each_sub_block(sub_block);
  }
  for (int i = 0; i < MR; ++i) V::store(y[i], acc[i], bias);
}

// Q6_K: y[i][0 .. rows of V) for MR rows of x from one group of 8 weight rows, or two.
template <class V, int MR, bool kEightBit>
void group_rows_q6(const SplitX* x, const uint8_t* group, size_t gap, int64_t columns,
                   const float* bias, float* const* y) {
  constexpr DType T = DType::Q6_K;
  typename V::F acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = V::fzero();
  for (int64_t b = 0; b < columns; ++b) {
    const uint8_t* column = group + b * Column<T>::kBytes;
    const auto d = V::load_f16(column, gap);
    const uint8_t* scale_words = column + Column<T>::kScales;
    const auto sub_block = [&]<int S>() {
      prefetch_ahead<V, T, S>(column, gap);
      typename V::I q[8];
      q6_sub_block_values<V, S>(column, gap, q);
      // Scales 2S and 2S + 1 (int8): bytes 2(S%2), 2(S%2)+1 of word S/2, sign-extended.
      const auto word = V::load(scale_words + 32 * (S / 2), gap);
      const auto scale_a =
          V::mul(d, V::to_f32(V::template sra32<24>(V::template sll32<24 - 16 * (S % 2)>(word))));
      const auto scale_b =
          V::mul(d, V::to_f32(V::template sra32<24>(V::template sll32<16 - 16 * (S % 2)>(word))));
      const int64_t block = b * 8 + S;
      for (int i = 0; i < MR; ++i) {
        const uint8_t* xb = x[i].bytes + block * 64;
        const int32_t* half = x[i].half_sums + 2 * block;
        const auto dot_a = chunk_dot<V, kEightBit, 0, 4>(q, xb, V::words(-32 * half[0]));
        const auto dot_b = chunk_dot<V, kEightBit, 4, 4>(q, xb, V::words(-32 * half[1]));
        const auto dx = V::fset(x[i].d[block]);
        acc[i] = V::fma(V::to_f32(dot_a), V::mul(scale_a, dx), acc[i]);
        acc[i] = V::fma(V::to_f32(dot_b), V::mul(scale_b, dx), acc[i]);
      }
    };
    for_each_sub_block(sub_block);
  }
  for (int i = 0; i < MR; ++i) V::store(y[i], acc[i], bias);
}

template <class V, DType T, int MR, bool kEightBit>
void group_rows_any(const SplitX* x, const uint8_t* group, size_t gap, int64_t columns,
                    const float* bias, float* const* y) {
  if constexpr (T == DType::Q6_K) {
    group_rows_q6<V, MR, kEightBit>(x, group, gap, columns, bias, y);
  } else {
    group_rows_q45<V, T, MR, kEightBit>(x, group, gap, columns, bias, y);
  }
}

// The per-group arithmetic for interleaved::run.
template <DType T>
struct SuperBlocks {
  static constexpr bool kSignedWeights = false;
  static constexpr bool kPairs = true;
  template <int MR, bool kEightBit>
  static void group(const SplitX* x, const uint8_t* group, int64_t columns, const float* bias,
                    float* const* y) {
    group_rows_any<Lanes8, T, MR, kEightBit>(x, group, 0, columns, bias, y);
  }
  template <int MR, bool kEightBit>
  static void pair(const SplitX* x, const uint8_t* group, size_t group_bytes, int64_t columns,
                   const float* bias, float* const* y) {
    group_rows_any<Lanes16, T, MR, kEightBit>(x, group, group_bytes, columns, bias, y);
  }
};

#undef ALEM_INLINE

}  // namespace

void matmul_blocks_k_interleaved(const Q16Blocks& a, int64_t m_begin, int64_t m_end,
                                 const WeightView& w, const float* bias, float* y, int64_t n_begin,
                                 int64_t n_end) {
  if (m_begin >= m_end || n_begin >= n_end) return;
  switch (w.dtype) {
    case DType::Q4_K:
      interleaved::run<SuperBlocks<DType::Q4_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    case DType::Q5_K:
      interleaved::run<SuperBlocks<DType::Q5_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
    default:
      interleaved::run<SuperBlocks<DType::Q6_K>>(a, m_begin, m_end, w, bias, y, n_begin, n_end);
      break;
  }
}

}  // namespace alem::cpu::avx512_vnni
