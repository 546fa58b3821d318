// Fuzzes the usage journal's replay (src/network/usage_journal): after a crash or requeue the
// provider reopens its journal, and a torn or damaged file must be cut back or refused, never
// misread. The input is the journal file. After a successful open the harness appends a start
// and a finish, reopens the file, and checks the finish reads back exactly: replay and append
// must agree on where the valid records end. ALEM_FUZZ_MAKE_SEEDS=<dir> writes real journals.
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "network/usage_journal.h"

namespace {

using namespace alem::network;

std::filesystem::path journal_dir() {
  return std::filesystem::temp_directory_path() / ("alem-fuzz-journal-" + std::to_string(getpid()));
}

// The run's own directory goes when the fuzzer exits (a run of the test labels made one each).
void remove_journal_dir() {
  std::error_code ignored;
  std::filesystem::remove_all(journal_dir(), ignored);
}

std::string journal_path() {
  static const std::string path = (journal_dir() / "usage.journal").string();
  static const bool cleanup_registered = std::atexit(remove_journal_dir) == 0;
  (void)cleanup_registered;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  return path;
}

FinishRecord record(uint8_t seed, int chunks) {
  FinishRecord r;
  r.request_id = alem::fuzz::fixed_bytes(seed);
  r.usage = {12, 4, 7, 0};
  r.finish_reason = "stop";
  r.queue_ms = 3;
  r.first_token_ms = 9;
  r.total_ms = 40;
  for (int i = 0; i < chunks; ++i) r.sealed_chunks.push_back(alem::fuzz::fixed_bytes(seed + i, 60));
  return r;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const std::string dir = alem::fuzz::seed_dir(); !dir.empty()) {
    const std::string path = journal_path();
    std::filesystem::remove(path);
    {
      UsageJournal j(path);
      j.start(alem::fuzz::fixed_bytes(1), 1);
      j.finish(record(1, 2));
      j.start(alem::fuzz::fixed_bytes(2), 1);
      j.start(alem::fuzz::fixed_bytes(2), 2);
    }
    const std::string bytes = read_all(path);
    alem::fuzz::write_seed(dir, "journal", bytes);
    alem::fuzz::write_seed(dir, "journal-torn-tail", bytes.substr(0, bytes.size() - 5));
    alem::fuzz::write_seed(dir, "header-only", bytes.substr(0, 8));
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = journal_path();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  const FinishRecord mine = record(200, 1);
  try {
    {
      UsageJournal j(path);
      (void)j.finished_count();
      for (uint8_t seed : {1, 2}) {
        (void)j.started_attempt(alem::fuzz::fixed_bytes(seed));
        (void)j.finished(alem::fuzz::fixed_bytes(seed));
      }
      if (j.finished(mine.request_id)) return 0;  // the input already finished it
      j.start(mine.request_id, 3);
      j.finish(mine);
    }
    UsageJournal again(path);
    const auto back = again.finished(mine.request_id);
    if (!back || back->sealed_chunks != mine.sealed_chunks || back->usage.prompt_tokens != 12 ||
        again.started_attempt(mine.request_id) < 3 || again.replay().truncated_bytes != 0) {
      alem::fuzz::unexpected("usage_journal", "appended records did not read back after reopening");
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("usage_journal", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("usage_journal", e.what());
  }
  return 0;
}
