// The simulator's report: the queue's counts, failures with reasons, rates and faults, and the
// verdict a clean run needs (see netsim_server.h).
#include "network/netsim_server.h"
#include "network/netsim_server_impl.h"
#include "network/protocol.h"

namespace alem::netsim {

using nlohmann::json;

namespace {

uint64_t unexpected_of(const json& fault_entry) {
  uint64_t n = 0;
  if (fault_entry.contains("unexpected")) {
    for (const auto& [what, count] : fault_entry["unexpected"].items()) n += count.get<uint64_t>();
  }
  return n;
}

}  // namespace

json QueueServer::report() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  const QueueStats& s = m.queue.stats();
  json r;
  uint64_t total = m.load ? m.load->size() : 0;
  uint64_t lost = m.queue.unfinished();
  double wall_s =
      m.load_end_ms > m.load_start_ms ? (m.load_end_ms - m.load_start_ms) / 1000.0 : 0.0;
  r["requests"] = total;
  r["submitted"] = s.submitted;
  r["not_submitted"] = total - s.submitted;
  r["completed"] = s.completed;
  r["verified"] = m.verified;
  r["redelivered"] = s.redelivered;
  r["failed"] = s.failed;
  json failures = json::array();
  for (const auto& [id, reason] : m.queue.failures()) {
    failures.push_back({{"request_id", network::hex(id)}, {"reason", reason}});
  }
  r["failures"] = failures;
  r["lost"] = lost;
  r["billed_twice"] = s.billed_twice;
  r["journal_duplicates"] = s.journal_duplicates;
  r["wall_s"] = wall_s;
  r["completion_tokens"] = m.completion_tokens;
  r["requests_per_s"] = wall_s > 0 ? s.completed / wall_s : 0.0;
  r["tokens_per_s"] = wall_s > 0 ? m.completion_tokens / wall_s : 0.0;
  r["deliveries"] = s.deliveries;
  r["expired"] = s.expired;
  r["returned_by_dropped_streams"] = s.dropped;
  r["released"] = s.released;
  r["resent"] = s.resent;
  r["stale_messages"] = s.stale_messages;
  r["duplicate_chunks"] = s.duplicate_chunks;
  r["credit_violations"] = s.credit_violations;
  r["registrations"] = m.registrations;
  json refusals = json::object();
  for (const auto& [reason, n] : m.refusals) refusals[reason] = n;
  r["registrations_refused"] = refusals;
  r["streams_dropped"] = m.streams_dropped;
  r["malformed_from_provider"] = m.malformed_from_provider;
  r["heartbeats_received"] = m.heartbeats_in;
  json errors = json::object();
  for (const auto& [code, n] : m.provider_errors) errors[code] = n;
  r["provider_errors"] = errors;
  r["duplicate_lease_refusals"] = m.dup_refusals;
  r["busy_resends"] = m.busy_resends;
  json faults = json::object();
  for (int k = 0; k < kFaultKinds; ++k) {
    Fault f = static_cast<Fault>(k);
    json entry = {{"injected", m.faults.injected(f)}};
    auto it = m.fault_counts.find(f);
    if (it != m.fault_counts.end()) {
      entry["refused_as_expected"] = it->second.refused_as_expected;
      entry["stream_closed"] = it->second.stream_closed;
      entry["released"] = it->second.released;
      entry["expired"] = it->second.expired;
      json unexpected = json::object();
      for (const auto& [what, n] : it->second.unexpected) unexpected[what] = n;
      entry["unexpected"] = unexpected;
    }
    faults[fault_name(f)] = entry;
  }
  r["faults"] = faults;
  r["faults_accepted"] = m.faults_accepted;
  return r;
}

bool QueueServer::clean() const {
  json r = report();
  uint64_t unexpected = 0;
  bool settled = true;
  for (const auto& [name, entry] : r["faults"].items()) {
    uint64_t outcomes = 0;
    if (entry.contains("unexpected")) {
      for (const auto& [what, n] : entry["unexpected"].items()) unexpected += n.get<uint64_t>();
    }
    for (const char* k : {"refused_as_expected", "stream_closed", "released", "expired"}) {
      if (entry.contains(k)) outcomes += entry[k].get<uint64_t>();
    }
    // Every injected envelope fault has exactly one outcome (drop and dup have none).
    if (name != "drop" && name != "dup" && name != "garbage" &&
        outcomes + unexpected_of(entry) != entry["injected"].get<uint64_t>()) {
      settled = false;
    }
  }
  return r["requests"].get<uint64_t>() > 0 && r["not_submitted"] == 0 && r["lost"] == 0 &&
         r["billed_twice"] == 0 && r["failed"] == 0 && r["credit_violations"] == 0 &&
         r["faults_accepted"] == 0 && unexpected == 0 && settled && r["verified"] == r["completed"];
}

}  // namespace alem::netsim
