// A 16x16 f32 transpose in AVX-512 registers, shared by the AVX-512 matmul (packing weight
// panels) and attention (turning 16 keys into 16 score lanes), and the transpose-fold tree that
// reduces 16 vectors into one vector of their 16 reductions (attention's decode scores, the
// block kernels' activation scales). Include only from files compiled with AVX-512 flags
// (*_avx512.cc).
#pragma once

#include <immintrin.h>

namespace alem::cpu::avx512 {

// Transposes the 16x16 block held in r[0..15] (row i becomes column i).
inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  __m512 u[16];
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);
    r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// The first three levels of fold_sixteen's tree over 8 vectors v[0..7]: 128-bit lane L of the
// result holds v[0..7]'s lanes folded within lane L, two partial results per vector. A caller
// that makes its 16 vectors eight at a time (attention's decode scores, for several queries)
// folds each eight as they come and joins the two halves with fold_halves.
template <class Op>
inline __m512 fold_eight(const __m512* v, Op op) {
  __m512 w[4];  // 128-bit lane L of w[i]: v[2i] and v[2i + 1], two lanes folded into one
  for (int i = 0; i < 4; ++i) {
    w[i] =
        op(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  }
  __m512 x[2];  // 128-bit lane L of x[j]: v[4j .. 4j + 3] over lane L
  for (int j = 0; j < 2; ++j) {
    const __m512d a = _mm512_castps_pd(w[2 * j]), b = _mm512_castps_pd(w[2 * j + 1]);
    x[j] =
        op(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return op(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
}

// The last level: lane j the fold of v[j] over its 16 lanes, from fold_eight of v[0..7] and of
// v[8..15].
template <class Op>
inline __m512 fold_halves(__m512 low, __m512 high, Op op) {
  return op(_mm512_shuffle_f32x4(low, high, 0x88), _mm512_shuffle_f32x4(low, high, 0xDD));
}

// Lane j of the result: `op` over the 16 lanes of v[j], by a transpose-fold tree (op: add, max;
// its pairing order is fixed, so an op exact in any order, such as max or adding integers below
// 2^24, gives what a lane-by-lane loop would).
template <class Op>
inline __m512 fold_sixteen(const __m512* v, Op op) {
  return fold_halves(fold_eight(v, op), fold_eight(v + 8, op), op);
}

}  // namespace alem::cpu::avx512
