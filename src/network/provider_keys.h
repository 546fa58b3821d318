// The provider's long-lived keys, kept in one key file so a job that is killed and requeued
// comes back as the same provider: the Ed25519 identity key the network knows it by, and the
// X25519 sealing key clients seal requests to (a redelivered request sealed before the restart
// must still open after it).
//
// Key file format (104 bytes, binary, mode 0600):
//   "alem-pk1"            8 bytes magic and version
//   ed25519 seed          32 bytes
//   x25519 secret key     32 bytes
//   checksum              32 bytes BLAKE2b-256 of the 72 bytes before it
// Public keys are derived on load. The file is created atomically (written to a temporary file
// beside it, fsync'd, then linked into place) and refused when group or others can read it.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "network/sealing.h"

namespace alem::network {

inline constexpr size_t kEd25519PublicKeyBytes = 32;
inline constexpr size_t kEd25519SignatureBytes = 64;
using Ed25519PublicKey = std::array<uint8_t, kEd25519PublicKeyBytes>;
using Ed25519Signature = std::array<uint8_t, kEd25519SignatureBytes>;

class ProviderKeys {
 public:
  // Fresh random keys (not written anywhere).
  static ProviderKeys generate();
  // Loads `path`, or creates it (mode 0600) with fresh keys when it does not exist. `created`
  // (optional) tells which happened. Throws alem::Error with the reason for a file that is
  // short, corrupt, of another format, or readable by group/others.
  static ProviderKeys load_or_create(const std::string& path, bool* created = nullptr);
  // Loads an existing key file; throws alem::Error when missing or bad.
  static ProviderKeys load(const std::string& path);
  // Writes the keys to `path` (mode 0600, atomically); throws when `path` already exists.
  void save_new(const std::string& path) const;

  ProviderKeys(const ProviderKeys& other);
  ProviderKeys& operator=(const ProviderKeys& other);
  ~ProviderKeys();

  const Ed25519PublicKey& identity_public_key() const { return identity_public_; }
  const X25519KeyPair& sealing() const { return sealing_; }
  // Ed25519 signature over `message` with the identity key.
  Ed25519Signature sign(std::string_view message) const;

 private:
  ProviderKeys(const uint8_t* seed, const uint8_t* x25519_secret);
  std::array<uint8_t, 32> identity_seed_{};
  std::array<uint8_t, 64> identity_secret_{};
  Ed25519PublicKey identity_public_{};
  X25519KeyPair sealing_;
};

// True when `signature` is a valid Ed25519 signature of `message` under `public_key`.
bool verify_identity_signature(const Ed25519PublicKey& public_key, std::string_view message,
                               const Ed25519Signature& signature);

}  // namespace alem::network
