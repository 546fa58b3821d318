// The client side of the reference network simulator: it plays the people who send requests
// through the network. Each request is an OpenAI-shaped body (a mix of /v1/completions and
// /v1/chat/completions, streaming, greedy and sampled), sealed to the provider's registered
// X25519 key under a fresh 256-bit request id, with a fresh X25519 key of the client's own for
// the answer. When an answer comes back, every sealed chunk is opened with that key and the
// whole answer is checked: chunks in sequence, each well-formed JSON, a finish_reason, usage
// consistent with the chunks and the request, and for greedy requests given with an expected
// text, that text exactly.
//
// Request text is the simulator's own test data; opened answer text is wiped after checking.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "network/netsim_queue.h"
#include "network/sealing.h"

namespace alem::netsim {

// One request to send. `body` is the JSON body without model/stream keys (the generator adds
// them); `expect_text`, when set, is the exact completion a greedy request must produce.
struct RequestTemplate {
  std::string endpoint;  // "/v1/completions" or "/v1/chat/completions"
  std::string body;      // JSON object text
  std::optional<std::string> expect_text;
};

struct LoadConfig {
  uint64_t requests = 8;
  uint64_t seed = 1;
  std::string model;          // the name put into every body
  uint32_t max_tokens = 8;    // for the built-in mix
  std::string requests_file;  // JSON lines: {"endpoint", "body", "expect_text"?}; empty: built-in
};

// The built-in mix: short prompts, alternating endpoints, every other request greedy, the rest
// sampled with a per-request seed.
std::vector<RequestTemplate> builtin_request_mix(uint32_t max_tokens);
// Reads a JSON-lines request file. Throws alem::Error naming the line for a bad entry.
std::vector<RequestTemplate> read_request_file(const std::string& path);

struct Verdict {
  bool ok = false;
  std::string reason;  // when !ok: what was wrong (never answer text)
  uint32_t completion_tokens = 0;
};

class LoadGenerator {
 public:
  LoadGenerator(const LoadConfig& config, const network::X25519PublicKey& provider_key);
  ~LoadGenerator();
  LoadGenerator(const LoadGenerator&) = delete;
  LoadGenerator& operator=(const LoadGenerator&) = delete;

  size_t size() const { return requests_.size(); }
  const std::string& request_id(size_t index) const;
  // The index of a request id, or -1.
  long index_of(const std::string& request_id) const;
  const std::string& model() const { return config_.model; }

  // A fresh sealing of request `index` to the provider key (new ephemeral key and nonce).
  std::string seal(size_t index) const;
  // The same request sealed to another key (a wrongly addressed envelope).
  std::string seal_to(size_t index, const network::X25519PublicKey& recipient) const;
  // The provider re-registered with another sealing key: later sealings use it.
  void set_provider_key(const network::X25519PublicKey& key) { provider_key_ = key; }

  // Opens and checks an answer: the sealed chunks by sequence and the final message.
  Verdict verify(const std::string& request_id, const std::map<uint32_t, std::string>& chunks,
                 const FinalReport& final_report) const;

 private:
  struct ClientRequest;
  std::string payload_bytes(const ClientRequest& r) const;

  LoadConfig config_;
  network::X25519PublicKey provider_key_;
  std::vector<std::unique_ptr<ClientRequest>> requests_;
  std::map<std::string, size_t> index_;
};

}  // namespace alem::netsim
