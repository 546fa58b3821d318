// Stop strings are matched on decoded text, not on tokens (a stop string may start in the middle
// of one token and end in another). While streaming, text that could still turn out to be the
// beginning of a stop string is held back, so the client never receives part of a stop string
// that is then removed. Like vLLM, the stop string itself is left out of the output unless
// include_stop_str_in_output.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace alem::serve {

class StopStringFilter {
 public:
  StopStringFilter(std::vector<std::string> stops, bool include_stop_in_output);
  ~StopStringFilter();  // wipes the held-back text and the stop strings

  // Adds newly decoded text (valid UTF-8). Returns the text that can now be sent: everything
  // that can no longer be part of a stop string, cut at a character boundary. After a match,
  // returns the text up to the earliest stop string (plus the stop string when included) and
  // stopped() becomes true; later calls return "".
  std::string push(std::string_view text);
  // At the end of generation without a match: the held-back remainder.
  std::string finish();
  bool stopped() const { return stopped_; }
  // Index (in the constructor's list) of the stop string that matched, -1 before a match.
  int matched_index() const { return matched_index_; }

 private:
  std::vector<std::string> stops_;
  bool include_stop_;
  size_t hold_back_ = 0;  // longest stop string length - 1
  std::string pending_;   // decoded, not yet released
  bool stopped_ = false;
  int matched_index_ = -1;
};

}  // namespace alem::serve
