// Byte-level encoding shared by the engine's messages between ranks: the step messages a
// replica leader broadcasts to its followers (serving_engine.cc) and the requests and events the
// data-parallel router exchanges with other replicas' leaders (dp_router.cc). Little-endian
// native layout (every rank of a job runs the same binary on the same architecture); readers
// check every length and throw alem::Error on a truncated or malformed message.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"
#include "engine/sampling_params.h"

namespace alem {

class ByteWriter {
 public:
  template <typename T>
  void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
  void put_bytes(const std::vector<uint8_t>& b) {
    put<uint64_t>(b.size());
    bytes.insert(bytes.end(), b.begin(), b.end());
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void put_ids(const std::vector<int32_t>& ids) {
    put<uint32_t>(static_cast<uint32_t>(ids.size()));
    for (int32_t id : ids) put(id);
  }
  std::vector<uint8_t> bytes;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T get() {
    ALEM_CHECK(pos_ + sizeof(T) <= size_, "engine message is truncated");
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::pair<const uint8_t*, size_t> get_bytes() {
    const uint64_t n = get<uint64_t>();
    ALEM_CHECK(n <= size_ - pos_, "engine message is truncated");
    const uint8_t* at = data_ + pos_;
    pos_ += n;
    return {at, static_cast<size_t>(n)};
  }
  std::string get_string() {
    auto [at, n] = get_bytes();
    return std::string(reinterpret_cast<const char*>(at), n);
  }
  std::vector<int32_t> get_ids() {
    const uint32_t n = get<uint32_t>();
    ALEM_CHECK(n <= (size_ - pos_) / sizeof(int32_t), "engine message is truncated");
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = get<int32_t>();
    return ids;
  }
  bool done() const { return pos_ == size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

void put_params(ByteWriter& w, const SamplingParams& p);
SamplingParams get_params(ByteReader& r);

}  // namespace alem
