// Makes and reads the coded form of bf16 weights (bf16_coded.h). The kernels that read it are
// the CPU backend's (kernels/cpu/matmul_coded_*.cc); this is the portable definition they are
// tested against.
#include "model/bf16_coded.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"

namespace alem {

namespace {

// Chunk position of weight k (0..63) of a chunk (bf16_coded.h).
constexpr int position_of(int k) {
  const int half = k / 32, q = k % 32;
  return 16 * (q / 8) + 8 * half + q % 8;
}

int hi7_of(uint16_t bits) {
  return (bits >> 8) & 0x7F;
}

}  // namespace

bool can_code_bf16(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 && cols % kBf16CodedChunk == 0 && cols <= 65536;
}

size_t bf16_coded_bytes(int64_t rows, int64_t cols, size_t exceptions) {
  const size_t r = static_cast<size_t>(rows);
  return r * static_cast<size_t>(cols / kBf16CodedChunk) * kBf16CodedChunkBytes +
         r * kBf16CodedTableBytes + (r + 1) * sizeof(uint32_t) + exceptions * sizeof(uint32_t);
}

AlignedBuffer code_bf16(int64_t rows, int64_t cols, const uint16_t* values,
                        double max_exception_share) {
  ALEM_CHECK(can_code_bf16(rows, cols), "code_bf16: a " + std::to_string(rows) + " x " +
                                            std::to_string(cols) + " matrix has no coded form");
  // The rows' bases and exceptions first: they decide whether the form pays.
  std::vector<uint8_t> base(static_cast<size_t>(rows));
  std::vector<uint32_t> begin(static_cast<size_t>(rows) + 1, 0);
  std::vector<uint32_t> exceptions;
  const size_t limit = static_cast<size_t>(max_exception_share * static_cast<double>(rows) *
                                           static_cast<double>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const uint16_t* row = values + r * cols;
    int top = 0;
    for (int64_t c = 0; c < cols; ++c) top = std::max(top, hi7_of(row[c]));
    const int b = std::max(top - kBf16CodedWindow, 0);
    base[static_cast<size_t>(r)] = static_cast<uint8_t>(b);
    for (int64_t c = 0; c < cols; ++c) {
      // Zero (either sign) decodes as itself from offset 0; other values below the window are
      // exceptions.
      if (hi7_of(row[c]) <= b && (row[c] & 0x7FFF) != 0) {
        exceptions.push_back(static_cast<uint32_t>(c) << 16 | row[c]);
        if (exceptions.size() > limit) return AlignedBuffer();
      }
    }
    begin[static_cast<size_t>(r) + 1] = static_cast<uint32_t>(exceptions.size());
  }
  AlignedBuffer out(bf16_coded_bytes(rows, cols, exceptions.size()));
  std::memset(out.data(), 0, out.size());
  const Bf16CodedView view = bf16_coded_view(static_cast<const void*>(out.data()), rows, cols);
  uint8_t* chunks = out.data();
  uint8_t* tables = out.data() + (view.tables - view.chunks);
  for (int64_t r = 0; r < rows; ++r) {
    const int b = base[static_cast<size_t>(r)];
    uint8_t* table = tables + r * kBf16CodedTableBytes;
    for (int code = 0; code < 16; ++code) {
      const int sign = code >> 3, offset = code & 7;
      table[code] = static_cast<uint8_t>(sign << 7 | (offset == 0 ? 0 : b + offset));
    }
    const uint16_t* row = values + r * cols;
    uint8_t* out_row = chunks + static_cast<size_t>(r) * view.row_bytes();
    for (int64_t c0 = 0; c0 < cols; c0 += kBf16CodedChunk) {
      uint8_t* chunk = out_row + (c0 / kBf16CodedChunk) * kBf16CodedChunkBytes;
      for (int k = 0; k < kBf16CodedChunk; ++k) {
        const uint16_t bits = row[c0 + k];
        const int hi7 = hi7_of(bits);
        const bool in_window = hi7 > b;
        const int code = (bits >> 15) << 3 | (in_window ? hi7 - b : 0);
        const int p = position_of(k);
        chunk[p] = in_window ? static_cast<uint8_t>(bits & 0xFF) : 0;
        chunk[64 + p % 32] |= static_cast<uint8_t>(code << (p < 32 ? 0 : 4));
      }
    }
  }
  std::memcpy(const_cast<uint32_t*>(view.exception_begin), begin.data(),
              begin.size() * sizeof(uint32_t));
  if (!exceptions.empty()) {
    std::memcpy(const_cast<uint32_t*>(view.exceptions), exceptions.data(),
                exceptions.size() * sizeof(uint32_t));
  }
  return out;
}

Bf16CodedView bf16_coded_view(const void* data, int64_t rows, int64_t cols) {
  Bf16CodedView v;
  v.rows = rows;
  v.cols = cols;
  v.chunks = static_cast<const uint8_t*>(data);
  v.tables = v.chunks + static_cast<size_t>(rows) * v.row_bytes();
  v.exception_begin = reinterpret_cast<const uint32_t*>(v.tables + static_cast<size_t>(rows) *
                                                                       kBf16CodedTableBytes);
  v.exceptions = v.exception_begin + rows + 1;
  return v;
}

Bf16CodedView bf16_coded_view(const AlignedBuffer& data, int64_t rows, int64_t cols) {
  ALEM_CHECK(can_code_bf16(rows, cols), "bf16_coded_view: bad shape");
  ALEM_CHECK(data.size() >= bf16_coded_bytes(rows, cols, 0),
             "bf16_coded_view: buffer smaller than its shape");
  const Bf16CodedView v = bf16_coded_view(static_cast<const void*>(data.data()), rows, cols);
  ALEM_CHECK(data.size() == bf16_coded_bytes(rows, cols, v.exception_begin[rows]),
             "bf16_coded_view: buffer size does not match its exception count");
  return v;
}

void decode_bf16_row(const Bf16CodedView& w, int64_t r, uint16_t* out) {
  const uint8_t* row = w.row(r);
  const uint8_t* table = w.tables + r * kBf16CodedTableBytes;
  for (int64_t c0 = 0; c0 < w.cols; c0 += kBf16CodedChunk) {
    const uint8_t* chunk = row + (c0 / kBf16CodedChunk) * kBf16CodedChunkBytes;
    for (int k = 0; k < kBf16CodedChunk; ++k) {
      const int p = position_of(k);
      const int code = (chunk[64 + p % 32] >> (p < 32 ? 0 : 4)) & 0x0F;
      out[c0 + k] = static_cast<uint16_t>(table[code] << 8 | chunk[p]);
    }
  }
  for (uint32_t e = w.exception_begin[r]; e < w.exception_begin[r + 1]; ++e) {
    out[w.exceptions[e] >> 16] = static_cast<uint16_t>(w.exceptions[e] & 0xFFFF);
  }
}

}  // namespace alem
