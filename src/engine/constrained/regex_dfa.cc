// Turns a parsed pattern (regex_parser.cc) into a DFA over UTF-8 bytes: code-point sets become
// byte-range chains, the tree becomes a Thompson NFA, subset construction makes the DFA, and
// states that can no longer reach a match are cut, so every prefix the DFA accepts can still be
// completed. Also the cache of compiled patterns and guided_choice's pattern.
#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>

#include "core/error.h"
#include "engine/constrained/regex.h"

namespace alem::constrained {
namespace {

using regex_detail::RegexNode;
using regex_detail::RegexTree;
using ByteRange = std::pair<uint8_t, uint8_t>;

// UTF-8 byte-range sequences that together encode exactly the code points lo..hi (surrogates
// excluded), after the well-known splitting at encoded-length and continuation-byte boundaries.
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<std::vector<ByteRange>>& out) {
  if (lo <= 0xDFFF && hi >= 0xD800) {
    if (lo < 0xD800) utf8_sequences(lo, 0xD7FF, out);
    if (hi > 0xDFFF) utf8_sequences(0xE000, hi, out);
    return;
  }
  static constexpr uint32_t kLengthEnds[] = {0x7F, 0x7FF, 0xFFFF};
  for (uint32_t end : kLengthEnds) {
    if (lo <= end && end < hi) {
      utf8_sequences(lo, end, out);
      utf8_sequences(end + 1, hi, out);
      return;
    }
  }
  if (hi <= 0x7F) {
    out.push_back({{static_cast<uint8_t>(lo), static_cast<uint8_t>(hi)}});
    return;
  }
  for (int i = 1; i < 4; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  auto encode = [](uint32_t cp, uint8_t* b) {
    if (cp <= 0x7FF) {
      b[0] = 0xC0 | (cp >> 6);
      b[1] = 0x80 | (cp & 0x3F);
      return 2;
    }
    if (cp <= 0xFFFF) {
      b[0] = 0xE0 | (cp >> 12);
      b[1] = 0x80 | ((cp >> 6) & 0x3F);
      b[2] = 0x80 | (cp & 0x3F);
      return 3;
    }
    b[0] = 0xF0 | (cp >> 18);
    b[1] = 0x80 | ((cp >> 12) & 0x3F);
    b[2] = 0x80 | ((cp >> 6) & 0x3F);
    b[3] = 0x80 | (cp & 0x3F);
    return 4;
  };
  uint8_t a[4], b[4];
  const int n = encode(lo, a);
  encode(hi, b);
  std::vector<ByteRange> seq;
  for (int i = 0; i < n; ++i) seq.emplace_back(a[i], b[i]);
  out.push_back(std::move(seq));
}

struct NfaState {
  std::vector<int32_t> eps;
  uint8_t lo = 1, hi = 0;  // one byte edge when lo <= hi
  int32_t next = -1;
};

class NfaBuilder {
 public:
  explicit NfaBuilder(const RegexTree& tree) : tree_(tree) {}
  std::vector<NfaState> states;

  struct Fragment {
    int32_t start, end;
  };

  int32_t add() {
    ALEM_CHECK(states.size() < static_cast<size_t>(kMaxNfaStates),
               "regex: more than " + std::to_string(kMaxNfaStates) +
                   " automaton states after repetitions are expanded (use smaller counts)");
    states.emplace_back();
    return static_cast<int32_t>(states.size() - 1);
  }
  void eps(int32_t from, int32_t to) { states[from].eps.push_back(to); }

  Fragment any_code_point_star() {
    RegexNode any;
    any.kind = RegexNode::kSet;
    any.ranges = {{0, 0x10FFFF}};
    const Fragment f = set(any);
    return star(f);
  }

  Fragment star(Fragment f) {
    const int32_t s = add(), e = add();
    eps(s, f.start);
    eps(s, e);
    eps(f.end, s);
    return {s, e};
  }

  Fragment set(const RegexNode& n) {
    const int32_t start = add(), end = add();
    std::vector<std::vector<ByteRange>> seqs;
    for (const auto& [lo, hi] : n.ranges) utf8_sequences(lo, hi, seqs);
    for (const auto& seq : seqs) {
      int32_t cur = add();
      eps(start, cur);
      for (size_t k = 0; k < seq.size(); ++k) {
        const int32_t to = k + 1 == seq.size() ? end : add();
        states[cur].lo = seq[k].first;
        states[cur].hi = seq[k].second;
        states[cur].next = to;
        cur = to;
      }
    }
    return {start, end};
  }

  Fragment emit(int32_t index) {
    const RegexNode& n = tree_.nodes[index];
    switch (n.kind) {
      case RegexNode::kEmpty: {
        const int32_t s = add();
        return {s, s};
      }
      case RegexNode::kSet:
        return set(n);
      case RegexNode::kConcat: {
        Fragment whole = emit(n.children.front());
        for (size_t i = 1; i < n.children.size(); ++i) {
          const Fragment next = emit(n.children[i]);
          eps(whole.end, next.start);
          whole.end = next.end;
        }
        return whole;
      }
      case RegexNode::kAlternate: {
        const int32_t s = add(), e = add();
        for (int32_t child : n.children) {
          const Fragment f = emit(child);
          eps(s, f.start);
          eps(f.end, e);
        }
        return {s, e};
      }
      case RegexNode::kRepeat: {
        const int32_t child = n.children.front();
        const int32_t s = add();
        int32_t end = s;
        for (int i = 0; i < n.min; ++i) {
          const Fragment f = emit(child);
          eps(end, f.start);
          end = f.end;
        }
        if (n.max < 0) {
          const Fragment loop = star(emit(child));
          eps(end, loop.start);
          return {s, loop.end};
        }
        const int32_t e = add();
        for (int i = n.min; i < n.max; ++i) {
          const Fragment f = emit(child);
          eps(end, e);
          eps(end, f.start);
          end = f.end;
        }
        eps(end, e);
        return {s, e};
      }
    }
    ALEM_FAIL("regex: unknown node");
  }

 private:
  const RegexTree& tree_;
};

// Cuts edges into states from which no match is reachable and fills can_grow, so every prefix
// the DFA still accepts can be completed. Throws when the start state itself is dead.
void cut_dead_states(RegexDfa& dfa) {
  const int32_t n = dfa.num_states();
  std::vector<std::vector<int32_t>> preds(n);
  for (int32_t s = 0; s < n; ++s) {
    for (int b = 0; b < 256; ++b) {
      const int32_t t = dfa.next[static_cast<size_t>(s) * 256 + b];
      if (t >= 0) preds[t].push_back(s);
    }
  }
  std::vector<uint8_t> live(n, 0);
  std::vector<int32_t> work;
  for (int32_t s = 0; s < n; ++s) {
    if (dfa.accepting[s]) {
      live[s] = 1;
      work.push_back(s);
    }
  }
  while (!work.empty()) {
    const int32_t t = work.back();
    work.pop_back();
    for (int32_t p : preds[t]) {
      if (!live[p]) {
        live[p] = 1;
        work.push_back(p);
      }
    }
  }
  ALEM_CHECK(live[dfa.start], "regex: the pattern can match nothing");
  dfa.can_grow.assign(n, 0);
  for (int32_t s = 0; s < n; ++s) {
    for (int b = 0; b < 256; ++b) {
      int32_t& t = dfa.next[static_cast<size_t>(s) * 256 + b];
      if (t >= 0 && !live[t]) t = -1;
      if (t >= 0) dfa.can_grow[s] = 1;
    }
  }
}

class Determinizer {
 public:
  Determinizer(const std::vector<NfaState>& nfa, int32_t accept) : nfa_(nfa), accept_(accept) {}

  RegexDfa run(int32_t nfa_start) {
    dfa_.start = state_of(closure({nfa_start}));
    for (size_t d = 0; d < sets_.size(); ++d) expand(static_cast<int32_t>(d));
    cut_dead_states(dfa_);
    return std::move(dfa_);
  }

 private:
  // States reachable by empty moves, keeping those with a byte edge and the accepting one.
  std::vector<int32_t> closure(std::vector<int32_t> roots) {
    if (seen_.size() != nfa_.size()) seen_.assign(nfa_.size(), 0);
    ++generation_;
    std::vector<int32_t> out;
    while (!roots.empty()) {
      const int32_t s = roots.back();
      roots.pop_back();
      if (seen_[s] == generation_) continue;
      seen_[s] = generation_;
      if (nfa_[s].lo <= nfa_[s].hi || s == accept_) out.push_back(s);
      for (int32_t t : nfa_[s].eps) {
        if (seen_[t] != generation_) roots.push_back(t);
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  int32_t state_of(std::vector<int32_t> set) {
    if (auto it = index_.find(set); it != index_.end()) return it->second;
    ALEM_CHECK(sets_.size() < static_cast<size_t>(kMaxDfaStates),
               "regex: needs more than " + std::to_string(kMaxDfaStates) +
                   " automaton states (simplify the pattern)");
    const int32_t id = static_cast<int32_t>(sets_.size());
    dfa_.accepting.push_back(std::binary_search(set.begin(), set.end(), accept_) ? 1 : 0);
    dfa_.next.resize(dfa_.next.size() + 256, -1);
    index_.emplace(set, id);
    sets_.push_back(std::move(set));
    return id;
  }

  void expand(int32_t d) {
    // Byte intervals on which the member states' edges are constant.
    std::vector<int> cuts = {0, 256};
    for (int32_t s : sets_[d]) {
      if (nfa_[s].lo > nfa_[s].hi) continue;
      cuts.push_back(nfa_[s].lo);
      cuts.push_back(nfa_[s].hi + 1);
    }
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      const int b = cuts[i];
      std::vector<int32_t> targets;
      for (int32_t s : sets_[d]) {
        if (nfa_[s].lo <= b && b <= nfa_[s].hi) targets.push_back(nfa_[s].next);
      }
      if (targets.empty()) continue;
      const int32_t to = state_of(closure(std::move(targets)));
      for (int x = b; x < cuts[i + 1]; ++x) dfa_.next[static_cast<size_t>(d) * 256 + x] = to;
    }
  }

  const std::vector<NfaState>& nfa_;
  int32_t accept_;
  RegexDfa dfa_;
  std::vector<std::vector<int32_t>> sets_;
  std::map<std::vector<int32_t>, int32_t> index_;
  std::vector<uint32_t> seen_;  // closure(): visited when equal to generation_
  uint32_t generation_ = 0;
};

}  // namespace

RegexDfa compile_regex(std::string_view pattern, RegexMatch mode) {
  const RegexTree tree = regex_detail::parse_regex(pattern, mode);
  NfaBuilder nfa(tree);
  NfaBuilder::Fragment whole = nfa.emit(tree.root);
  if (mode == RegexMatch::kSearch) {
    if (!tree.anchored_start) {
      const NfaBuilder::Fragment lead = nfa.any_code_point_star();
      nfa.eps(lead.end, whole.start);
      whole.start = lead.start;
    }
    if (!tree.anchored_end) {
      const NfaBuilder::Fragment tail = nfa.any_code_point_star();
      nfa.eps(whole.end, tail.start);
      whole.end = tail.end;
    }
  }
  return Determinizer(nfa.states, whole.end).run(whole.start);
}

RegexDfa with_length_limits(const RegexDfa& dfa, int32_t min_chars, int32_t max_chars) {
  ALEM_CHECK(min_chars >= 0 && (max_chars < 0 || max_chars >= min_chars),
             "regex: impossible length limits");
  // Product with a counter of code points: 0..max_chars, or 0..min_chars where min_chars
  // stands for "min_chars or more" when there is no maximum.
  const int32_t top = max_chars >= 0 ? max_chars : min_chars;
  RegexDfa out;
  std::map<std::pair<int32_t, int32_t>, int32_t> index;
  std::vector<std::pair<int32_t, int32_t>> pending;
  auto state_of = [&](int32_t s, int32_t n) {
    const auto key = std::make_pair(s, n);
    if (auto it = index.find(key); it != index.end()) return it->second;
    ALEM_CHECK(out.num_states() < kMaxDfaStates,
               "regex: the pattern with its length limits needs more than " +
                   std::to_string(kMaxDfaStates) + " automaton states");
    const int32_t id = out.num_states();
    out.accepting.push_back(dfa.accepting[s] && n >= min_chars ? 1 : 0);
    out.next.resize(out.next.size() + 256, -1);
    index.emplace(key, id);
    pending.push_back(key);
    return id;
  };
  out.start = state_of(dfa.start, 0);
  for (size_t i = 0; i < pending.size(); ++i) {
    const auto [s, n] = pending[i];
    const int32_t from = index.at(pending[i]);
    for (int b = 0; b < 256; ++b) {
      const int32_t t = dfa.next[static_cast<size_t>(s) * 256 + b];
      if (t < 0) continue;
      const bool starts_char = b < 0x80 || b >= 0xC0;  // not a UTF-8 continuation byte
      int32_t m = n + (starts_char ? 1 : 0);
      if (m > top) {
        if (max_chars >= 0) continue;  // one code point too many
        m = top;
      }
      out.next[static_cast<size_t>(from) * 256 + b] = state_of(t, m);
    }
  }
  cut_dead_states(out);
  return out;
}

std::shared_ptr<const RegexDfa> cached_regex(const std::string& pattern, RegexMatch mode) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<const RegexDfa>> cache;
  const std::string key = (mode == RegexMatch::kFull ? "F" : "S") + pattern;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  auto compiled = std::make_shared<const RegexDfa>(compile_regex(pattern, mode));
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= 128) cache.clear();  // crude bound; recompiling is cheap
  cache.emplace(key, compiled);
  return compiled;
}

std::string choice_regex(const std::vector<std::string>& choices) {
  ALEM_CHECK(!choices.empty(), "the list of choices is empty");
  std::string out = "(?:";
  for (size_t i = 0; i < choices.size(); ++i) {
    ALEM_CHECK(!choices[i].empty(), "a choice is the empty string");
    if (i > 0) out += '|';
    for (char c : choices[i]) {
      const auto u = static_cast<unsigned char>(c);
      const bool plain = u >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                         (c >= 'A' && c <= 'Z') || c == ' ' || c == '\n' || c == '\t';
      if (!plain && u < 0x20) {
        static const char* hex = "0123456789abcdef";
        out += "\\x";
        out += hex[u >> 4];
        out += hex[u & 15];
        continue;
      }
      if (!plain) out += '\\';
      out += c;
    }
  }
  out += ')';
  return out;
}

}  // namespace alem::constrained
