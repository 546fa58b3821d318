// Fault injection for the reference network simulator: which faults to inject and how often,
// parsed from a spec like "drop=0.05,dup=0.05,corrupt=0.02,delay_ms=50", drawn from one seeded
// generator so a run can be repeated. A value below 1 (or with a decimal point) is a
// probability per chance; a whole number >= 1 is a count: the fault is injected at that many
// chances (each chance taken with probability 1/2 until the count is spent).
//
// Faults and where each gets its chance:
//   drop       a ResultChunk arrives: the simulator drops that stream (mid-answer)
//   dup        a lease is sent: it is sent twice (same request id, same attempt)
//   delay_ms   every lease waits a uniform 0..delay_ms before it is sent (a number, not a chance)
//   corrupt    a lease is sent: one byte of the sealed ciphertext is flipped (expect TAMPERED)
//   wrongkey   a lease is sent: the request is sealed to another key (expect WRONG_RECIPIENT)
//   replay     a lease is sent: an envelope already delivered for another request is sent in
//              its place (expect REPLAYED, or TAMPERED since the request id is bound)
//   malformed  a lease is sent: the sealed request is random bytes, not a protobuf message
//              (expect BAD_ENVELOPE)
//   oversize   a lease is sent: the sealed request is oversize_bytes long (expect TOO_LARGE or
//              BAD_ENVELOPE, or the provider's gRPC size limit closing the stream)
//   garbage    a lease is sent: first, bytes that are no NetworkMessage go down the stream
//              (the provider must drop that stream cleanly, reconnect, and keep serving)
// After an expected refusal the simulator sends the request again intact; it must complete.
#pragma once

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace alem::netsim {

enum class Fault { kDrop, kDup, kCorrupt, kWrongKey, kReplay, kMalformed, kOversize, kGarbage };
inline constexpr int kFaultKinds = 8;
const char* fault_name(Fault fault);

struct FaultRate {
  double probability = 0;  // per chance, when count == 0
  uint64_t count = 0;      // injections wanted, when > 0
};

struct FaultSpec {
  std::map<Fault, FaultRate> rates;
  uint32_t delay_ms = 0;
  uint64_t oversize_bytes = 6u << 20;  // above gRPC's default 4 MiB receive limit
  bool empty() const;
};

// Parses "name=value,..." (names above, plus delay_ms and oversize_bytes). Throws alem::Error
// naming the bad entry.
FaultSpec parse_fault_spec(const std::string& spec);

class FaultInjector {
 public:
  FaultInjector(FaultSpec spec, uint64_t seed);

  // Whether `fault` strikes at this chance; counts the injection when it does.
  bool strike(Fault fault);
  // A delay for the next lease, 0..delay_ms.
  uint32_t next_delay_ms();
  // Uniform 64-bit draw for choosing bytes and positions.
  uint64_t draw() { return rng_(); }
  uint64_t oversize_bytes() const { return spec_.oversize_bytes; }

  uint64_t injected(Fault fault) const { return injected_[static_cast<int>(fault)]; }

 private:
  FaultSpec spec_;
  std::mt19937_64 rng_;
  uint64_t injected_[kFaultKinds] = {};
};

}  // namespace alem::netsim
