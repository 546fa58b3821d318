// Bearer-token check for the gateway (see the header).
#include "serve/api_key.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cctype>
#include <fstream>
#include <sstream>

#include "core/aligned_buffer.h"
#include "core/error.h"

namespace alem::serve {
namespace {

std::array<unsigned char, 32> sha256(std::string_view text) {
  std::array<unsigned char, 32> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest.data());
  return digest;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

}  // namespace

ApiKey::ApiKey(std::string_view key) : enabled_(!key.empty()), digest_(sha256(key)) {}

bool ApiKey::accepts(std::string_view authorization) const {
  if (!enabled_) return true;
  authorization = trim(authorization);
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() < kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return false;
  }
  const std::array<unsigned char, 32> given = sha256(trim(authorization.substr(kScheme.size())));
  return CRYPTO_memcmp(given.data(), digest_.data(), given.size()) == 0;
}

std::string read_api_key_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in.good(), "cannot read the API key file " + path);
  std::stringstream content;
  content << in.rdbuf();
  std::string text = content.str();
  std::string_view first = text;
  first = first.substr(0, first.find('\n'));
  std::string key(trim(first));
  secure_wipe(text.data(), text.size());
  ALEM_CHECK(!key.empty(), "the API key file " + path + " holds no key");
  return key;
}

}  // namespace alem::serve
