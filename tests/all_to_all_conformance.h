// The all_to_all conformance check every ProcessGroup backend runs (tests/unit/test_all_to_all.cc:
// solo and the fake group; tests/mpi/test_all_to_all_mpi.cc: MPI, MPI in small chunks, the
// encrypted channel, NCCL where GPUs are present). Member i sends member j a block whose length
// and bytes depend only on (i, j, pattern), including empty blocks and empty members, so every
// member computes what it must receive without asking anyone.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mpi/process_group.h"

namespace alem::test {

// Bytes member `from` sends member `to` in pattern `p` (scale multiplies the lengths).
inline size_t a2a_block_bytes(int from, int to, int p, size_t scale) {
  switch (p) {
    case 0:
      return 1;  // one byte each
    case 1:
      return ((from * 7 + to * 3 + 1) % 5) * scale;  // uneven, some empty
    case 2:
      return from == 0 ? 0 : (to + 1) * scale + 3;  // member 0 sends nothing
    default:
      return to == from ? 0 : ((from + 2 * to) % 3 + 1) * scale * 17;  // none to self
  }
}
inline uint8_t a2a_byte(int from, int to, size_t k) {
  return static_cast<uint8_t>(from * 37 + to * 11 + k * 5 + (k >> 8));
}
inline constexpr int kA2aPatterns = 4;

// Moves buffers to and from the memory the group takes (identity for host-memory groups).
struct A2aMemory {
  std::function<void*(size_t)> alloc = nullptr;  // null: host memory
  std::function<void(void*, const void*, size_t)> upload = nullptr;
  std::function<void(void*, const void*, size_t)> download = nullptr;
  std::function<void(void*)> release = nullptr;
};

// Runs every pattern at `scale` through g.all_to_all (counts from all_to_all_counts when
// `exchange_counts`, else computed locally) and checks every received byte. Returns the number
// of mismatching blocks on this member.
inline int check_all_to_all(ProcessGroup& g, size_t scale, bool exchange_counts = true,
                            const A2aMemory& memory = {}) {
  const int n = g.size(), me = g.rank();
  int bad = 0;
  for (int p = 0; p < kA2aPatterns; ++p) {
    std::vector<size_t> send_bytes(n), want_recv(n);
    std::vector<uint8_t> send;
    for (int j = 0; j < n; ++j) {
      send_bytes[j] = a2a_block_bytes(me, j, p, scale);
      want_recv[j] = a2a_block_bytes(j, me, p, scale);
      for (size_t k = 0; k < send_bytes[j]; ++k) send.push_back(a2a_byte(me, j, k));
    }
    std::vector<size_t> recv_bytes = want_recv;
    if (exchange_counts) {
      recv_bytes = all_to_all_counts(g, send_bytes);
      EXPECT_EQ(recv_bytes, want_recv) << g.name() << " pattern " << p << " counts";
      if (recv_bytes != want_recv) ++bad;
    }
    size_t total = 0;
    for (size_t b : recv_bytes) total += b;
    std::vector<uint8_t> recv(total, 0xEE);
    if (memory.alloc) {
      void* dsend = memory.alloc(std::max<size_t>(send.size(), 1));
      void* drecv = memory.alloc(std::max<size_t>(total, 1));
      if (!send.empty()) memory.upload(dsend, send.data(), send.size());
      g.all_to_all(dsend, send_bytes, drecv, recv_bytes);
      if (total) memory.download(recv.data(), drecv, total);
      memory.release(dsend);
      memory.release(drecv);
    } else {
      g.all_to_all(send.data(), send_bytes, recv.data(), recv_bytes);
    }
    size_t at = 0;
    for (int j = 0; j < n; ++j) {
      bool same = true;
      for (size_t k = 0; k < recv_bytes[j] && same; ++k) same = recv[at + k] == a2a_byte(j, me, k);
      EXPECT_TRUE(same) << g.name() << " pattern " << p << " scale " << scale << ": member " << me
                        << " got a wrong block from member " << j;
      bad += same ? 0 : 1;
      at += recv_bytes[j];
    }
  }
  return bad;
}

}  // namespace alem::test
