// Reads the [network] and [limits] tables of a server settings file (see the header).
#include "serve/serve_config.h"

#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "core/error.h"

namespace alem::serve {
namespace {

class TableReader {
 public:
  TableReader(const toml::table* table, std::string name, std::string source,
              std::set<std::string> known)
      : table_(table), name_(std::move(name)), source_(std::move(source)) {
    if (!table_) return;
    for (const auto& [key, node] : *table_) {
      ALEM_CHECK(known.count(std::string(key.str())) != 0,
                 source_ + ": unknown key [" + name_ + "] " + std::string(key.str()) + " (line " +
                     std::to_string(node.source().begin.line) + ")");
    }
  }

  void read(const char* key, std::optional<std::string>& out) const {
    const toml::node* node = table_ ? table_->get(key) : nullptr;
    if (!node) return;
    auto value = node->value_exact<std::string>();
    if (!value) wrong_type(*node, key, "a string");
    out = *value;
  }
  // A string or an array of strings: `first` gets the string (or the array's first entry),
  // `all` every non-empty entry.
  void read_list(const char* key, std::optional<std::string>& first,
                 std::vector<std::string>& all) const {
    const toml::node* node = table_ ? table_->get(key) : nullptr;
    if (!node) return;
    if (auto value = node->value_exact<std::string>()) {
      first = *value;
      if (!value->empty()) all.push_back(*value);
      return;
    }
    const toml::array* array = node->as_array();
    if (!array) wrong_type(*node, key, "a string or an array of strings");
    for (const toml::node& item : *array) {
      auto value = item.value_exact<std::string>();
      if (!value) wrong_type(item, key, "a string or an array of strings");
      if (!first) first = *value;
      if (!value->empty()) all.push_back(*value);
    }
  }
  void read(const char* key, std::optional<int>& out) const {
    const toml::node* node = table_ ? table_->get(key) : nullptr;
    if (!node) return;
    auto value = node->value_exact<int64_t>();
    if (!value || *value < 0 || *value > std::numeric_limits<int>::max()) {
      wrong_type(*node, key, "a non-negative integer");
    }
    out = static_cast<int>(*value);
  }

 private:
  [[noreturn]] void wrong_type(const toml::node& node, const char* key, const char* what) const {
    ALEM_FAIL(source_ + ": [" + name_ + "] " + key + " must be " + what + " (line " +
              std::to_string(node.source().begin.line) + ")");
  }

  const toml::table* table_;
  std::string name_;
  std::string source_;
};

}  // namespace

ServeConfigFile parse_serve_config(std::string_view toml_text, const std::string& source_name) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& e) {
    const auto& at = e.source().begin;
    ALEM_FAIL(source_name + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) +
              ": not valid TOML: " + std::string(e.description()));
  }
  ServeConfigFile c;
  const TableReader network(
      root["network"].as_table(), "network", source_name,
      {"host", "port", "metrics_port", "queue", "queue_ca", "provider_key", "usage_journal"});
  network.read("host", c.host);
  network.read("port", c.port);
  network.read("metrics_port", c.metrics_port);
  network.read_list("queue", c.queue, c.queue_endpoints);
  network.read("queue_ca", c.queue_ca);
  network.read("provider_key", c.provider_key);
  network.read("usage_journal", c.usage_journal);
  const TableReader limits(
      root["limits"].as_table(), "limits", source_name,
      {"max_batch_tokens", "max_concurrent_requests", "max_context_tokens", "drain_seconds"});
  limits.read("max_batch_tokens", c.max_batch_tokens);
  limits.read("max_concurrent_requests", c.max_concurrent_requests);
  limits.read("max_context_tokens", c.max_context_tokens);
  limits.read("drain_seconds", c.drain_seconds);
  return c;
}

ServeConfigFile load_serve_config(const std::string& path) {
  std::ifstream in(path);
  ALEM_CHECK(in, "cannot read the server config " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_serve_config(text.str(), path);
}

}  // namespace alem::serve
