// Byte-level BPE as Hugging Face `tokenizers` runs it (see tokenizer.h). Three stages:
//   1. added tokens are cut out verbatim (leftmost, then longest, as HF's Aho-Corasick does);
//   2. each stretch between them is split by the pre-tokenizer regex (PCRE2 with JIT);
//   3. each piece goes through BPE: one symbol per byte, then the lowest-ranked adjacent pair is
//      merged (ties: leftmost) until none is left; HF's Word::merge_all, heap and all.
// HF's regexes run on Oniguruma, whose \s is Unicode White_Space. PCRE2's \s (with UCP) lacks
// U+0085, so the patterns spell white space out as [\t-\r\x{85}\p{Z}], which is exactly
// White_Space; test_tokenizer checks every code point against HF.
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "core/error.h"
#include "model/unicode_bytes.h"

namespace alem {
namespace {

// Unicode White_Space, as a character-class body.
constexpr const char* kWhiteSpace = R"(\t-\r\x{85}\p{Z})";

std::string gpt2_pattern() {
  const std::string ws = kWhiteSpace;
  return R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)" + ws + R"(\p{L}\p{N}]+|[)" + ws +
         "]+(?![^" + ws + "])|[" + ws + "]+";
}

// Llama 3 and Qwen2 differ only in how many digits one piece may hold.
std::string llama3_family_pattern(const char* numbers) {
  const std::string ws = kWhiteSpace;
  return R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|)" + std::string(numbers) +
         R"(| ?[^)" + ws + R"(\p{L}\p{N}]+[\r\n]*|[)" + ws + R"(]*[\r\n]+|[)" + ws + "]+(?![^" +
         ws + "])|[" + ws + "]+";
}

struct PreTokenizerRules {
  std::string pattern;
  bool isolate_numbers = false;  // split off every \p{N} code point first (HF Digits(true))
};

PreTokenizerRules rules_for(const std::string& name) {
  if (name == "smollm") return {gpt2_pattern(), true};
  if (name == "gpt2" || name == "gpt-2") return {gpt2_pattern(), false};
  if (name == "llama3" || name == "llama-bpe")
    return {llama3_family_pattern(R"(\p{N}{1,3})"), false};
  if (name == "qwen2") return {llama3_family_pattern(R"(\p{N})"), false};
  ALEM_FAIL("tokenizer: unsupported pre-tokenizer '" + name +
            "' (supported: smollm, gpt2, llama3/llama-bpe, qwen2)");
}

// A compiled PCRE2 pattern that walks a subject and reports every piece, matched or not.
class PieceRegex {
 public:
  explicit PieceRegex(const std::string& pattern) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error_code,
                          &error_offset, nullptr);
    if (code_ == nullptr) {
      ALEM_FAIL("tokenizer: cannot compile pre-tokenizer regex at offset " +
                std::to_string(error_offset) + ": " + error_message(error_code));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter on failure
  }
  ~PieceRegex() { pcre2_code_free(code_); }
  PieceRegex(const PieceRegex&) = delete;
  PieceRegex& operator=(const PieceRegex&) = delete;

  // Calls on_piece(piece, matched) for consecutive pieces covering `text`: matched pieces, and
  // the unmatched bytes between them (only ever invalid UTF-8, which no pattern matches).
  template <typename OnPiece>
  void split(std::string_view text, OnPiece&& on_piece) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create(1, nullptr), &pcre2_match_data_free);
    ALEM_CHECK(match != nullptr, "tokenizer: out of memory for regex match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, 0, match.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_JIT, match.get(), nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) {
        on_piece(text.substr(pos), false);
        return;
      }
      if (rc < 0) ALEM_FAIL("tokenizer: pre-tokenizer regex failed: " + error_message(rc));
      const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
      size_t start = range[0], end = range[1];
      if (start > pos) on_piece(text.substr(pos, start - pos), false);
      if (end == start) end = start + 1;  // the patterns never match empty; never loop forever
      on_piece(text.substr(start, end - start), true);
      pos = end;
    }
  }

 private:
  static std::string error_message(int code) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(code, buffer, sizeof(buffer));
    return reinterpret_cast<const char*>(buffer);
  }
  pcre2_code* code_ = nullptr;
};

struct MergeRule {
  int32_t rank;
  int32_t merged_id;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct TransparentStringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// One BPE symbol in the doubly linked list of a word (HF's Symbol).
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  int32_t length;  // bytes covered; 0 once merged into its left neighbour
};

// A candidate merge in the heap (HF's Merge): lowest rank first, then leftmost position.
struct MergeCandidate {
  int32_t position;
  int32_t rank;
  int32_t merged_id;
};
struct CandidateAfter {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    return a.rank != b.rank ? a.rank > b.rank : a.position > b.position;
  }
};

constexpr size_t kMaxCachedPieceBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

}  // namespace

struct Tokenizer::Impl {
  std::string pre_tokenizer_name;
  std::vector<std::string> pieces;       // id -> vocabulary spelling
  std::vector<std::string> token_bytes;  // id -> raw bytes it decodes to
  std::vector<TokenKind> kinds;
  std::unordered_map<std::string, int32_t, TransparentStringHash, std::equal_to<>> id_of_piece;
  std::array<int32_t, 256> id_of_byte{};  // -1 when a byte has no single-symbol token
  std::unordered_map<uint64_t, MergeRule> merges;
  int32_t bos = -1, eos = -1;

  // Added tokens, longest first, bucketed by first byte for the scan.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;

  std::unique_ptr<PieceRegex> piece_regex;
  std::unique_ptr<PieceRegex> number_regex;  // \p{N}, only for isolate_numbers

  mutable std::shared_mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, TransparentStringHash,
                             std::equal_to<>>
      cache;

  void check_id(int32_t id) const {
    ALEM_CHECK(id >= 0 && static_cast<size_t>(id) < pieces.size(),
               "tokenizer: token id " + std::to_string(id) + " out of range [0, " +
                   std::to_string(pieces.size()) + ")");
  }

  // Calls on_piece for every pre-tokenizer piece of a stretch of ordinary text.
  template <typename OnPiece>
  void for_each_piece(std::string_view text, OnPiece&& on_piece) const {
    auto split_words = [&](std::string_view stretch) {
      piece_regex->split(stretch, [&](std::string_view piece, bool) { on_piece(piece); });
    };
    if (!number_regex) {
      split_words(text);
      return;
    }
    // HF Digits(individual_digits=true): every number code point is its own piece, and the
    // word regex runs on each stretch between them (so a stretch ends where a digit starts).
    number_regex->split(text, [&](std::string_view piece, bool is_number) {
      if (is_number) {
        on_piece(piece);
      } else {
        split_words(piece);
      }
    });
  }

  // BPE of one piece, appended to `out` (HF's Word::merge_all).
  void merge_piece(std::string_view piece, std::vector<int32_t>& out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(piece.size());
    for (unsigned char byte : piece) {
      const int32_t id = id_of_byte[byte];
      if (id < 0) continue;  // HF drops symbols missing from the vocabulary when there is no unk
      const auto index = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, index - 1, index + 1, 1});
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    std::vector<MergeCandidate> heap;
    auto push_candidate = [&](int32_t position, int32_t left, int32_t right) {
      const auto it = merges.find(pair_key(left, right));
      if (it == merges.end()) return;
      heap.push_back({position, it->second.rank, it->second.merged_id});
      std::push_heap(heap.begin(), heap.end(), CandidateAfter{});
    };
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      push_candidate(static_cast<int32_t>(i), symbols[i].id, symbols[i + 1].id);
    }
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), CandidateAfter{});
      const MergeCandidate top = heap.back();
      heap.pop_back();
      Symbol& left = symbols[top.position];
      if (left.length == 0 || left.next == -1) continue;
      const Symbol right = symbols[left.next];
      const auto rule = merges.find(pair_key(left.id, right.id));
      if (rule == merges.end() || rule->second.merged_id != top.merged_id) continue;  // stale
      symbols[left.next].length = 0;
      left.id = top.merged_id;
      left.length += right.length;
      left.next = right.next;
      if (right.next != -1) symbols[right.next].prev = top.position;
      if (left.prev != -1) push_candidate(left.prev, symbols[left.prev].id, left.id);
      if (left.next != -1) push_candidate(top.position, left.id, symbols[left.next].id);
    }
    for (int32_t i = 0; i != -1; i = symbols[i].next) out.push_back(symbols[i].id);
  }

  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.size() == 1) {
      const int32_t id = id_of_byte[static_cast<unsigned char>(piece[0])];
      if (id >= 0) out.push_back(id);
      return;
    }
    const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
    if (cacheable) {
      std::shared_lock lock(cache_mutex);
      const auto it = cache.find(piece);
      if (it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t first = out.size();
    merge_piece(piece, out);
    if (cacheable) {
      std::vector<int32_t> ids(out.begin() + static_cast<std::ptrdiff_t>(first), out.end());
      std::unique_lock lock(cache_mutex);
      if (cache.size() >= kMaxCacheEntries) cache.clear();
      cache.emplace(std::string(piece), std::move(ids));
    }
  }

  void encode_text(std::string_view text, std::vector<int32_t>& out) const {
    for_each_piece(text, [&](std::string_view piece) { encode_piece(piece, out); });
  }

  // Length of the added token matched at text[pos], or 0. Longest wins.
  size_t added_token_at(std::string_view text, size_t pos, bool parse_special, int32_t& id) const {
    for (int32_t candidate : added_by_first_byte[static_cast<unsigned char>(text[pos])]) {
      if (!parse_special && kinds[candidate] == TokenKind::Control) continue;
      const std::string& literal = token_bytes[candidate];
      if (text.compare(pos, literal.size(), literal) == 0) {
        id = candidate;
        return literal.size();
      }
    }
    return 0;
  }
};

Tokenizer::Tokenizer(const TokenizerData& data) : impl_(std::make_unique<Impl>()) {
  Impl& t = *impl_;
  ALEM_CHECK(data.model == "gpt2", "tokenizer: model '" + data.model +
                                       "' is not supported (only byte-level BPE, 'gpt2')");
  ALEM_CHECK(!data.tokens.empty(), "tokenizer: the vocabulary is empty");
  ALEM_CHECK(data.token_kinds.empty() || data.token_kinds.size() == data.tokens.size(),
             "tokenizer: " + std::to_string(data.token_kinds.size()) + " token kinds for " +
                 std::to_string(data.tokens.size()) + " tokens");
  const size_t count = data.tokens.size();
  ALEM_CHECK(count < (1u << 31), "tokenizer: vocabulary too large");
  t.pre_tokenizer_name = data.pre_tokenizer;
  t.pieces = data.tokens;
  t.kinds.resize(count, TokenKind::Normal);
  t.token_bytes.resize(count);
  t.id_of_piece.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (!data.token_kinds.empty()) t.kinds[i] = static_cast<TokenKind>(data.token_kinds[i]);
    t.id_of_piece.emplace(t.pieces[i], id);  // the first spelling wins, like a JSON vocab map
    const bool added = t.kinds[i] == TokenKind::Control || t.kinds[i] == TokenKind::UserDefined;
    // Added tokens are literal text; others are byte-level spellings (HF's ByteLevel decoder
    // falls back to the literal text when a spelling has characters outside the alphabet).
    if (added || !byte_level_to_bytes(t.pieces[i], t.token_bytes[i])) {
      t.token_bytes[i] = t.pieces[i];
    }
    if (added && !t.pieces[i].empty()) {
      t.added_by_first_byte[static_cast<unsigned char>(t.pieces[i][0])].push_back(id);
    }
  }
  for (auto& bucket : t.added_by_first_byte) {
    std::stable_sort(bucket.begin(), bucket.end(), [&](int32_t a, int32_t b) {
      return t.token_bytes[a].size() > t.token_bytes[b].size();
    });
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = t.id_of_piece.find(bytes_to_byte_level(std::string(1, static_cast<char>(b))));
    t.id_of_byte[b] = it == t.id_of_piece.end() ? -1 : it->second;
  }
  t.merges.reserve(data.merges.size());
  for (size_t rank = 0; rank < data.merges.size(); ++rank) {
    const std::string& merge = data.merges[rank];
    const size_t space = merge.find(' ');
    ALEM_CHECK(space != std::string::npos && space > 0 && space + 1 < merge.size(),
               "tokenizer: merge #" + std::to_string(rank) + " is not 'left right'");
    const std::string_view left(merge.data(), space);
    const std::string_view right(merge.data() + space + 1, merge.size() - space - 1);
    const auto left_it = t.id_of_piece.find(left);
    const auto right_it = t.id_of_piece.find(right);
    const auto merged_it = t.id_of_piece.find(std::string(left) + std::string(right));
    ALEM_CHECK(left_it != t.id_of_piece.end() && right_it != t.id_of_piece.end() &&
                   merged_it != t.id_of_piece.end(),
               "tokenizer: merge #" + std::to_string(rank) + " uses a token not in the vocabulary");
    // Like HF, a repeated pair keeps the rank of its last occurrence.
    t.merges.insert_or_assign(pair_key(left_it->second, right_it->second),
                              MergeRule{static_cast<int32_t>(rank), merged_it->second});
  }
  const PreTokenizerRules rules = rules_for(data.pre_tokenizer);
  t.piece_regex = std::make_unique<PieceRegex>(rules.pattern);
  if (rules.isolate_numbers) t.number_regex = std::make_unique<PieceRegex>(R"(\p{N})");
  auto valid_or_none = [&](int id) {
    return id >= 0 && static_cast<size_t>(id) < count ? static_cast<int32_t>(id) : -1;
  };
  t.bos = valid_or_none(data.bos_token_id);
  t.eos = valid_or_none(data.eos_token_id);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  size_t stretch_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t added_id = -1;
    const size_t length = t.added_by_first_byte[static_cast<unsigned char>(text[pos])].empty()
                              ? 0
                              : t.added_token_at(text, pos, parse_special, added_id);
    if (length == 0) {
      ++pos;
      continue;
    }
    t.encode_text(text.substr(stretch_start, pos - stretch_start), ids);
    ids.push_back(added_id);
    pos += length;
    stretch_start = pos;
  }
  t.encode_text(text.substr(stretch_start), ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::string out;
  for (int32_t id : ids) {
    t.check_id(id);
    if (skip_special && t.kinds[id] == TokenKind::Control) continue;
    out += t.token_bytes[id];
  }
  return out;
}

const std::string& Tokenizer::token_text(int32_t id) const {
  impl_->check_id(id);
  return impl_->token_bytes[id];
}

const std::string& Tokenizer::token_piece(int32_t id) const {
  impl_->check_id(id);
  return impl_->pieces[id];
}

int32_t Tokenizer::token_id(std::string_view text) const {
  const auto it = impl_->id_of_piece.find(text);
  return it == impl_->id_of_piece.end() ? -1 : it->second;
}

TokenKind Tokenizer::token_kind(int32_t id) const {
  impl_->check_id(id);
  return impl_->kinds[id];
}

bool Tokenizer::is_control(int32_t id) const {
  return token_kind(id) == TokenKind::Control;
}

int32_t Tokenizer::vocab_size() const {
  return static_cast<int32_t>(impl_->pieces.size());
}
int32_t Tokenizer::bos_id() const {
  return impl_->bos;
}
int32_t Tokenizer::eos_id() const {
  return impl_->eos;
}
const std::string& Tokenizer::pre_tokenizer() const {
  return impl_->pre_tokenizer_name;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  impl_->for_each_piece(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

std::string StreamingDecoder::push(int32_t id) {
  if (skip_special_ && tokenizer_->is_control(id)) return {};
  pending_ += tokenizer_->token_text(id);
  std::string ready;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Sequence seq = scan_utf8(std::string_view(pending_).substr(pos));
    if (seq.status == Utf8Status::Incomplete) break;  // wait for the next token
    if (seq.status == Utf8Status::Complete) {
      ready.append(pending_, pos, seq.length);
    } else {
      append_utf8(ready, 0xFFFD);
    }
    pos += seq.length;
  }
  pending_.erase(0, pos);
  return ready;
}

std::string StreamingDecoder::flush() {
  std::string rest = sanitize_utf8(pending_);
  pending_.clear();
  return rest;
}

}  // namespace alem
