// The usage journal (network/usage_journal.h): records survive reopening, a crash in the middle
// of the last write (simulated by cutting the file at every byte of its last record) loses only
// that record, damage in the middle is an error, a request cannot be finished twice, and the
// file holds no plaintext. The CRC is checked against the standard CRC-32 check value.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "core/error.h"
#include "network/usage_journal.h"

namespace alem::network {
namespace {

std::string id(uint8_t fill) {
  return std::string(32, static_cast<char>(fill));
}

FinishRecord make_finish(uint8_t fill, int chunks) {
  FinishRecord rec;
  rec.request_id = id(fill);
  rec.usage = {11, 2, 7, 0};
  rec.finish_reason = "stop";
  rec.queue_ms = 3;
  rec.first_token_ms = 40;
  rec.total_ms = 90;
  for (int i = 0; i < chunks; ++i) {
    rec.sealed_chunks.push_back("sealed-chunk-" + std::to_string(i) + std::string(i, '\0'));
  }
  return rec;
}

class Journal : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("alem-journal-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "usage.journal").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string read_file() const {
    std::ifstream in(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  void write_file(const std::string& bytes) const {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  }
  std::filesystem::path dir_;
  std::string path_;
};

TEST(JournalCrc, MatchesTheStandardCheckValue) {
  EXPECT_EQ(crc32_ieee("123456789", 9), 0xCBF43926u);
  EXPECT_EQ(crc32_ieee("", 0), 0u);
}

TEST_F(Journal, RecordsSurviveReopening) {
  {
    UsageJournal j(path_);
    EXPECT_EQ(j.replay().records, 0u);
    j.start(id(1), 1);
    j.start(id(2), 1);
    j.finish(make_finish(1, 3));
    j.start(id(2), 2);
  }
  UsageJournal j(path_);
  EXPECT_EQ(j.replay().records, 4u);
  EXPECT_EQ(j.replay().starts, 3u);
  EXPECT_EQ(j.replay().finishes, 1u);
  EXPECT_EQ(j.replay().truncated_bytes, 0u);
  EXPECT_EQ(j.started_attempt(id(1)), 1u);
  EXPECT_EQ(j.started_attempt(id(2)), 2u);
  EXPECT_EQ(j.started_attempt(id(3)), 0u);
  auto rec = j.finished(id(1));
  ASSERT_TRUE(rec.has_value());
  const FinishRecord expected = make_finish(1, 3);
  EXPECT_EQ(rec->usage.prompt_tokens, 11u);
  EXPECT_EQ(rec->usage.cached_tokens, 2u);
  EXPECT_EQ(rec->usage.completion_tokens, 7u);
  EXPECT_EQ(rec->finish_reason, "stop");
  EXPECT_EQ(rec->first_token_ms, 40u);
  EXPECT_EQ(rec->total_ms, 90u);
  EXPECT_GT(rec->unix_ms, 0u);
  EXPECT_EQ(rec->sealed_chunks, expected.sealed_chunks);
  EXPECT_FALSE(j.finished(id(2)).has_value());
}

TEST_F(Journal, DoubleFinishIsRefusedAlsoAfterReopening) {
  {
    UsageJournal j(path_);
    j.start(id(5), 1);
    j.finish(make_finish(5, 1));
    EXPECT_THROW(j.finish(make_finish(5, 1)), Error);
  }
  UsageJournal j(path_);
  EXPECT_THROW(j.finish(make_finish(5, 2)), Error);
  EXPECT_EQ(j.finished_count(), 1u);
}

TEST_F(Journal, TornLastRecordIsCutAtEveryByteOffset) {
  size_t before_last = 0;
  {
    UsageJournal j(path_);
    j.start(id(1), 1);
    j.finish(make_finish(1, 2));
    j.start(id(2), 1);
  }
  before_last = std::filesystem::file_size(path_);
  {
    UsageJournal j(path_);
    j.finish(make_finish(2, 4));
  }
  const std::string full = read_file();
  ASSERT_GT(full.size(), before_last);
  for (size_t cut = before_last; cut < full.size(); ++cut) {
    write_file(full.substr(0, cut));
    UsageJournal j(path_);
    EXPECT_EQ(j.replay().records, 3u) << "cut at " << cut;
    EXPECT_EQ(j.replay().truncated_bytes, cut - before_last) << "cut at " << cut;
    EXPECT_TRUE(j.finished(id(1)).has_value());
    EXPECT_FALSE(j.finished(id(2)).has_value()) << "cut at " << cut;
    EXPECT_EQ(j.started_attempt(id(2)), 1u);
    EXPECT_EQ(std::filesystem::file_size(path_), before_last);
    // The journal goes on: the request can be finished now, once.
    j.finish(make_finish(2, 1));
    EXPECT_THROW(j.finish(make_finish(2, 1)), Error);
  }
  // A header cut short (crash on the very first write) starts the journal again.
  write_file(full.substr(0, 5));
  UsageJournal fresh(path_);
  EXPECT_EQ(fresh.replay().records, 0u);
}

TEST_F(Journal, ZeroFilledTailIsTornNotDamage) {
  {
    UsageJournal j(path_);
    j.start(id(1), 1);
  }
  write_file(read_file() + std::string(37, '\0'));
  UsageJournal j(path_);
  EXPECT_EQ(j.replay().records, 1u);
  EXPECT_EQ(j.replay().truncated_bytes, 37u);
}

TEST_F(Journal, DamageInTheMiddleIsAClearError) {
  {
    UsageJournal j(path_);
    j.start(id(1), 1);
    j.finish(make_finish(1, 2));
    j.start(id(2), 1);
  }
  std::string bytes = read_file();
  std::string flipped = bytes;
  flipped[8 + 8 + 3] ^= 0x10;  // inside the first record's payload
  write_file(flipped);
  try {
    UsageJournal j(path_);
    FAIL() << "opened a journal damaged in the middle";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("damaged at byte 8"), std::string::npos) << e.what();
  }
  // An impossible length in the middle is damage too, not a torn tail.
  std::string bad_length = bytes;
  bad_length[8 + 3] = static_cast<char>(0x7f);
  write_file(bad_length);
  EXPECT_THROW(UsageJournal j(path_), Error);
  // Another file format is refused.
  write_file("not a journal at all");
  EXPECT_THROW(UsageJournal j(path_), Error);
}

TEST_F(Journal, SecondOpenerIsRefused) {
  UsageJournal first(path_);
  try {
    UsageJournal second(path_);
    FAIL() << "two journals on one file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("another process"), std::string::npos) << e.what();
  }
}

// A restarted provider may find its killed predecessor's last process still holding the lock
// for a moment: with a lock wait it opens once that process lets go; without, or past the wait,
// a second live opener is still refused.
TEST_F(Journal, SecondOpenerWaitsForTheLockWithinItsWait) {
  auto first = std::make_unique<UsageJournal>(path_);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(UsageJournal j(path_, std::chrono::milliseconds(300)), Error);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(300));
  std::thread closer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    first.reset();
  });
  UsageJournal second(path_, std::chrono::seconds(20));
  closer.join();
  EXPECT_EQ(second.finished_count(), 0u);
}

TEST_F(Journal, HoldsOnlyWhatItIsGiven) {
  // The journal stores sealed chunks as given; the provider never passes plaintext. Here a
  // marker string stands for a chunk, and nothing else of a request reaches the file.
  {
    UsageJournal j(path_);
    j.start(id(9), 1);
    FinishRecord rec = make_finish(9, 0);
    rec.sealed_chunks = {"CIPHERTEXT-ONLY"};
    j.finish(rec);
  }
  const std::string bytes = read_file();
  EXPECT_EQ(bytes.substr(0, 8), "alem-uj1");
  EXPECT_NE(bytes.find("CIPHERTEXT-ONLY"), std::string::npos);
  EXPECT_EQ(bytes.find("prompt"), std::string::npos);
}

}  // namespace
}  // namespace alem::network
