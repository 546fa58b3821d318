// Unpacking of bf16 weights with coded exponents (model/bf16_coded.h) on AVX-512, shared by the
// kernels that read them: the exact f32 ones (matmul_coded_avx512.cc, AVX-512F/BW only) and the
// bf16 dot-product ones (matmul_coded_dot_avx512.cc). Always inlined: each file compiles it with
// its own instruction set.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/cpu_kernels.h"
#include "model/bf16_coded.h"

namespace alem::cpu::coded {

// A row's 16-byte code table in every 128-bit lane (vpshufb looks up within lanes).
[[gnu::always_inline]] inline __m512i row_table(const uint8_t* table) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
}

// One chunk of 64 weights as bf16: weights 0..31 in w0, 32..63 in w1, in order (bf16_coded.h).
// Six instructions beside the two loads: the codes split into nibbles (three), looked up as high
// bytes, and unpacked with the low bytes.
[[gnu::always_inline]] inline void unpack_chunk(const uint8_t* chunk, __m512i table, __m512i& w0,
                                                __m512i& w1) {
  const __m512i low = _mm512_loadu_si512(chunk);
  const __m256i codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(chunk + 64));
  const __m512i both =
      _mm512_inserti64x4(_mm512_castsi256_si512(codes), _mm256_srli_epi16(codes, 4), 1);
  const __m512i high = _mm512_shuffle_epi8(table, _mm512_and_si512(both, _mm512_set1_epi8(0x0F)));
  w0 = _mm512_unpacklo_epi8(low, high);
  w1 = _mm512_unpackhi_epi8(low, high);
}

// The chunk at column k of a row that streams from memory: its two lines prefetched ahead
// (prefetch_stream, where `prefetch` says so), then unpacked.
[[gnu::always_inline]] inline void stream_chunk(const uint8_t* row, int64_t k, __m512i table,
                                                bool prefetch, __m512i& w0, __m512i& w1) {
  const uint8_t* chunk = row + k / kBf16CodedChunk * kBf16CodedChunkBytes;
  prefetch_stream(prefetch, chunk);
  prefetch_stream(prefetch, chunk + 64);
  unpack_chunk(chunk, table, w0, w1);
}

// NR weight rows from row n, unpacked a chunk (64 weights) at a time into a small buffer
// (row stride 64) with their exceptions patched in: the form a kernel that reads plain bf16
// rows takes coded ones in, the unpacking interleaved with its arithmetic while the next chunks
// stream in. Rows past `rows` repeat row n (their results are not written).
template <int NR>
class ChunkRows {
 public:
  [[gnu::always_inline]] ChunkRows(const Bf16CodedView& w, int64_t n, int rows) : w_(w) {
    for (int r = 0; r < NR; ++r) {
      row_[r] = n + (r < rows ? r : 0);
      next_[r] = w.exception_begin[row_[r]];
      end_[r] = w.exception_begin[row_[r] + 1];
    }
  }
  // Chunk c of the NR rows into buf[NR][64].
  [[gnu::always_inline]] void unpack(int64_t c, uint16_t* buf) {
    for (int r = 0; r < NR; ++r) {
      __m512i w0, w1;
      unpack_chunk(w_.row(row_[r]) + c * kBf16CodedChunkBytes,
                   row_table(w_.tables + row_[r] * kBf16CodedTableBytes), w0, w1);
      _mm512_store_si512(buf + r * kBf16CodedChunk, w0);
      _mm512_store_si512(buf + r * kBf16CodedChunk + 32, w1);
      const uint32_t limit = static_cast<uint32_t>((c + 1) * kBf16CodedChunk) << 16;
      for (; next_[r] < end_[r] && w_.exceptions[next_[r]] < limit; ++next_[r]) {
        const uint32_t e = w_.exceptions[next_[r]];
        buf[r * kBf16CodedChunk + (e >> 16) - c * kBf16CodedChunk] = static_cast<uint16_t>(e);
      }
    }
  }

 private:
  const Bf16CodedView& w_;
  int64_t row_[NR];
  uint32_t next_[NR], end_[NR];
};

}  // namespace alem::cpu::coded
