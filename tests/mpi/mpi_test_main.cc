// Shared main for multi-rank tests: starts MPI around GoogleTest, lets only rank 0 print the
// usual report (the other ranks print their failures alone, tagged with their rank), tells after
// each test which ranks failed it, and makes every rank exit with the same status, so mpirun and
// ctest see one verdict for the job.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "mpi/mpi_context.h"
#include "mpi_test.h"

namespace alem::test {
namespace {

// One world group for the harness's own verdict exchanges.
std::unique_ptr<ProcessGroup>& harness_world() {
  static std::unique_ptr<ProcessGroup> world;
  return world;
}

// On ranks other than 0: prints failed assertions and failed tests only, tagged with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.message());
    std::fflush(stderr);
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (!info.result()->Failed()) return;
    std::fprintf(stderr, "[rank %d] [  FAILED  ] %s.%s\n", rank_, info.test_suite_name(),
                 info.name());
    std::fflush(stderr);
  }

 private:
  int rank_;
};

// After each test, all ranks exchange their verdicts; rank 0 names the ranks that failed.
class VerdictExchange : public ::testing::EmptyTestEventListener {
 public:
  VerdictExchange(int rank, int size) : rank_(rank), size_(size) {}
  void OnTestEnd(const ::testing::TestInfo& info) override {
    std::vector<uint8_t> failed(static_cast<size_t>(size_));
    const uint8_t mine = info.result()->Failed() ? 1 : 0;
    harness_world()->all_gather(&mine, 1, failed.data());
    if (rank_ != 0) return;
    std::string ranks;
    for (int r = 0; r < size_; ++r) {
      if (!failed[static_cast<size_t>(r)]) continue;
      if (!ranks.empty()) ranks += ",";
      ranks += std::to_string(r);
    }
    if (ranks.empty()) return;
    const std::string line = std::string(info.test_suite_name()) + "." + info.name() +
                             " failed on rank(s) " + ranks + " of " + std::to_string(size_);
    std::printf("[  FAILED  ] %s\n", line.c_str());
    std::fflush(stdout);
    failures_.push_back(line);
  }

  // Rank 0's summary of failures on any rank (its own report counts only its own).
  void OnTestProgramEnd(const ::testing::UnitTest&) override {
    if (rank_ != 0 || failures_.empty()) return;
    std::printf("[  FAILED  ] %zu test(s) failed on some rank:\n", failures_.size());
    for (const std::string& line : failures_) std::printf("[  FAILED  ] %s\n", line.c_str());
    std::fflush(stdout);
  }

 private:
  int rank_, size_;
  std::vector<std::string> failures_;
};

}  // namespace

int world_rank() {
  return mpi_world_rank();
}
int world_size() {
  return mpi_world_size();
}

bool all_ranks_agree(bool ok) {
  float failures = ok ? 0.f : 1.f;
  harness_world()->all_reduce(&failures, 1, ReduceOp::Max);
  return failures == 0.f;
}

}  // namespace alem::test

int main(int argc, char** argv) {
  alem::init_mpi(&argc, &argv);
  const int rank = alem::mpi_world_rank(), size = alem::mpi_world_size();
  int status = 1;
  {
    alem::ParallelContext harness =
        alem::make_mpi_context(alem::ParallelLayout(1, 1, size), alem::MpiContextOptions{});
    alem::test::harness_world() = std::move(harness.world);
    ::testing::InitGoogleTest(&argc, argv);
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    if (rank != 0) {
      delete listeners.Release(listeners.default_result_printer());
      listeners.Append(new alem::test::FailurePrinter(rank));
    }
    listeners.Append(new alem::test::VerdictExchange(rank, size));
    const bool passed = RUN_ALL_TESTS() == 0;
    status = alem::test::all_ranks_agree(passed) ? 0 : 1;
    alem::test::harness_world().reset();
  }
  alem::finalize_mpi();
  return status;
}
