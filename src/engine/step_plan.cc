// Byte serialisation of StepPlan for the leader -> replica broadcast. Little-endian, fixed-width
// fields; deserialisation checks every length against the buffer and throws on a short buffer.
#include "engine/step_plan.h"

#include <cstring>

#include "core/error.h"

namespace alem {
namespace {

template <typename T>
void put(std::vector<uint8_t>& out, const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), p, p + sizeof(T));
}

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T get() {
    ALEM_CHECK(pos_ + sizeof(T) <= size_, "step plan truncated at byte " + std::to_string(pos_));
    T value;
    std::memcpy(&value, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  void get_array(int32_t* out, size_t count) {
    ALEM_CHECK(count <= (size_ - pos_) / sizeof(int32_t), "step plan array exceeds its buffer");
    std::memcpy(out, data_ + pos_, count * sizeof(int32_t));
    pos_ += count * sizeof(int32_t);
  }
  bool done() const { return pos_ == size_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> serialize_step_plan(const StepPlan& plan) {
  std::vector<uint8_t> out;
  out.reserve(32 + plan.tokens.size() * 4 + plan.sequences.size() * 64);
  put(out, plan.step_id);
  put(out, static_cast<uint32_t>(plan.tokens.size()));
  for (int32_t t : plan.tokens) put(out, t);
  put(out, static_cast<uint32_t>(plan.sequences.size()));
  for (const StepSequence& s : plan.sequences) {
    put(out, s.request_id);
    put(out, s.num_tokens);
    put(out, s.start_pos);
    put(out, static_cast<uint8_t>(s.sample ? 1 : 0));
    put(out, static_cast<uint32_t>(s.block_table.size()));
    for (int32_t b : s.block_table) put(out, b);
  }
  put(out, static_cast<uint32_t>(plan.wipe_blocks.size()));
  for (int32_t b : plan.wipe_blocks) put(out, b);
  return out;
}

StepPlan deserialize_step_plan(const uint8_t* data, size_t size) {
  Reader r(data, size);
  StepPlan plan;
  plan.step_id = r.get<int64_t>();
  plan.tokens.resize(r.get<uint32_t>());
  r.get_array(plan.tokens.data(), plan.tokens.size());
  plan.sequences.resize(r.get<uint32_t>());
  int64_t covered = 0;
  for (StepSequence& s : plan.sequences) {
    s.request_id = r.get<int64_t>();
    s.num_tokens = r.get<int32_t>();
    s.start_pos = r.get<int32_t>();
    s.sample = r.get<uint8_t>() != 0;
    s.block_table.resize(r.get<uint32_t>());
    r.get_array(s.block_table.data(), s.block_table.size());
    ALEM_CHECK(s.num_tokens >= 0 && s.start_pos >= 0, "step plan has a negative length");
    covered += s.num_tokens;
  }
  plan.wipe_blocks.resize(r.get<uint32_t>());
  r.get_array(plan.wipe_blocks.data(), plan.wipe_blocks.size());
  ALEM_CHECK(r.done(), "step plan has trailing bytes");
  ALEM_CHECK(covered == static_cast<int64_t>(plan.tokens.size()),
             "step plan sequences cover " + std::to_string(covered) + " tokens, plan has " +
                 std::to_string(plan.tokens.size()));
  return plan;
}

}  // namespace alem
