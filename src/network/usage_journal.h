// The usage journal: the provider's memory of which requests it started and finished, kept on
// disk so that billing is exactly-once across crashes and Slurm requeues. Before a request is
// computed its start is journaled; before its ResultFinal goes out, its finish (usage, finish
// reason, timing and the SEALED answer chunks) is journaled. A request that is delivered again
// after its finish was journaled is answered from the journal: same chunks, same usage, no
// compute and no second billing record.
//
// File format (little-endian), append-only:
//   header   "alem-uj1" (8 bytes)
//   record   u32 payload_length, u32 CRC-32 (IEEE) of the payload, payload
//   payload  u8 type (1 = start, 2 = finish), 32-byte request id, then
//     start:  u32 attempt, u64 unix_ms
//     finish: u64 unix_ms, u32 prompt, cached, completion, reasoning tokens,
//             u64 queue_ms, first_token_ms, total_ms, u16 length + finish reason,
//             u32 chunk count, then per chunk u32 length + sealed chunk bytes
// Every record is written with one write() and made durable with fdatasync() before the call
// returns; the folder is fsync'd when the file is created. Opening replays the file: a torn last
// record (a crash in the middle of a write) is cut off with a warning; a damaged record with
// valid data after it is a clear error (the journal is not silently shortened). The journal
// never holds plaintext: the chunks are sealed to the client's key before they get here.
// An exclusive flock() keeps two processes from appending to the same journal.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace alem::network {

struct JournalUsage {
  uint32_t prompt_tokens = 0;
  uint32_t cached_tokens = 0;
  uint32_t completion_tokens = 0;
  uint32_t reasoning_tokens = 0;
};

struct FinishRecord {
  std::string request_id;  // 32 bytes
  JournalUsage usage;
  std::string finish_reason;
  uint64_t queue_ms = 0;
  uint64_t first_token_ms = 0;
  uint64_t total_ms = 0;
  uint64_t unix_ms = 0;                    // when it was journaled (set by finish())
  std::vector<std::string> sealed_chunks;  // serialized SealedEnvelopes, in sequence order
};

struct JournalReplay {
  uint64_t records = 0;
  uint64_t starts = 0;
  uint64_t finishes = 0;
  uint64_t truncated_bytes = 0;  // torn tail cut off on open (0 after a clean shutdown)
};

// How long `alem serve` waits for the journal's lock at start-up (see UsageJournal's constructor).
inline constexpr std::chrono::milliseconds kJournalLockWaitOnStart{30000};

class UsageJournal {
 public:
  // Opens `path`, creating it (and fsync'ing its folder) when missing, and replays it. Throws
  // alem::Error for a file of another format, a damaged record in the middle, or a journal that
  // another process still holds open after `lock_wait`. The wait is for a restart: the killed
  // job's last process may hold the lock for a moment after the job was ended (alem serve waits
  // kJournalLockWaitOnStart); a second live provider on the file still fails.
  explicit UsageJournal(const std::string& path,
                        std::chrono::milliseconds lock_wait = std::chrono::milliseconds(0));
  ~UsageJournal();
  UsageJournal(const UsageJournal&) = delete;
  UsageJournal& operator=(const UsageJournal&) = delete;

  // Journals the start of `attempt` of a request (durable when it returns). Thread-safe.
  void start(const std::string& request_id, uint32_t attempt);
  // Journals a finish (durable when it returns). Throws alem::Error when the request already
  // has a finish record: a request is billed once. Thread-safe.
  void finish(FinishRecord record);

  // The finish record of a request, read back from the file; nullopt when not finished.
  std::optional<FinishRecord> finished(const std::string& request_id) const;
  // The highest attempt journaled as started (0 when never started).
  uint32_t started_attempt(const std::string& request_id) const;
  size_t finished_count() const;
  const JournalReplay& replay() const { return replay_; }
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& payload);
  void apply(const std::string& payload, uint64_t offset);

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  JournalReplay replay_;
  mutable std::mutex mutex_;
  std::map<std::string, uint32_t> started_;   // request id -> highest attempt
  std::map<std::string, uint64_t> finished_;  // request id -> offset of its finish payload
};

// CRC-32 (IEEE 802.3, as zlib's crc32) of `size` bytes.
uint32_t crc32_ieee(const void* data, size_t size);

}  // namespace alem::network
