// The cache rows a span of keys or values of the hand-written attention kernels
// (attention_spans.inc) reads at one kv head: the span's token rows through the block table,
// each at the head's offset. A task of several kv heads (decode) walks them head after head from
// the same row pointers, so the pointers are made once per span, not once per head.
#pragma once

#include <cstdint>

namespace alem::cpu {

template <typename KV>
struct CacheRows {
  const KV* const* rows;  // the span's token rows (at the task's first kv head)
  int64_t offset;         // elements from there to this head's part of the row

  const KV* operator[](int t) const { return rows[t] + offset; }
  CacheRows operator+(int t) const { return {rows + t, offset}; }
};

}  // namespace alem::cpu
