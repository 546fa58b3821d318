// Batched vocab-parallel sampling over a replica's TP and PP groups (see the header).
#include "engine/replica_sampling.h"

#include <algorithm>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "engine/constrained/token_constraint.h"

namespace alem {
namespace {

void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

uint64_t get_u64(const uint8_t* data, size_t size, size_t& pos) {
  ALEM_CHECK(pos + 8 <= size, "candidate sets: truncated buffer");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(data[pos + i]) << (8 * i);
  pos += 8;
  return v;
}

// A constrained row (response_format) draws among the tokens its grammar allows.
int32_t choose_row(const CandidateSet& set, const RowSampler& row) {
  if (row.constraint) return row.constraint->choose(set, *row.params, *row.rng);
  return choose(set, *row.params, *row.rng);
}

// The k a row's candidates take when the backend makes them (0: the row needs its whole slice
// on the host): greedy and top-k rows without penalties or a grammar.
int backend_candidate_k(const StepLogits& logits, const RowSampler& row) {
  if (!logits.on_backend() || row.constraint || logits.vocab_size <= 0) return 0;
  const SamplingParams& p = *row.params;
  if (p.has_penalties() && !row.counts->empty()) return 0;
  if (p.greedy()) return 1;
  if (!p.top_k_enabled() || p.top_k > kMaxBackendTopK) return 0;
  return static_cast<int>(std::min<int64_t>(p.top_k, logits.vocab_size));
}

// The set local_candidates() would make from the row, from the backend's candidates.
CandidateSet set_from_backend(const SamplingCandidates& c, size_t r, const StepLogits& logits,
                              const SamplingParams& params) {
  ALEM_CHECK(!c.invalid[r], "logits contain NaN or +inf (vocab slice of " +
                                std::to_string(logits.vocab_size) + ")");
  CandidateSet set;
  set.max_logit = c.max_logit[r];
  set.sum_exp = c.sum_exp[r];
  set.vocab_covered = logits.vocab_size;
  int count = 1;
  if (params.greedy()) {
    set.kind = CandidateKind::kArgmax;
  } else {
    set.kind = CandidateKind::kTopK;
    set.top_k = params.top_k;
    count = static_cast<int>(std::min<int64_t>(params.top_k, logits.vocab_size));
  }
  ALEM_CHECK(count <= c.k, "sampling: backend candidates too few for the row");
  set.candidates.resize(static_cast<size_t>(count));
  for (int j = 0; j < count; ++j) {
    const size_t at = r * c.k + j;
    set.candidates[j] = {c.values[at], static_cast<int32_t>(logits.vocab_begin + c.indices[at])};
  }
  return set;
}

}  // namespace

std::vector<uint8_t> serialize_candidate_sets(const std::vector<CandidateSet>& sets) {
  std::vector<uint8_t> out;
  put_u64(out, sets.size());
  for (const CandidateSet& set : sets) {
    const std::vector<uint8_t> bytes = serialize_candidates(set);
    put_u64(out, bytes.size());
    out.insert(out.end(), bytes.begin(), bytes.end());
  }
  return out;
}

std::vector<CandidateSet> deserialize_candidate_sets(const uint8_t* data, size_t size) {
  size_t pos = 0;
  const uint64_t count = get_u64(data, size, pos);
  ALEM_CHECK(count <= size, "candidate sets: implausible count " + std::to_string(count));
  std::vector<CandidateSet> sets;
  sets.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t length = get_u64(data, size, pos);
    ALEM_CHECK(length <= size - pos, "candidate sets: truncated set " + std::to_string(i));
    sets.push_back(deserialize_candidates(data + pos, length));
    pos += length;
  }
  ALEM_CHECK(pos == size, "candidate sets: trailing bytes");
  return sets;
}

std::vector<std::vector<uint8_t>> all_gather_bytes(ProcessGroup& group,
                                                   const std::vector<uint8_t>& mine) {
  const int n = group.size();
  if (n == 1) return {mine};
  uint64_t my_size = mine.size();
  std::vector<uint64_t> sizes(n);
  group.all_gather(&my_size, sizeof(uint64_t), sizes.data());
  const uint64_t max_size = *std::max_element(sizes.begin(), sizes.end());
  std::vector<uint8_t> padded(max_size, 0);
  std::copy(mine.begin(), mine.end(), padded.begin());
  std::vector<uint8_t> all(max_size * n);
  group.all_gather(padded.data(), max_size, all.data());
  std::vector<std::vector<uint8_t>> out(n);
  for (int i = 0; i < n; ++i) {
    out[i].assign(all.begin() + i * max_size, all.begin() + i * max_size + sizes[i]);
  }
  return out;
}

std::vector<int32_t> sample_rows_replicated(const StepLogits& logits,
                                            const std::vector<RowSampler>& rows,
                                            ParallelContext& ctx, bool has_lm_head,
                                            std::vector<std::optional<TokenLogprobs>>* logprobs) {
  const size_t n = rows.size();
  std::vector<int32_t> tokens(n, -1);
  if (n == 0) return tokens;
  // Whole rows on the host: the logits themselves, or rows copied from the backend on demand.
  std::vector<std::vector<float>> copied;
  auto host_row = [&](size_t i) -> const float* {
    if (!logits.on_backend()) return logits.row(static_cast<int64_t>(i));
    if (copied.empty()) copied.resize(n);
    if (copied[i].empty()) {
      copied[i].resize(static_cast<size_t>(logits.vocab_size));
      logits.copy_row(static_cast<int64_t>(i), copied[i].data());
    }
    return copied[i].data();
  };
  if (has_lm_head) {
    ALEM_CHECK(static_cast<size_t>(logits.rows()) == n,
               "sampling: the step has " + std::to_string(logits.rows()) + " logit rows for " +
                   std::to_string(n) + " sampled sequences");
    std::vector<CandidateSet> local(n);
    // Greedy and top-k rows take their candidates from the backend, where the logits are; the
    // others (and every row when the logits are on the host) are read whole on the host.
    int k = 0;
    for (size_t i = 0; i < n; ++i) {
      ALEM_CHECK(rows[i].params && rows[i].counts && rows[i].rng,
                 "sampling: row " + std::to_string(i) + " has no state");
      k = std::max(k, backend_candidate_k(logits, rows[i]));
    }
    SamplingCandidates from_backend;
    if (k > 0) {
      logits.backend->sampling_candidates(logits.backend_values, logits.rows(), logits.vocab_size,
                                          k, from_backend);
    }
    std::vector<float> row;
    for (size_t i = 0; i < n; ++i) {
      const RowSampler& r = rows[i];
      if (backend_candidate_k(logits, r) > 0) {
        local[i] = set_from_backend(from_backend, i, logits, *r.params);
        continue;
      }
      row.assign(host_row(i), host_row(i) + logits.vocab_size);
      apply_penalties(row.data(), logits.vocab_begin, logits.vocab_size, *r.params, *r.counts);
      local[i] = local_candidates(
          row.data(), logits.vocab_begin, logits.vocab_size,
          r.constraint ? constrained::RowConstraint::candidate_params(*r.params) : *r.params);
    }
    if (!row.empty()) secure_wipe(row.data(), row.size() * sizeof(float));
    if (ctx.tp->size() == 1) {
      for (size_t i = 0; i < n; ++i) tokens[i] = choose_row(local[i], rows[i]);
    } else {
      std::vector<std::vector<CandidateSet>> by_rank;
      for (const auto& bytes : all_gather_bytes(*ctx.tp, serialize_candidate_sets(local))) {
        by_rank.push_back(deserialize_candidate_sets(bytes.data(), bytes.size()));
        ALEM_CHECK(by_rank.back().size() == n, "sampling: a TP rank sent the wrong row count");
      }
      std::vector<CandidateSet> parts(by_rank.size());
      for (size_t i = 0; i < n; ++i) {
        for (size_t k = 0; k < by_rank.size(); ++k) parts[k] = std::move(by_rank[k][i]);
        tokens[i] = choose_row(merge(parts), rows[i]);  // same on every TP rank
      }
    }
  }
  // Logprobs (last stage): each TP rank's parts of the rows that ask, gathered and combined.
  std::vector<uint8_t> logprob_bytes;
  if (has_lm_head && logprobs) {
    bool any = false;
    for (const RowSampler& r : rows) any |= r.params->logprobs >= 0;
    if (any) {
      std::vector<uint8_t> mine;
      for (size_t i = 0; i < n; ++i) {
        const int top_n = rows[i].params->logprobs;
        if (top_n < 0) continue;
        serialize_logprob_part(mine, logprob_part(host_row(i), logits.vocab_begin,
                                                  logits.vocab_size, top_n, tokens[i]));
      }
      std::vector<std::vector<uint8_t>> by_rank = all_gather_bytes(*ctx.tp, mine);
      std::vector<size_t> pos(by_rank.size(), 0);
      put_u64(logprob_bytes, 1);  // something follows
      for (size_t i = 0; i < n; ++i) {
        const int top_n = rows[i].params->logprobs;
        if (top_n < 0) continue;
        std::vector<LogprobPart> parts;
        for (size_t k = 0; k < by_rank.size(); ++k) {
          parts.push_back(deserialize_logprob_part(by_rank[k].data(), by_rank[k].size(), pos[k]));
        }
        const TokenLogprobs lp = combine_logprob_parts(parts, top_n);
        put_u64(logprob_bytes, i);
        LogprobPart as_part;  // the combined result reuses the part encoding
        as_part.has_chosen = true;
        as_part.chosen_logit = lp.logprob;
        as_part.top = lp.top;
        serialize_logprob_part(logprob_bytes, as_part);
      }
    }
  }
  for (std::vector<float>& c : copied) secure_wipe(c.data(), c.size() * sizeof(float));
  // The last stage knows the tokens (and the logprobs' size); every other stage learns them
  // from the pipeline group. The extra slot is the logprob payload's size, 0 when none.
  std::vector<int32_t> message(tokens);
  message.push_back(static_cast<int32_t>(logprob_bytes.size()));
  ctx.pp->broadcast(message.data(), message.size() * sizeof(int32_t), ctx.layout.pp_size() - 1);
  std::copy(message.begin(), message.begin() + static_cast<std::ptrdiff_t>(n), tokens.begin());
  const size_t payload = static_cast<uint32_t>(message.back());
  if (payload > 0 && ctx.pp->size() > 1) {
    logprob_bytes.resize(payload);
    ctx.pp->broadcast(logprob_bytes.data(), payload, ctx.layout.pp_size() - 1);
  }
  if (logprobs) {
    logprobs->assign(n, std::nullopt);
    if (payload > 0) {
      size_t pos = 0;
      get_u64(logprob_bytes.data(), payload, pos);
      while (pos < payload) {
        const uint64_t row = get_u64(logprob_bytes.data(), payload, pos);
        ALEM_CHECK(row < n, "logprobs: row index out of range");
        LogprobPart p = deserialize_logprob_part(logprob_bytes.data(), payload, pos);
        (*logprobs)[row] = TokenLogprobs{p.chosen_logit, std::move(p.top)};
      }
    }
  }
  return tokens;
}

}  // namespace alem
