// alem_secure_channel_bench: what the encrypted inter-node channel costs, clear against
// encrypted, on the message sizes SmolLM2-135M really sends (hidden size 576, fp32 activations):
// a pipeline hop (send/recv of one step's hidden states: decode of 1 and 32 sequences, prefill
// of 512 and 2048 tokens) and the tensor-parallel all-reduce of the same tensors. Run it as the
// model would run: `mpirun --oversubscribe -np 2 alem_secure_channel_bench` (2 to 4 ranks).
// All ranks share this machine, so the encrypted path is forced with the test knob (every rank
// its own node); the clear path is the plain MPI group. Rank 0 also measures AES-256-GCM on one
// core through the same code (AesGcm), the limit an encrypted link cannot beat per core.
//
// Columns: time per call (median of 7 batches, slowest rank), GB/s = payload bytes / time
// (pipeline: one direction; all-reduce: the tensor size, "algbw" as nccl-tests name it), and
// the encrypted/clear time ratio.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi/mpi_context.h"
#include "mpi/secure_crypto.h"
#include "mpi/secure_process_group.h"

namespace alem {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Median over batches of the slowest rank's time per call.
template <typename Fn>
double time_per_call(ProcessGroup& world, Fn&& fn, double budget_s) {
  // Calibrate iterations so one batch takes about budget_s / 7.
  fn();
  world.barrier();
  auto t0 = Clock::now();
  fn();
  float one = static_cast<float>(seconds_since(t0));
  world.all_reduce(&one, 1, ReduceOp::Max);
  const int iters = std::max(1, static_cast<int>(budget_s / 7 / std::max(one, 1e-7f)));
  std::vector<double> batches;
  for (int b = 0; b < 7; ++b) {
    world.barrier();
    t0 = Clock::now();
    for (int i = 0; i < iters; ++i) fn();
    float t = static_cast<float>(seconds_since(t0) / iters);
    world.all_reduce(&t, 1, ReduceOp::Max);
    batches.push_back(t);
  }
  std::sort(batches.begin(), batches.end());
  return batches[3];
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// AES-256-GCM on one core through AesGcm, 1 MiB messages: GB per wall-clock second and per
// CPU second of this thread (what `openssl speed` reports by default; on a shared machine the
// wall-clock figure is lower by the share of the core this process got).
struct AesRate {
  double wall_gbs = 0, cpu_gbs = 0;
};
AesRate aes_gcm_single_core() {
  ChannelKey key{};
  key[0] = 1;
  AesGcm sealer(key, true);
  std::vector<uint8_t> in(size_t{1} << 20, 7), out(in.size());
  uint8_t tag[16];
  GcmNonce nonce{};
  const auto t0 = Clock::now();
  const double c0 = thread_cpu_seconds();
  size_t bytes = 0;
  uint64_t counter = 0;
  while (seconds_since(t0) < 1.0) {
    std::memcpy(nonce.data() + 4, &counter, 8);
    ++counter;
    sealer.seal(nonce, {}, in, out.data(), tag);
    bytes += in.size();
  }
  AesRate rate;
  rate.wall_gbs = static_cast<double>(bytes) / seconds_since(t0) / 1e9;
  rate.cpu_gbs = static_cast<double>(bytes) / (thread_cpu_seconds() - c0) / 1e9;
  return rate;
}

struct Size {
  const char* label;
  size_t tokens;
};

int run(int argc, char** argv) {
  double budget = 0.5;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seconds" && i + 1 < argc) {
      budget = std::stod(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: alem_secure_channel_bench [--seconds PER_SIZE]\n");
      return 2;
    }
  }
  init_mpi(&argc, &argv);
  const int n = mpi_world_size();
  ALEM_CHECK(n >= 2, "run under mpirun with at least 2 ranks");
  const ParallelLayout layout(1, n, 1);
  ParallelContext clear = make_mpi_context(layout);
  ParallelContext secure = make_mpi_context(layout);
  auto keys = std::make_shared<SecureChannelKeys>(secure.world_rank);
  for (int r = 0; r < n; ++r) {
    if (r == secure.world_rank) continue;
    ChannelKey k{};  // a fixed benchmark key per pair: the cost does not depend on its value
    k[0] = static_cast<uint8_t>(std::min(r, secure.world_rank));
    k[1] = static_cast<uint8_t>(std::max(r, secure.world_rank));
    keys->set_pair_key(r, k);
  }
  SecureGroupOptions options;
  options.treat_every_rank_as_own_node = true;
  secure_parallel_context(secure, keys, options);
  const int me = clear.world_rank;

  if (me == 0) {
    std::printf("# alem_secure_channel_bench: %d ranks on one machine, hidden size 576 (fp32)\n",
                n);
    const AesRate aes = aes_gcm_single_core();
    std::printf(
        "# AES-256-GCM single core (this code, 1 MiB messages): %.2f GB/s of wall time, %.2f "
        "GB/s of CPU time\n",
        aes.wall_gbs, aes.cpu_gbs);
    std::printf("%-9s %-16s %10s %12s %9s %12s %9s %7s\n", "op", "size", "bytes", "clear_us",
                "clear_GB/s", "enc_us", "enc_GB/s", "ratio");
  }
  constexpr size_t kHidden = 576;
  const Size sizes[] = {
      {"decode-1", 1}, {"decode-32", 32}, {"prefill-512", 512}, {"prefill-2048", 2048}};
  for (const Size& s : sizes) {
    const size_t count = s.tokens * kHidden, bytes = count * sizeof(float);
    std::vector<float> buf(count, 1.f);
    // Pipeline hop: ping-pong between world ranks 0 and 1 (half the round trip).
    double t[2];
    ProcessGroup* groups[2] = {clear.world.get(), secure.world.get()};
    for (int k = 0; k < 2; ++k) {
      ProcessGroup& g = *groups[k];
      t[k] = time_per_call(
                 *clear.world,
                 [&] {
                   if (me == 0) {
                     g.send(buf.data(), bytes, 1, 5);
                     g.recv(buf.data(), bytes, 1, 5);
                   } else if (me == 1) {
                     g.recv(buf.data(), bytes, 0, 5);
                     g.send(buf.data(), bytes, 0, 5);
                   }
                 },
                 budget) /
             2;
    }
    if (me == 0)
      std::printf("%-9s %-16s %10zu %12.1f %9.2f %12.1f %9.2f %7.2f\n", "pp_hop", s.label, bytes,
                  t[0] * 1e6, bytes / t[0] / 1e9, t[1] * 1e6, bytes / t[1] / 1e9, t[1] / t[0]);
    for (int k = 0; k < 2; ++k) {
      ProcessGroup& g = *groups[k];
      t[k] = time_per_call(
          *clear.world,
          [&] {
            std::fill(buf.begin(), buf.end(), 1.f);
            g.all_reduce(buf.data(), count, ReduceOp::Sum);
          },
          budget);
    }
    if (me == 0)
      std::printf("%-9s %-16s %10zu %12.1f %9.2f %12.1f %9.2f %7.2f\n", "allreduce", s.label, bytes,
                  t[0] * 1e6, bytes / t[0] / 1e9, t[1] * 1e6, bytes / t[1] / 1e9, t[1] / t[0]);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace
}  // namespace alem

int main(int argc, char** argv) {
  int code = 0;
  try {
    code = alem::run(argc, argv);
  } catch (const alem::Error& e) {
    std::fprintf(stderr, "alem_secure_channel_bench: %s\n", e.what());
    code = 1;
  }
  alem::finalize_mpi();
  return code;
}
