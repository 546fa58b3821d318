// The simulator's lease queue: delivery order, credits, deadlines, redelivery and billing (see
// netsim_queue.h for the rules).
#include "network/netsim_queue.h"

#include <algorithm>

#include "core/error.h"

namespace alem::netsim {

LeaseQueue::LeaseQueue(QueueConfig config) : config_(config) {
  ALEM_CHECK(config_.lease_ms > 0, "lease time must be positive");
  ALEM_CHECK(config_.max_attempts > 0, "max attempts must be positive");
}

LeaseQueue::Request& LeaseQueue::find(const std::string& request_id) {
  auto it = requests_.find(request_id);
  ALEM_CHECK(it != requests_.end(), "unknown request id");
  return it->second;
}

const LeaseQueue::Request* LeaseQueue::find_if(const std::string& request_id) const {
  auto it = requests_.find(request_id);
  return it == requests_.end() ? nullptr : &it->second;
}

void LeaseQueue::submit(const std::string& request_id, const std::string& model,
                        std::string payload) {
  ALEM_CHECK(request_id.size() == 32, "a request id is 32 bytes");
  ALEM_CHECK(!requests_.count(request_id), "request id submitted twice");
  Request& r = requests_[request_id];
  r.model = model;
  r.payload = std::move(payload);
  pending_.push_back(request_id);
  ++stats_.submitted;
}

void LeaseQueue::requeue_front(const std::string& request_id, Request& request) {
  request.state = RequestState::kPending;
  pending_.push_front(request_id);
}

void LeaseQueue::resend(const std::string& request_id, std::string payload) {
  Request& r = find(request_id);
  ALEM_CHECK(r.state == RequestState::kAwaitingClient,
             "only a request answered with an error can be sent again");
  r.payload = std::move(payload);
  ++stats_.resent;
  requeue_front(request_id, r);
}

void LeaseQueue::finish_failed(const std::string& request_id, Request& request,
                               const std::string& reason) {
  if (request.state == RequestState::kFailed) return;
  if (request.state == RequestState::kLeased) close_lease(request);
  if (request.state == RequestState::kPending) {
    pending_.erase(std::remove(pending_.begin(), pending_.end(), request_id), pending_.end());
  }
  if (request.state == RequestState::kCompleted) --stats_.completed;
  request.state = RequestState::kFailed;
  failures_[request_id] = reason;
  ++stats_.failed;
}

void LeaseQueue::fail(const std::string& request_id, const std::string& reason) {
  finish_failed(request_id, find(request_id), reason);
}

void LeaseQueue::mark_answer_invalid(const std::string& request_id, const std::string& reason) {
  Request& r = find(request_id);
  ALEM_CHECK(r.state == RequestState::kCompleted, "only a completed request can be invalid");
  finish_failed(request_id, r, reason);
}

void LeaseQueue::attach(const std::string& session, const std::string& provider, uint32_t credits) {
  ALEM_CHECK(!session_provider_.count(session), "session attached twice");
  session_provider_[session] = provider;
  providers_[provider].credits = credits;
}

void LeaseQueue::close_lease(Request& request) {
  auto sp = session_provider_.find(request.holder);
  if (sp != session_provider_.end()) {
    Provider& p = providers_[sp->second];
    if (p.open > 0) --p.open;
  }
  request.holder.clear();
}

std::vector<std::string> LeaseQueue::detach(const std::string& session) {
  std::vector<std::string> returned;
  if (!session_provider_.count(session)) return returned;
  for (auto& [id, r] : requests_) {
    if (r.state == RequestState::kLeased && r.holder == session) returned.push_back(id);
  }
  // Back to the front in their original order.
  for (auto it = returned.rbegin(); it != returned.rend(); ++it) {
    Request& r = requests_[*it];
    close_lease(r);
    r.lost_lease = true;
    ++stats_.dropped;
    requeue_front(*it, r);
  }
  session_provider_.erase(session);
  return returned;
}

std::vector<LeaseGrant> LeaseQueue::grant(const std::string& session, uint64_t now_ms) {
  std::vector<LeaseGrant> grants;
  auto sp = session_provider_.find(session);
  if (sp == session_provider_.end()) return grants;
  Provider& p = providers_[sp->second];
  while (p.open < p.credits && !pending_.empty()) {
    std::string id = pending_.front();
    pending_.pop_front();
    Request& r = requests_[id];
    if (r.attempt >= config_.max_attempts) {
      r.state = RequestState::kAwaitingClient;  // so finish_failed does not touch pending_
      finish_failed(id, r, "no answer after " + std::to_string(r.attempt) + " deliveries");
      continue;
    }
    ++r.attempt;
    r.state = RequestState::kLeased;
    r.holder = session;
    r.deadline_ms = now_ms + config_.lease_ms;
    r.deliveries.push_back(Delivery{session, r.attempt, {}});
    if (r.lost_lease) ++stats_.redelivered;
    r.lost_lease = false;
    ++p.open;
    ++stats_.deliveries;
    if (p.open > p.credits) ++stats_.credit_violations;
    grants.push_back(LeaseGrant{id, r.attempt, r.deadline_ms, r.model, r.payload});
  }
  return grants;
}

std::vector<std::string> LeaseQueue::expire(uint64_t now_ms) {
  std::vector<std::string> expired;
  for (auto& [id, r] : requests_) {
    if (r.state == RequestState::kLeased && r.deadline_ms <= now_ms) expired.push_back(id);
  }
  for (auto it = expired.rbegin(); it != expired.rend(); ++it) {
    Request& r = requests_[*it];
    close_lease(r);
    r.lost_lease = true;
    ++stats_.expired;
    requeue_front(*it, r);
  }
  return expired;
}

LeaseQueue::Delivery* LeaseQueue::delivery_of(Request& request, const std::string& session,
                                              uint32_t attempt) {
  for (auto it = request.deliveries.rbegin(); it != request.deliveries.rend(); ++it) {
    if (it->session == session && (attempt == 0 || it->attempt == attempt)) return &*it;
  }
  return nullptr;
}

void LeaseQueue::on_chunk(const std::string& session, const std::string& request_id,
                          uint32_t sequence, std::string sealed_chunk, uint32_t attempt) {
  auto it = requests_.find(request_id);
  Delivery* d = it == requests_.end() ? nullptr : delivery_of(it->second, session, attempt);
  if (!d) {
    ++stats_.stale_messages;
    return;
  }
  if (!d->chunks.emplace(sequence, std::move(sealed_chunk)).second) ++stats_.duplicate_chunks;
}

FinalResult LeaseQueue::on_final(const std::string& session, const std::string& request_id,
                                 const FinalReport& final_report) {
  FinalResult result;
  auto it = requests_.find(request_id);
  Delivery* d =
      it == requests_.end() ? nullptr : delivery_of(it->second, session, final_report.attempt);
  if (!d) {
    ++stats_.stale_messages;
    return result;
  }
  Request& r = it->second;
  if (r.billed) {
    if (final_report.from_journal) {
      ++stats_.journal_duplicates;
      result.outcome = FinalOutcome::kJournalDuplicate;
    } else {
      ++stats_.billed_twice;
      result.outcome = FinalOutcome::kBilledTwice;
    }
    return result;
  }
  r.billed = final_report.usage;
  if (r.state == RequestState::kLeased) close_lease(r);
  if (r.state == RequestState::kPending) {
    pending_.erase(std::remove(pending_.begin(), pending_.end(), request_id), pending_.end());
  }
  if (r.state == RequestState::kFailed) {
    // Billed after the client gave up: the answer still counts once, the failure stands.
    result.outcome = FinalOutcome::kJournalDuplicate;
    return result;
  }
  r.state = RequestState::kCompleted;
  ++stats_.completed;
  result.outcome = FinalOutcome::kCompleted;
  result.chunks = d->chunks;
  return result;
}

LeaseQueue::Request* LeaseQueue::held_lease(const std::string& session,
                                            const std::string& request_id, uint32_t attempt) {
  auto it = requests_.find(request_id);
  if (it == requests_.end() || it->second.state != RequestState::kLeased ||
      it->second.holder != session || (attempt != 0 && it->second.attempt != attempt)) {
    ++stats_.stale_messages;
    return nullptr;
  }
  return &it->second;
}

bool LeaseQueue::on_error(const std::string& session, const std::string& request_id,
                          uint32_t attempt) {
  Request* r = held_lease(session, request_id, attempt);
  if (!r) return false;
  close_lease(*r);
  r->state = RequestState::kAwaitingClient;
  return true;
}

bool LeaseQueue::on_release(const std::string& session, const std::string& request_id,
                            uint32_t attempt) {
  Request* r = held_lease(session, request_id, attempt);
  if (!r) return false;
  close_lease(*r);
  r->lost_lease = true;
  ++stats_.released;
  requeue_front(request_id, *r);
  return true;
}

RequestState LeaseQueue::state(const std::string& request_id) const {
  const Request* r = find_if(request_id);
  ALEM_CHECK(r, "unknown request id");
  return r->state;
}

uint32_t LeaseQueue::attempts(const std::string& request_id) const {
  const Request* r = find_if(request_id);
  ALEM_CHECK(r, "unknown request id");
  return r->attempt;
}

std::optional<UsageRecord> LeaseQueue::billed_usage(const std::string& request_id) const {
  const Request* r = find_if(request_id);
  ALEM_CHECK(r, "unknown request id");
  return r->billed;
}

uint32_t LeaseQueue::open_leases(const std::string& provider) const {
  auto it = providers_.find(provider);
  return it == providers_.end() ? 0 : it->second.open;
}

uint64_t LeaseQueue::unfinished() const {
  uint64_t n = 0;
  for (const auto& [id, r] : requests_) {
    if (r.state != RequestState::kCompleted && r.state != RequestState::kFailed) ++n;
  }
  return n;
}

}  // namespace alem::netsim
