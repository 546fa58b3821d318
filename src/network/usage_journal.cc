// The usage journal (format and promises in usage_journal.h): framed, CRC'd, fdatasync'd
// appends, replay with torn-tail recovery, and lookups that read finish records back from disk
// so the sealed chunks of finished requests do not have to stay in memory.
#include "network/usage_journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "network/protocol.h"
#include "network/sealing.h"

namespace alem::network {
namespace {

constexpr char kMagic[8] = {'a', 'l', 'e', 'm', '-', 'u', 'j', '1'};
constexpr size_t kHeaderBytes = 8;  // u32 length + u32 crc
constexpr uint32_t kMaxPayload = 64u << 20;
constexpr uint8_t kTypeStart = 1;
constexpr uint8_t kTypeFinish = 2;

std::string errno_text() {
  return std::strerror(errno);
}

uint64_t now_unix_ms() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::system_clock::now().time_since_epoch())
                                   .count());
}

template <typename T>
void put(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

// Bounds-checked little-endian reader over a payload.
class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}
  template <typename T>
  T get() {
    ALEM_CHECK(pos_ + sizeof(T) <= data_.size(), "usage journal record is shorter than its fields");
    T value = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      value |= static_cast<T>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
    }
    pos_ += sizeof(T);
    return value;
  }
  std::string bytes(size_t n) {
    ALEM_CHECK(pos_ + n <= data_.size(), "usage journal record is shorter than its fields");
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  bool done() const { return pos_ == data_.size(); }

 private:
  const std::string& data_;
  size_t pos_ = 0;
};

FinishRecord decode_finish(const std::string& payload) {
  Reader r(payload);
  ALEM_CHECK(r.get<uint8_t>() == kTypeFinish, "not a finish record");
  FinishRecord rec;
  rec.request_id = r.bytes(kRequestIdBytes);
  rec.unix_ms = r.get<uint64_t>();
  rec.usage.prompt_tokens = r.get<uint32_t>();
  rec.usage.cached_tokens = r.get<uint32_t>();
  rec.usage.completion_tokens = r.get<uint32_t>();
  rec.usage.reasoning_tokens = r.get<uint32_t>();
  rec.queue_ms = r.get<uint64_t>();
  rec.first_token_ms = r.get<uint64_t>();
  rec.total_ms = r.get<uint64_t>();
  rec.finish_reason = r.bytes(r.get<uint16_t>());
  const uint32_t chunks = r.get<uint32_t>();
  for (uint32_t i = 0; i < chunks; ++i) rec.sealed_chunks.push_back(r.bytes(r.get<uint32_t>()));
  ALEM_CHECK(r.done(), "usage journal finish record has trailing bytes");
  return rec;
}

bool pread_all(int fd, void* buf, size_t n, uint64_t offset) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

uint32_t load_u32(const char* p) {
  return uint32_t(uint8_t(p[0])) | uint32_t(uint8_t(p[1])) << 8 | uint32_t(uint8_t(p[2])) << 16 |
         uint32_t(uint8_t(p[3])) << 24;
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

uint32_t crc32_ieee(const void* data, size_t size) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xFFFFFFFFu;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

UsageJournal::UsageJournal(const std::string& path, std::chrono::milliseconds lock_wait)
    : path_(path) {
  ALEM_CHECK(!path.empty(), "the usage journal path is empty");
  bool created = false;
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0 && errno == ENOENT) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    created = fd_ >= 0;
    if (fd_ < 0 && errno == EEXIST) fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  }
  ALEM_CHECK(fd_ >= 0, "cannot open the usage journal " + path + ": " + errno_text());
  // A restarted job may find its killed predecessor's last process still holding the lock for
  // a moment: wait for it up to `lock_wait`, then refuse (two live providers on one journal).
  const auto lock_deadline = std::chrono::steady_clock::now() + lock_wait;
  bool announced = false;
  int locked = ::flock(fd_, LOCK_EX | LOCK_NB);
  while (locked != 0 && errno == EWOULDBLOCK && std::chrono::steady_clock::now() < lock_deadline) {
    if (!announced) {
      log_warn("usage journal locked by another process; waiting for it to exit",
               {{"path", path}, {"wait_ms", std::to_string(lock_wait.count())}});
      announced = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    locked = ::flock(fd_, LOCK_EX | LOCK_NB);
  }
  if (locked != 0) {
    const std::string why = errno == EWOULDBLOCK ? "another process holds it open" : errno_text();
    ::close(fd_);
    fd_ = -1;
    ALEM_FAIL("cannot lock the usage journal " + path + ": " + why);
  }
  try {
    struct stat st {};
    ALEM_CHECK(::fstat(fd_, &st) == 0, "cannot stat the usage journal " + path);
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < sizeof kMagic) {
      // New, or a crash while the header itself was written: (re)write the header.
      if (file_size > 0) {
        log_warn("usage journal shorter than its header; starting it again",
                 {{"path", path}, {"bytes", std::to_string(file_size)}});
        ALEM_CHECK(::ftruncate(fd_, 0) == 0, "cannot truncate the usage journal " + path);
      }
      ALEM_CHECK(::pwrite(fd_, kMagic, sizeof kMagic, 0) == static_cast<ssize_t>(sizeof kMagic),
                 "cannot write the usage journal header to " + path + ": " + errno_text());
      ALEM_CHECK(::fdatasync(fd_) == 0, "fdatasync of the usage journal failed: " + errno_text());
      size_ = sizeof kMagic;
      if (created || file_size == 0) {
        const int dir = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir >= 0) {
          ::fsync(dir);
          ::close(dir);
        }
      }
      return;
    }
    std::string data(file_size, '\0');
    ALEM_CHECK(pread_all(fd_, data.data(), data.size(), 0),
               "cannot read the usage journal " + path + ": " + errno_text());
    ALEM_CHECK(std::memcmp(data.data(), kMagic, sizeof kMagic) == 0,
               "the file " + path + " is not a usage journal (it does not start with alem-uj1)");
    uint64_t pos = sizeof kMagic;
    while (pos < file_size) {
      const uint64_t left = file_size - pos;
      bool torn = false;
      if (left < kHeaderBytes) {
        torn = true;
      } else {
        const uint32_t length = load_u32(data.data() + pos);
        const uint32_t crc = load_u32(data.data() + pos + 4);
        // A crash can leave a zero-filled tail (the file grew, the data never landed).
        const bool zero_tail = std::all_of(data.begin() + static_cast<std::ptrdiff_t>(pos),
                                           data.end(), [](char c) { return c == 0; });
        ALEM_CHECK(zero_tail || (length > 0 && length <= kMaxPayload),
                   "usage journal " + path + " is damaged at byte " + std::to_string(pos) +
                       ": record length " + std::to_string(length) + " is impossible");
        if (zero_tail || kHeaderBytes + length > left) {
          torn = true;
        } else {
          const char* payload = data.data() + pos + kHeaderBytes;
          const bool last = kHeaderBytes + length == left;
          if (crc32_ieee(payload, length) != crc) {
            ALEM_CHECK(last, "usage journal " + path + " is damaged at byte " +
                                 std::to_string(pos) +
                                 " (checksum mismatch with records after it); refusing to "
                                 "guess: restore it or move it away");
            torn = true;
          } else {
            apply(std::string(payload, length), pos);
            ++replay_.records;
            pos += kHeaderBytes + length;
            continue;
          }
        }
      }
      if (torn) {
        replay_.truncated_bytes = file_size - pos;
        log_warn("usage journal: torn last record cut off (a crash while it was written)",
                 {{"path", path},
                  {"offset", std::to_string(pos)},
                  {"bytes", std::to_string(file_size - pos)}});
        ALEM_CHECK(::ftruncate(fd_, static_cast<off_t>(pos)) == 0,
                   "cannot truncate the usage journal " + path + ": " + errno_text());
        ALEM_CHECK(::fdatasync(fd_) == 0, "fdatasync of the usage journal failed");
        break;
      }
    }
    size_ = pos;
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

UsageJournal::~UsageJournal() {
  if (fd_ >= 0) ::close(fd_);
}

void UsageJournal::apply(const std::string& payload, uint64_t offset) {
  Reader r(payload);
  const uint8_t type = r.get<uint8_t>();
  const std::string id = r.bytes(kRequestIdBytes);
  if (type == kTypeStart) {
    const uint32_t attempt = r.get<uint32_t>();
    uint32_t& seen = started_[id];
    if (attempt > seen) seen = attempt;
    ++replay_.starts;
  } else if (type == kTypeFinish) {
    ALEM_CHECK(!finished_.count(id), "usage journal " + path_ +
                                         " holds two finish records for "
                                         "request " +
                                         hex(id) + " at byte " + std::to_string(offset));
    finished_[id] = offset;
    ++replay_.finishes;
  } else {
    ALEM_FAIL("usage journal " + path_ + ": unknown record type " + std::to_string(type) +
              " at byte " + std::to_string(offset));
  }
}

void UsageJournal::append(const std::string& payload) {
  ALEM_CHECK(payload.size() <= kMaxPayload,
             "usage journal record too large (" + std::to_string(payload.size()) + " bytes)");
  std::string record;
  record.reserve(kHeaderBytes + payload.size());
  put<uint32_t>(record, static_cast<uint32_t>(payload.size()));
  put<uint32_t>(record, crc32_ieee(payload.data(), payload.size()));
  record += payload;
  size_t written = 0;
  while (written < record.size()) {
    const ssize_t n = ::pwrite(fd_, record.data() + written, record.size() - written,
                               static_cast<off_t>(size_ + written));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string why = errno_text();
      // Leave no half record behind for the next append to build on.
      if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
        log_error("usage journal: cannot cut off a failed append", {{"path", path_}});
      }
      ALEM_FAIL("cannot append to the usage journal " + path_ + ": " + why);
    }
    written += static_cast<size_t>(n);
  }
  ALEM_CHECK(::fdatasync(fd_) == 0, "fdatasync of the usage journal failed: " + errno_text());
  size_ += record.size();
}

void UsageJournal::start(const std::string& request_id, uint32_t attempt) {
  ALEM_CHECK(request_id.size() == kRequestIdBytes, "a request id is 32 bytes");
  std::string payload;
  payload.push_back(static_cast<char>(kTypeStart));
  payload += request_id;
  put<uint32_t>(payload, attempt);
  put<uint64_t>(payload, now_unix_ms());
  std::lock_guard<std::mutex> lock(mutex_);
  append(payload);
  uint32_t& seen = started_[request_id];
  if (attempt > seen) seen = attempt;
}

void UsageJournal::finish(FinishRecord rec) {
  ALEM_CHECK(rec.request_id.size() == kRequestIdBytes, "a request id is 32 bytes");
  ALEM_CHECK(rec.finish_reason.size() < 65536, "finish reason too long");
  rec.unix_ms = now_unix_ms();
  std::string payload;
  payload.push_back(static_cast<char>(kTypeFinish));
  payload += rec.request_id;
  put<uint64_t>(payload, rec.unix_ms);
  put<uint32_t>(payload, rec.usage.prompt_tokens);
  put<uint32_t>(payload, rec.usage.cached_tokens);
  put<uint32_t>(payload, rec.usage.completion_tokens);
  put<uint32_t>(payload, rec.usage.reasoning_tokens);
  put<uint64_t>(payload, rec.queue_ms);
  put<uint64_t>(payload, rec.first_token_ms);
  put<uint64_t>(payload, rec.total_ms);
  put<uint16_t>(payload, static_cast<uint16_t>(rec.finish_reason.size()));
  payload += rec.finish_reason;
  put<uint32_t>(payload, static_cast<uint32_t>(rec.sealed_chunks.size()));
  for (const std::string& chunk : rec.sealed_chunks) {
    put<uint32_t>(payload, static_cast<uint32_t>(chunk.size()));
    payload += chunk;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ALEM_CHECK(!finished_.count(rec.request_id), "request " + hex(rec.request_id) +
                                                   " is already finished in the usage journal; "
                                                   "a request is billed once");
  const uint64_t offset = size_;
  append(payload);
  finished_[rec.request_id] = offset;
}

std::optional<FinishRecord> UsageJournal::finished(const std::string& request_id) const {
  uint64_t offset = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = finished_.find(request_id);
    if (it == finished_.end()) return std::nullopt;
    offset = it->second;
  }
  char header[kHeaderBytes];
  ALEM_CHECK(pread_all(fd_, header, sizeof header, offset),
             "cannot read the usage journal " + path_ + ": " + errno_text());
  const uint32_t length = load_u32(header);
  std::string payload(length, '\0');
  ALEM_CHECK(pread_all(fd_, payload.data(), length, offset + kHeaderBytes),
             "cannot read the usage journal " + path_ + ": " + errno_text());
  ALEM_CHECK(crc32_ieee(payload.data(), payload.size()) == load_u32(header + 4),
             "usage journal " + path_ + " changed under us at byte " + std::to_string(offset));
  return decode_finish(payload);
}

uint32_t UsageJournal::started_attempt(const std::string& request_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = started_.find(request_id);
  return it == started_.end() ? 0 : it->second;
}

size_t UsageJournal::finished_count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_.size();
}

}  // namespace alem::network
