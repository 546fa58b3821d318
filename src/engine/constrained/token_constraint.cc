// Masked choice over a merged candidate set, best logit first (see token_constraint.h).
#include "engine/constrained/token_constraint.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/tokenizer.h"

namespace alem::constrained {
namespace {

bool better(const Candidate& a, const Candidate& b) {
  if (a.logit != b.logit) return a.logit > b.logit;
  return a.token_id < b.token_id;
}

// Candidates in descending logit order, sorted lazily in growing chunks: the tokens the choice
// needs are usually among the first few dozen.
class DescendingOrder {
 public:
  explicit DescendingOrder(const std::vector<Candidate>& cands) : c_(cands) {}
  size_t size() const { return c_.size(); }
  const Candidate& operator[](size_t i) {
    if (i >= sorted_) {
      const size_t upto = std::min(c_.size(), std::max<size_t>({64, sorted_ * 4, i + 1}));
      std::partial_sort(c_.begin() + sorted_, c_.begin() + upto, c_.end(), better);
      sorted_ = upto;
    }
    return c_[i];
  }

 private:
  std::vector<Candidate> c_;
  size_t sorted_ = 0;
};

}  // namespace

std::shared_ptr<const TokenTable> make_token_table(const Tokenizer& tokenizer) {
  auto table = std::make_shared<TokenTable>();
  const int32_t n = tokenizer.vocab_size();
  table->bytes.resize(n);
  table->special.resize(n, 0);
  for (int32_t id = 0; id < n; ++id) {
    if (tokenizer.is_control(id)) {
      table->special[id] = 1;
    } else {
      table->bytes[id] = tokenizer.token_text(id);
    }
  }
  return table;
}

namespace {

OutputState initial_state(const JsonSchema* schema, const RegexDfa* regex) {
  return schema ? OutputState(schema) : OutputState(regex);
}

}  // namespace

RowConstraint::RowConstraint(const SamplingParams& params, std::shared_ptr<const TokenTable> table,
                             std::vector<int32_t> end_ids)
    : RowConstraint(
          params, params.json_schema.empty() ? nullptr : cached_json_schema(params.json_schema),
          params.json_schema.empty() ? cached_regex(params.regex, RegexMatch::kFull) : nullptr,
          std::move(table), std::move(end_ids)) {}

RowConstraint::RowConstraint(const SamplingParams& params, std::shared_ptr<const JsonSchema> schema,
                             std::shared_ptr<const RegexDfa> regex,
                             std::shared_ptr<const TokenTable> table, std::vector<int32_t> end_ids)
    : schema_(std::move(schema)),
      regex_(std::move(regex)),
      table_(std::move(table)),
      end_ids_(std::move(end_ids)),
      state_(initial_state(schema_.get(), regex_.get())),
      scratch_(state_) {
  ALEM_CHECK(table_ != nullptr, "a constrained output needs the model's token table");
  for (int32_t id : params.stop_token_ids) end_ids_.push_back(id);
  ALEM_CHECK(!end_ids_.empty(), "a constrained output needs an end-of-sequence token");
}

SamplingParams RowConstraint::candidate_params(const SamplingParams& params) {
  SamplingParams p = params;
  p.temperature = 1.0f;
  p.top_k = 0;
  return p;
}

bool RowConstraint::allowed(int32_t token) const {
  if (std::find(end_ids_.begin(), end_ids_.end(), token) != end_ids_.end()) {
    return state_.complete();
  }
  if (token < 0 || static_cast<size_t>(token) >= table_->bytes.size()) return false;
  if (table_->special[token]) return false;
  const std::string& bytes = table_->bytes[token];
  if (bytes.empty()) return false;
  scratch_ = state_;
  return scratch_.feed(bytes);
}

int32_t RowConstraint::choose(const CandidateSet& set, const SamplingParams& params,
                              Rng& rng) const {
  ALEM_CHECK(!set.candidates.empty(), "constrained choice: the candidate set is empty");
  DescendingOrder order(set.candidates);
  if (params.greedy()) {
    for (size_t i = 0; i < order.size(); ++i) {
      if (allowed(order[i].token_id)) return order[i].token_id;
    }
    return end_ids_.front();
  }
  const double inv_t = 1.0 / params.temperature;
  const float best = order[0].logit;
  double total = 0.0;
  for (const Candidate& c : set.candidates) total += std::exp((double(c.logit) - best) * inv_t);
  struct Kept {
    int32_t id;
    double weight;
  };
  std::vector<Kept> valid;
  double tested = 0.0, valid_mass = 0.0;
  for (size_t i = 0; i < order.size(); ++i) {
    const Candidate& c = order[i];
    const double w = std::exp((double(c.logit) - best) * inv_t);
    tested += w;
    if (allowed(c.token_id)) {
      valid.push_back({c.token_id, w});
      valid_mass += w;
      if (params.top_k_enabled() && static_cast<int32_t>(valid.size()) >= params.top_k) break;
    }
    if (valid_mass > 0.0 && total - tested <= 1e-6 * valid_mass) break;
  }
  const double u = rng.uniform();  // exactly one draw per sampled token, as choose() does
  if (valid.empty()) return end_ids_.front();
  // min_p relative to the most likely valid token, then top_p over the valid mass.
  if (params.min_p > 0.0f) {
    const double floor = params.min_p * valid.front().weight;
    valid.erase(std::remove_if(valid.begin() + 1, valid.end(),
                               [&](const Kept& k) { return k.weight < floor; }),
                valid.end());
  }
  double mass = 0.0;
  for (const Kept& k : valid) mass += k.weight;
  if (params.top_p < 1.0f) {
    const double threshold = double(params.top_p) * mass;
    double before = 0.0;
    size_t keep = valid.size();
    for (size_t i = 0; i < valid.size(); ++i) {
      if (i > 0 && before >= threshold) {
        keep = i;
        break;
      }
      before += valid[i].weight;
    }
    valid.resize(keep);
    mass = 0.0;
    for (const Kept& k : valid) mass += k.weight;
  }
  const double target = u * mass;
  double cumulative = 0.0;
  for (const Kept& k : valid) {
    cumulative += k.weight;
    if (cumulative > target) return k.id;
  }
  return valid.back().id;
}

void RowConstraint::advance(int32_t token) {
  if (std::find(end_ids_.begin(), end_ids_.end(), token) != end_ids_.end()) return;
  if (token < 0 || static_cast<size_t>(token) >= table_->bytes.size()) return;
  OutputState next = state_;
  if (next.feed(table_->bytes[token])) state_ = std::move(next);
}

}  // namespace alem::constrained
