// Fault spec parsing and the seeded fault draws of the network simulator (see netsim_faults.h).
#include "network/netsim_faults.h"

#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace alem::netsim {

namespace {

struct NamedFault {
  const char* name;
  Fault fault;
};
constexpr NamedFault kNames[] = {
    {"drop", Fault::kDrop},         {"dup", Fault::kDup},         {"corrupt", Fault::kCorrupt},
    {"wrongkey", Fault::kWrongKey}, {"replay", Fault::kReplay},   {"malformed", Fault::kMalformed},
    {"oversize", Fault::kOversize}, {"garbage", Fault::kGarbage},
};

double parse_number(const std::string& entry, const std::string& value) {
  ALEM_CHECK(!value.empty(), "fault spec entry '" + entry + "' has no value");
  char* end = nullptr;
  double v = std::strtod(value.c_str(), &end);
  ALEM_CHECK(end && *end == '\0' && v >= 0,
             "fault spec entry '" + entry + "': '" + value + "' is not a number >= 0");
  return v;
}

}  // namespace

const char* fault_name(Fault fault) {
  for (const auto& n : kNames) {
    if (n.fault == fault) return n.name;
  }
  return "unknown";
}

bool FaultSpec::empty() const {
  for (const auto& [f, r] : rates) {
    if (r.probability > 0 || r.count > 0) return false;
  }
  return delay_ms == 0;
}

FaultSpec parse_fault_spec(const std::string& spec) {
  FaultSpec out;
  std::stringstream ss(spec);
  std::string entry;
  while (std::getline(ss, entry, ',')) {
    if (entry.find_first_not_of(" \t") == std::string::npos) continue;
    auto eq = entry.find('=');
    ALEM_CHECK(eq != std::string::npos, "fault spec entry '" + entry + "' is not name=value");
    std::string name = entry.substr(0, eq);
    std::string value = entry.substr(eq + 1);
    double v = parse_number(entry, value);
    if (name == "delay_ms") {
      ALEM_CHECK(v <= 60000, "delay_ms must be at most 60000");
      out.delay_ms = static_cast<uint32_t>(v);
      continue;
    }
    if (name == "oversize_bytes") {
      ALEM_CHECK(v >= 1024 && v <= (64u << 20), "oversize_bytes must be 1 KiB .. 64 MiB");
      out.oversize_bytes = static_cast<uint64_t>(v);
      continue;
    }
    bool known = false;
    for (const auto& n : kNames) {
      if (name != n.name) continue;
      known = true;
      FaultRate rate;
      bool is_count = value.find('.') == std::string::npos && v >= 1;
      if (is_count) {
        rate.count = static_cast<uint64_t>(v);
      } else {
        ALEM_CHECK(v <= 1, "fault spec entry '" + entry + "': a probability is at most 1");
        rate.probability = v;
      }
      out.rates[n.fault] = rate;
    }
    ALEM_CHECK(known, "unknown fault '" + name +
                          "' (known: drop, dup, corrupt, wrongkey, replay, malformed, oversize, "
                          "garbage, delay_ms, oversize_bytes)");
  }
  return out;
}

FaultInjector::FaultInjector(FaultSpec spec, uint64_t seed) : spec_(std::move(spec)), rng_(seed) {}

bool FaultInjector::strike(Fault fault) {
  auto it = spec_.rates.find(fault);
  if (it == spec_.rates.end()) return false;
  FaultRate& rate = it->second;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  bool hit = false;
  if (rate.count > 0) {
    if (injected(fault) < rate.count) hit = u(rng_) < 0.5;
  } else if (rate.probability > 0) {
    hit = u(rng_) < rate.probability;
  }
  if (hit) ++injected_[static_cast<int>(fault)];
  return hit;
}

uint32_t FaultInjector::next_delay_ms() {
  if (spec_.delay_ms == 0) return 0;
  return static_cast<uint32_t>(rng_() % (spec_.delay_ms + 1));
}

}  // namespace alem::netsim
