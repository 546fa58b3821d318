// Sealed envelopes for the network queue. A client seals each request to the provider's X25519
// public key; the provider seals each answer chunk to the client's X25519 key. Only the holder
// of the recipient's secret key can open an envelope, and any change to it (or to the request id
// and purpose it is bound to) makes opening fail. The queue in between sees only ciphertext.
//
// Construction (version 1, libsodium), also written out in docs/protocol.md:
//   eph            = fresh X25519 keypair for every envelope
//   shared         = X25519(eph.secret, recipient_public)            (all-zero result refused)
//   key            = first 32 bytes of BLAKE2b-512("alem-seal-v1" 0x00 || shared ||
//                    eph.public || recipient_public)
//   nonce          = 24 random bytes
//   ad             = request_id (32 bytes) || purpose (ASCII)
//   ciphertext     = XChaCha20-Poly1305-IETF(key, nonce, ad, plaintext)   (16-byte tag at end)
//   recipient_key_id = first 8 bytes of SHA-256(recipient_public)
// serialized as the SealedEnvelope message of provider.proto.
//
// Purposes: kPurposeRequest for a request, chunk_purpose(sequence) for answer chunk `sequence`,
// so a chunk cannot be moved to another request or another position.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace alem::network {

inline constexpr size_t kX25519KeyBytes = 32;
inline constexpr size_t kRequestIdBytes = 32;
inline constexpr size_t kEnvelopeNonceBytes = 24;
inline constexpr size_t kEnvelopeTagBytes = 16;
inline constexpr size_t kRecipientKeyIdBytes = 8;
inline constexpr uint32_t kEnvelopeVersion = 1;
inline constexpr std::string_view kPurposeRequest = "alem-request-v1";

using X25519PublicKey = std::array<uint8_t, kX25519KeyBytes>;
using RequestId = std::array<uint8_t, kRequestIdBytes>;

// The purpose string that binds answer chunk `sequence`: "alem-answer-chunk-v1/<sequence>".
std::string chunk_purpose(uint32_t sequence);

// An X25519 keypair. The secret key is wiped when the object is destroyed.
class X25519KeyPair {
 public:
  // A fresh random keypair.
  static X25519KeyPair generate();
  // Rebuilds the keypair from its 32-byte secret key (the public key is derived).
  static X25519KeyPair from_secret(const uint8_t* secret, size_t size);

  X25519KeyPair(const X25519KeyPair& other);
  X25519KeyPair& operator=(const X25519KeyPair& other);
  ~X25519KeyPair();

  const X25519PublicKey& public_key() const { return public_; }
  const std::array<uint8_t, kX25519KeyBytes>& secret_key() const { return secret_; }

 private:
  X25519KeyPair() = default;
  X25519PublicKey public_{};
  std::array<uint8_t, kX25519KeyBytes> secret_{};
};

// First 8 bytes of SHA-256(public key): names the recipient in an envelope.
std::array<uint8_t, kRecipientKeyIdBytes> recipient_key_id(const X25519PublicKey& public_key);

// Seals `plaintext` to `recipient` and returns the serialized SealedEnvelope. `request_id` must
// be 32 bytes; throws alem::Error otherwise.
std::string seal(const X25519PublicKey& recipient, std::string_view request_id,
                 std::string_view purpose, std::string_view plaintext);

// Plaintext out of an envelope. Move-only; the bytes are wiped (sodium_memzero) when it is
// destroyed or moved from, so plaintext lives only as long as the request that owns it.
class OpenedPayload {
 public:
  OpenedPayload() = default;
  explicit OpenedPayload(std::string bytes) : bytes_(std::move(bytes)) {}
  OpenedPayload(OpenedPayload&& other) noexcept;
  OpenedPayload& operator=(OpenedPayload&& other) noexcept;
  OpenedPayload(const OpenedPayload&) = delete;
  OpenedPayload& operator=(const OpenedPayload&) = delete;
  ~OpenedPayload();

  std::string_view view() const { return bytes_; }
  size_t size() const { return bytes_.size(); }
  // Wipes the bytes now.
  void wipe();

 private:
  std::string bytes_;
};

enum class OpenError {
  kNone = 0,
  kBadEnvelope,     // not a parseable version-1 envelope (sizes, fields, version)
  kWrongRecipient,  // sealed to another key (recipient_key_id differs)
  kTampered,        // authentication failed: ciphertext, nonce, key, request id or purpose changed
};
const char* open_error_name(OpenError error);

struct OpenResult {
  OpenError error = OpenError::kNone;
  std::string message;  // why, when error != kNone; never contains plaintext
  OpenedPayload payload;
  bool ok() const { return error == OpenError::kNone; }
};

// Opens a serialized SealedEnvelope with the recipient's keypair. Never throws on bad input:
// every failure comes back as an OpenError with a message.
OpenResult open_envelope(const X25519KeyPair& recipient, std::string_view request_id,
                         std::string_view purpose, std::string_view envelope_bytes);

// Wipes a std::string's bytes (for buffers that held plaintext) and clears it.
void wipe_string(std::string& bytes);

}  // namespace alem::network
