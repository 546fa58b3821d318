// The gateway's API key: who may call the OpenAI API. A client sends `Authorization: Bearer
// <key>`; the key is compared in constant time (both sides hashed with SHA-256, then
// CRYPTO_memcmp), so neither its length nor its bytes leak through timing. The key itself is
// kept only as its hash. Operators pass it as a file (--api-key-file, so it never shows in
// `ps`), the ALEM_API_KEY environment variable, or --api-key (docs/operations.md).
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace alem::serve {

class ApiKey {
 public:
  ApiKey() = default;  // no key: every request is let through
  // Keeps SHA-256(key). An empty key means no authentication.
  explicit ApiKey(std::string_view key);

  bool enabled() const { return enabled_; }
  // True when authentication is off, or `authorization` (the header's value) is
  // "Bearer <the key>" (the scheme in any case, as RFC 7235 says).
  bool accepts(std::string_view authorization) const;

 private:
  bool enabled_ = false;
  std::array<unsigned char, 32> digest_{};
};

// The key from a file: its first line, without surrounding whitespace. Throws alem::Error naming
// the path when it cannot be read or holds no key. Never logs or returns the key in an error.
std::string read_api_key_file(const std::string& path);

}  // namespace alem::serve
