// Dispatch of routed token rows to the ranks holding their experts and the weighted combine of
// the results (see expert_dispatch.h). Wire rows: `hidden` floats then the expert id (int32 bits
// in one more float slot); results come back as `hidden` floats per row, in the order sent.
#include "engine/expert_dispatch.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "core/aligned_buffer.h"
#include "core/error.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

void dispatch_and_combine(ProcessGroup& group, int num_experts, int64_t hidden, const float* x,
                          int64_t T, int top_k, const int32_t* chosen, const float* weights,
                          const LocalExpertRun& run, float* out, ExpertDispatchStats& stats) {
  const int n = group.size(), me = group.rank();
  ALEM_CHECK(num_experts > 0 && num_experts % n == 0,
             "expert dispatch: " + std::to_string(num_experts) + " experts do not split over the " +
                 std::to_string(n) + " members of the " + group.name() + " group");
  const int per_member = num_experts / n;
  const int64_t H = hidden, K = top_k, A = T * K;  // A: this rank's (token, expert) assignments
  const int64_t row_floats = H + 1;
  const size_t un = static_cast<size_t>(n);

  // Pack this rank's assignments by destination member; slot[i] is assignment i's packed row.
  std::vector<size_t> rows_to(un, 0);
  for (int64_t i = 0; i < A; ++i) {
    ALEM_CHECK(chosen[i] >= 0 && chosen[i] < num_experts,
               "expert dispatch: routed to expert " + std::to_string(chosen[i]));
    ++rows_to[static_cast<size_t>(chosen[i] / per_member)];
  }
  std::vector<size_t> first_row(un + 1, 0);
  for (size_t j = 0; j < un; ++j) first_row[j + 1] = first_row[j] + rows_to[j];
  std::vector<size_t> slot(static_cast<size_t>(A)), fill(first_row.begin(), first_row.end() - 1);
  std::vector<float> send(static_cast<size_t>(A * row_floats));
  for (int64_t i = 0; i < A; ++i) {
    const size_t row = fill[static_cast<size_t>(chosen[i] / per_member)]++;
    slot[static_cast<size_t>(i)] = row;
    float* dst = send.data() + row * row_floats;
    std::memcpy(dst, x + (i / K) * H, static_cast<size_t>(H) * sizeof(float));
    std::memcpy(dst + H, &chosen[i], sizeof(int32_t));
  }
  std::vector<size_t> send_bytes(un);
  for (size_t j = 0; j < un; ++j) send_bytes[j] = rows_to[j] * row_floats * sizeof(float);

  // Rows out (after the counts), to the members holding their experts.
  auto t0 = Clock::now();
  const std::vector<size_t> recv_bytes = all_to_all_counts(group, send_bytes);
  size_t recv_total = 0;
  for (size_t b : recv_bytes) {
    ALEM_CHECK(b % (row_floats * sizeof(float)) == 0,
               "expert dispatch: a member sent a partial row (" + std::to_string(b) + " bytes)");
    recv_total += b;
  }
  const size_t R = recv_total / (row_floats * sizeof(float));
  std::vector<float> received(R * row_floats);
  group.all_to_all(send.data(), send_bytes, received.data(), recv_bytes);
  stats.all_to_all_seconds += seconds_since(t0);

  // Run each local expert once on every row that chose it (all members' rows together).
  std::vector<float> results(R * H), batch, batch_out;
  std::vector<size_t> rows;
  std::vector<int32_t> expert_of(R);
  const int32_t first_expert = me * per_member;
  for (size_t r = 0; r < R; ++r) {
    std::memcpy(&expert_of[r], received.data() + r * row_floats + H, sizeof(int32_t));
    ALEM_CHECK(expert_of[r] >= first_expert && expert_of[r] < first_expert + per_member,
               "expert dispatch: member " + std::to_string(me) + " of the " + group.name() +
                   " group holds experts [" + std::to_string(first_expert) + "," +
                   std::to_string(first_expert + per_member) + ") but received a row for expert " +
                   std::to_string(expert_of[r]));
  }
  for (int local = 0; local < per_member; ++local) {
    rows.clear();
    for (size_t r = 0; r < R; ++r)
      if (expert_of[r] == first_expert + local) rows.push_back(r);
    if (rows.empty()) continue;
    const int64_t m = static_cast<int64_t>(rows.size());
    batch.resize(static_cast<size_t>(m * H));
    batch_out.resize(static_cast<size_t>(m * H));
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(batch.data() + i * H, received.data() + rows[i] * row_floats,
                  static_cast<size_t>(H) * sizeof(float));
    }
    run(local, batch.data(), m, batch_out.data());
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(results.data() + rows[i] * H, batch_out.data() + i * H,
                  static_cast<size_t>(H) * sizeof(float));
    }
  }

  // Results back, in the order the rows came: each member gets one result per row it sent.
  std::vector<size_t> back_send(un), back_recv(un);
  for (size_t j = 0; j < un; ++j) {
    back_send[j] = recv_bytes[j] / (row_floats * sizeof(float)) * H * sizeof(float);
    back_recv[j] = rows_to[j] * H * sizeof(float);
  }
  std::vector<float> returned(static_cast<size_t>(A * H));
  t0 = Clock::now();
  group.all_to_all(results.data(), back_send, returned.data(), back_recv);
  stats.all_to_all_seconds += seconds_since(t0);

  // Combine on the token's rank: each token's experts in increasing id, as the one-rank loop.
  std::vector<int64_t> order(static_cast<size_t>(K));
  for (int64_t t = 0; t < T; ++t) {
    std::iota(order.begin(), order.end(), t * K);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return chosen[a] < chosen[b] || (chosen[a] == chosen[b] && a < b);
    });
    float* dst = out + t * H;
    for (int64_t i : order) {
      const float* src = returned.data() + slot[static_cast<size_t>(i)] * H;
      const float w = weights[i];
      for (int64_t h = 0; h < H; ++h) dst[h] += w * src[h];
    }
  }

  const size_t own = static_cast<size_t>(me);
  stats.rows_sent += static_cast<uint64_t>(A) - rows_to[own];
  stats.rows_received += R - recv_bytes[own] / (row_floats * sizeof(float));
  for (size_t j = 0; j < un; ++j) {
    if (j == own) continue;
    stats.bytes_sent += send_bytes[j] + back_send[j];
    stats.bytes_received += recv_bytes[j] + back_recv[j];
  }
  ++stats.layer_calls;
  // Hidden states of requests: wiped before the buffers go back to the allocator.
  secure_wipe(send.data(), send.size() * sizeof(float));
  secure_wipe(received.data(), received.size() * sizeof(float));
  secure_wipe(results.data(), results.size() * sizeof(float));
  secure_wipe(returned.data(), returned.size() * sizeof(float));
  secure_wipe(batch.data(), batch.size() * sizeof(float));
  secure_wipe(batch_out.data(), batch_out.size() * sizeof(float));
}

bool any_member_has_work(ProcessGroup* ep_group, bool mine, bool* stop) {
  if (!ep_group || ep_group->size() == 1) return mine;
  float flags[2] = {mine ? 1.f : 0.f, stop && *stop ? 1.f : 0.f};
  ep_group->all_reduce(flags, 2, ReduceOp::Max);
  if (stop) *stop = flags[1] > 0;
  return flags[0] > 0;
}

}  // namespace alem
