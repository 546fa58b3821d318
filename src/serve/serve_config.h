// The server settings file that the Slurm job passes to `alem serve --config FILE` (written by
// slurm/alem-serve.sbatch and the serve template from the job spec):
//
//   [network]  host = "127.0.0.1", port = 8000, metrics_port = 9400, queue = "",
//              queue_ca = "ca.pem", provider_key = "alem-provider.key",
//              usage_journal = "alem-usage.journal"
//              (queue: one "HOST:PORT" or an array of them: the network queue endpoints the
//              provider client dials, docs/protocol.md)
//   [limits]   max_batch_tokens = 8192, max_concurrent_requests = 256,
//              max_context_tokens = 8192, drain_seconds = 270
//
// Every key is optional; command-line flags override what the file says. Other tables are left
// to other parts of alem and ignored here; an unknown key inside these two tables, or a value
// of the wrong type, is an error (a typo must not silently fall back to a default).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace alem::serve {

struct ServeConfigFile {
  std::optional<std::string> host;
  std::optional<int> port;
  std::optional<int> metrics_port;
  std::optional<std::string> queue;          // the network pull queue as written (a string), or the
                                             // first endpoint when the file gives an array
  std::vector<std::string> queue_endpoints;  // every endpoint (empty strings left out)
  std::optional<std::string> queue_ca;       // PEM CA file for the queue's TLS
  std::optional<std::string> provider_key;   // provider key file (network/provider_keys.h)
  std::optional<std::string> usage_journal;  // usage journal file (network/usage_journal.h)
  std::optional<int> max_batch_tokens;
  std::optional<int> max_concurrent_requests;  // sequences running at once (--max-num-seqs)
  std::optional<int> max_context_tokens;       // --max-model-len
  std::optional<int> drain_seconds;
};

// Throws alem::Error naming the file and line for unreadable or malformed TOML, unknown keys in
// [network]/[limits], wrong types, and negative numbers.
ServeConfigFile load_serve_config(const std::string& path);
ServeConfigFile parse_serve_config(std::string_view toml_text, const std::string& source_name);

}  // namespace alem::serve
