// alem_comm_bench: latency and bandwidth of the MPI process group over message sizes, to size the
// cost of tensor-parallel all-reduces and pipeline sends before a model is sharded. Run it as the
// model would run: `mpirun -np 4 alem_comm_bench` (add --oversubscribe on a small machine).
// It measures through ProcessGroup, so chunking and checks are included in the figures.
//
// Columns follow nccl-tests: time is per call (slowest rank; the median and the best of 5
// batches, since a shared machine is noisy), algbw = bytes / median time, and
// busbw scales algbw by the traffic each link carries (all_reduce 2(n-1)/n, all_gather and
// all_to_all (n-1)/n; all_to_all sends size/n bytes to each member),
// so it is comparable with the link's bandwidth. send_recv is a ping-pong between ranks 0 and 1:
// time is half the round trip.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "mpi/failure_watchdog.h"
#include "mpi/mpi_context.h"

namespace alem {
namespace {

struct BenchOptions {
  size_t min_bytes = 4;
  size_t max_bytes = size_t{64} << 20;
  size_t factor = 4;
  double seconds_per_size = 0.2;
  std::vector<std::string> ops = {"all_reduce", "send_recv", "all_gather", "broadcast",
                                  "all_to_all"};
  bool csv = false;
};

const char* kUsage =
    "usage: mpirun -np N alem_comm_bench [options]\n"
    "  --min-bytes B      smallest message (default 4)\n"
    "  --max-bytes B      largest message, suffixes K/M/G (default 64M)\n"
    "  --factor F         size step (default 4)\n"
    "  --seconds S        time spent per size and op (default 0.2)\n"
    "  --ops LIST         comma list of all_reduce,send_recv,all_gather,broadcast,all_to_all\n"
    "                     (default all)\n"
    "  --csv              print CSV instead of a table\n";

size_t parse_bytes(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  ALEM_CHECK(end != text.c_str() && value > 0, "not a size: '" + text + "'");
  double scale = 1;
  const std::string suffix = end;
  if (suffix == "K" || suffix == "k")
    scale = 1024.0;
  else if (suffix == "M" || suffix == "m")
    scale = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g")
    scale = 1024.0 * 1024 * 1024;
  else
    ALEM_CHECK(suffix.empty(), "unknown size suffix in '" + text + "'");
  return static_cast<size_t>(value * scale);
}

BenchOptions parse_options(int argc, char** argv) {
  BenchOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto next = [&]() -> std::string {
      ALEM_CHECK(i + 1 < argc, arg + " needs a value\n" + kUsage);
      return argv[++i];
    };
    if (arg == "--min-bytes")
      options.min_bytes = parse_bytes(next());
    else if (arg == "--max-bytes")
      options.max_bytes = parse_bytes(next());
    else if (arg == "--factor")
      options.factor = parse_bytes(next());
    else if (arg == "--seconds")
      options.seconds_per_size = std::stod(next());
    else if (arg == "--csv")
      options.csv = true;
    else if (arg == "--ops") {
      options.ops.clear();
      std::string list = next();
      for (size_t start = 0; start <= list.size();) {
        const size_t comma = std::min(list.find(',', start), list.size());
        options.ops.push_back(list.substr(start, comma - start));
        start = comma + 1;
      }
    } else {
      ALEM_FAIL("unknown option " + arg + "\n" + kUsage);
    }
  }
  ALEM_CHECK(options.factor >= 2, "--factor must be at least 2");
  ALEM_CHECK(options.min_bytes >= 4 && options.min_bytes <= options.max_bytes,
             "need 4 <= --min-bytes <= --max-bytes");
  for (const std::string& op : options.ops)
    ALEM_CHECK(op == "all_reduce" || op == "send_recv" || op == "all_gather" || op == "broadcast" ||
                   op == "all_to_all",
               "unknown op '" + op + "'\n" + kUsage);
  return options;
}

using Clock = std::chrono::steady_clock;

// Runs `call` `iterations` times between barriers; returns the slowest rank's seconds per call.
template <class Call>
double time_calls(ProcessGroup& world, int iterations, Call call) {
  world.barrier();
  const auto start = Clock::now();
  for (int i = 0; i < iterations; ++i) call();
  float seconds = std::chrono::duration<float>(Clock::now() - start).count();
  world.all_reduce(&seconds, 1, ReduceOp::Max);
  return static_cast<double>(seconds) / iterations;
}

struct Row {
  std::string op;
  size_t bytes;
  int iterations;         // per batch
  double median_seconds;  // per call, median of the batches
  double best_seconds;    // per call, fastest batch
  double bus_factor;
};

constexpr int kBatches = 5;

Row measure(ProcessGroup& world, const std::string& op, size_t bytes, double budget_s,
            std::vector<char>& a, std::vector<char>& b) {
  const int n = world.size(), me = world.rank();
  const std::vector<size_t> block(static_cast<size_t>(n), bytes / n);
  auto call = [&] {
    if (op == "all_to_all") {
      world.all_to_all(a.data(), block, b.data(), block);
    } else if (op == "all_reduce") {
      world.all_reduce(reinterpret_cast<float*>(a.data()), bytes / sizeof(float));
    } else if (op == "all_gather") {
      world.all_gather(a.data(), bytes / n, b.data());
    } else if (op == "broadcast") {
      world.broadcast(a.data(), bytes, 0);
    } else if (me == 0) {  // send_recv: ping-pong 0 <-> 1; one call is one round trip
      world.send(a.data(), bytes, 1, 7);
      world.recv(a.data(), bytes, 1, 7);
    } else if (me == 1) {
      world.recv(a.data(), bytes, 0, 7);
      world.send(a.data(), bytes, 0, 7);
    }
  };
  // Warm up (connections, page faults), then double the batch until one batch takes its share
  // of the budget. Timings are the slowest rank's, so every rank picks the same count.
  time_calls(world, 2, call);
  const double batch_budget = budget_s / kBatches;
  int iterations = 1;
  while (iterations < 100000 && time_calls(world, iterations, call) * iterations < batch_budget)
    iterations *= 2;
  std::vector<double> batches;
  for (int batch = 0; batch < kBatches; ++batch)
    batches.push_back(time_calls(world, iterations, call));
  std::sort(batches.begin(), batches.end());
  Row row{op, bytes, iterations, batches[kBatches / 2], batches[0], 1.0};
  if (op == "send_recv") {  // one way
    row.median_seconds /= 2;
    row.best_seconds /= 2;
  }
  if (op == "all_reduce") row.bus_factor = 2.0 * (n - 1) / n;
  if (op == "all_gather" || op == "all_to_all") row.bus_factor = static_cast<double>(n - 1) / n;
  return row;
}

std::string human_bytes(size_t bytes) {
  char text[32];
  if (bytes >= (size_t{1} << 20) && bytes % (size_t{1} << 20) == 0)
    std::snprintf(text, sizeof(text), "%zu MiB", bytes >> 20);
  else if (bytes >= 1024 && bytes % 1024 == 0)
    std::snprintf(text, sizeof(text), "%zu KiB", bytes >> 10);
  else
    std::snprintf(text, sizeof(text), "%zu B", bytes);
  return text;
}

int run(int argc, char** argv) {
  const BenchOptions options = parse_options(argc, argv);
  init_mpi(&argc, &argv);
  const int n = mpi_world_size();
  {
    ParallelContext ctx = make_mpi_context(ParallelLayout(1, 1, n));
    ProcessGroup& world = *ctx.world;
    const bool print = world.rank() == 0;
    if (print) {
      const NodePlacement placement = node_placement(ctx);
      std::printf("# alem_comm_bench: %d rank(s) on %d node(s), %s, MPI process group\n", n,
                  placement.num_nodes, to_string(mpi_thread_level()));
      std::printf("%s", describe_placement(ctx).c_str());
      if (options.csv)
        std::printf("op,ranks,bytes,iterations,median_us,best_us,algbw_GBps,busbw_GBps\n");
      else
        std::printf("%-11s %8s %7s %12s %12s %11s %11s\n", "op", "bytes", "iters", "median us",
                    "best us", "algbw GB/s", "busbw GB/s");
    }
    // all_gather's total must divide by n; the others use the size as is.
    std::vector<char> a(options.max_bytes + 64, 1), b(options.max_bytes + 64, 0);
    std::fill(reinterpret_cast<float*>(a.data()),
              reinterpret_cast<float*>(a.data()) + a.size() / sizeof(float), 1e-3f);
    for (const std::string& op : options.ops) {
      if (op == "send_recv" && n < 2) {
        if (print) std::printf("# send_recv needs 2 ranks; skipped\n");
        continue;
      }
      for (size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= options.factor) {
        size_t size =
            op == "all_gather" || op == "all_to_all" ? std::max<size_t>(bytes / n, 1) * n : bytes;
        if (op == "all_reduce") size = std::max<size_t>(size / sizeof(float), 1) * sizeof(float);
        const Row row = measure(world, op, size, options.seconds_per_size, a, b);
        if (!print) continue;
        // Bandwidth from the median batch: typical, not lucky.
        const double algbw = static_cast<double>(row.bytes) / row.median_seconds / 1e9;
        if (options.csv)
          std::printf("%s,%d,%zu,%d,%.3f,%.3f,%.4f,%.4f\n", row.op.c_str(), n, row.bytes,
                      row.iterations, row.median_seconds * 1e6, row.best_seconds * 1e6, algbw,
                      algbw * row.bus_factor);
        else
          std::printf("%-11s %8s %7d %12.2f %12.2f %11.3f %11.3f\n", row.op.c_str(),
                      human_bytes(row.bytes).c_str(), row.iterations, row.median_seconds * 1e6,
                      row.best_seconds * 1e6, algbw, algbw * row.bus_factor);
        std::fflush(stdout);
      }
    }
  }
  finalize_mpi();
  return 0;
}

}  // namespace
}  // namespace alem

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      std::printf("%s", alem::kUsage);
      return 0;
    }
  try {
    return alem::run(argc, argv);
  } catch (const alem::Error& e) {
    alem::abort_job(e.message());  // every rank fails alike; the job ends with this message
  }
}
