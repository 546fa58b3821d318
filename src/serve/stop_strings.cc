// Incremental stop-string matching with hold-back (see the header).
#include "serve/stop_strings.h"

#include <algorithm>

#include "core/aligned_buffer.h"

namespace alem::serve {
namespace {

bool is_utf8_continuation(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

}  // namespace

StopStringFilter::StopStringFilter(std::vector<std::string> stops, bool include_stop_in_output)
    : stops_(std::move(stops)), include_stop_(include_stop_in_output) {
  for (const std::string& s : stops_) hold_back_ = std::max(hold_back_, s.size() - 1);
}

StopStringFilter::~StopStringFilter() {
  secure_wipe(pending_.data(), pending_.size());
  for (std::string& s : stops_) secure_wipe(s.data(), s.size());
}

std::string StopStringFilter::push(std::string_view text) {
  if (stopped_) return {};
  if (stops_.empty()) return std::string(text);
  // Only a stop string that ends inside the new text can be new; it starts at most
  // hold_back_ bytes before it, and those bytes are all still pending.
  const size_t search_from = pending_.size() > hold_back_ ? pending_.size() - hold_back_ : 0;
  pending_.append(text);
  size_t best = std::string::npos, best_len = 0;
  int best_index = -1;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const std::string& s = stops_[i];
    const size_t at = pending_.find(s, search_from);
    if (at != std::string::npos && (at < best || (at == best && s.size() > best_len))) {
      best = at;
      best_len = s.size();
      best_index = static_cast<int>(i);
    }
  }
  std::string out;
  if (best != std::string::npos) {
    stopped_ = true;
    matched_index_ = best_index;
    out = pending_.substr(0, best + (include_stop_ ? best_len : 0));
    secure_wipe(pending_.data(), pending_.size());
    pending_.clear();
    return out;
  }
  if (pending_.size() <= hold_back_) return out;
  size_t cut = pending_.size() - hold_back_;
  while (cut > 0 && is_utf8_continuation(pending_[cut])) --cut;  // whole characters only
  out = pending_.substr(0, cut);
  secure_wipe(pending_.data(), cut);
  pending_.erase(0, cut);
  return out;
}

std::string StopStringFilter::finish() {
  if (stopped_) return {};
  std::string out = std::move(pending_);
  pending_.clear();
  return out;
}

}  // namespace alem::serve
