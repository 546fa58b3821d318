// Sealed envelopes (see sealing.h for the construction): X25519 + BLAKE2b key derivation +
// XChaCha20-Poly1305-IETF from libsodium, framed as provider.proto's SealedEnvelope.
#include "network/sealing.h"

#include <sodium.h>

#include <cstring>

#include "core/error.h"
#include "network/provider.pb.h"

namespace alem::network {
namespace {

constexpr std::string_view kKdfLabel{"alem-seal-v1\0", 13};

void ensure_sodium() {
  static const bool ready = sodium_init() >= 0;
  ALEM_CHECK(ready, "libsodium failed to initialise");
}

// key = first 32 bytes of BLAKE2b-512(label || shared || eph_pub || recipient_pub).
bool derive_key(const uint8_t* shared, const uint8_t* eph_pub, const uint8_t* recipient_pub,
                uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES]) {
  crypto_generichash_state state;
  uint8_t full[64];
  bool ok = crypto_generichash_init(&state, nullptr, 0, sizeof full) == 0 &&
            crypto_generichash_update(&state, reinterpret_cast<const uint8_t*>(kKdfLabel.data()),
                                      kKdfLabel.size()) == 0 &&
            crypto_generichash_update(&state, shared, crypto_scalarmult_BYTES) == 0 &&
            crypto_generichash_update(&state, eph_pub, kX25519KeyBytes) == 0 &&
            crypto_generichash_update(&state, recipient_pub, kX25519KeyBytes) == 0 &&
            crypto_generichash_final(&state, full, sizeof full) == 0;
  std::memcpy(key, full, crypto_aead_xchacha20poly1305_ietf_KEYBYTES);
  sodium_memzero(full, sizeof full);
  sodium_memzero(&state, sizeof state);
  return ok;
}

std::string associated_data(std::string_view request_id, std::string_view purpose) {
  std::string ad;
  ad.reserve(request_id.size() + purpose.size());
  ad.append(request_id);
  ad.append(purpose);
  return ad;
}

}  // namespace

std::string chunk_purpose(uint32_t sequence) {
  return "alem-answer-chunk-v1/" + std::to_string(sequence);
}

void wipe_string(std::string& bytes) {
  bytes.resize(bytes.capacity());
  if (!bytes.empty()) sodium_memzero(bytes.data(), bytes.size());
  bytes.clear();
}

X25519KeyPair X25519KeyPair::generate() {
  ensure_sodium();
  X25519KeyPair pair;
  crypto_box_keypair(pair.public_.data(), pair.secret_.data());
  return pair;
}

X25519KeyPair X25519KeyPair::from_secret(const uint8_t* secret, size_t size) {
  ensure_sodium();
  ALEM_CHECK(size == kX25519KeyBytes,
             "an X25519 secret key is 32 bytes, got " + std::to_string(size));
  X25519KeyPair pair;
  std::memcpy(pair.secret_.data(), secret, kX25519KeyBytes);
  ALEM_CHECK(crypto_scalarmult_base(pair.public_.data(), pair.secret_.data()) == 0,
             "cannot derive the X25519 public key");
  return pair;
}

X25519KeyPair::X25519KeyPair(const X25519KeyPair& other)
    : public_(other.public_), secret_(other.secret_) {}

X25519KeyPair& X25519KeyPair::operator=(const X25519KeyPair& other) {
  public_ = other.public_;
  secret_ = other.secret_;
  return *this;
}

X25519KeyPair::~X25519KeyPair() {
  sodium_memzero(secret_.data(), secret_.size());
}

std::array<uint8_t, kRecipientKeyIdBytes> recipient_key_id(const X25519PublicKey& public_key) {
  ensure_sodium();
  uint8_t digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, public_key.data(), public_key.size());
  std::array<uint8_t, kRecipientKeyIdBytes> id{};
  std::memcpy(id.data(), digest, id.size());
  return id;
}

std::string seal(const X25519PublicKey& recipient, std::string_view request_id,
                 std::string_view purpose, std::string_view plaintext) {
  ensure_sodium();
  ALEM_CHECK(request_id.size() == kRequestIdBytes,
             "a request id is 32 bytes, got " + std::to_string(request_id.size()));
  X25519KeyPair eph = X25519KeyPair::generate();
  uint8_t shared[crypto_scalarmult_BYTES];
  if (crypto_scalarmult(shared, eph.secret_key().data(), recipient.data()) != 0) {
    sodium_memzero(shared, sizeof shared);
    ALEM_FAIL("cannot seal to this X25519 public key (a low-order point)");
  }
  uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
  bool derived = derive_key(shared, eph.public_key().data(), recipient.data(), key);
  sodium_memzero(shared, sizeof shared);
  ALEM_CHECK(derived, "key derivation failed");

  uint8_t nonce[kEnvelopeNonceBytes];
  randombytes_buf(nonce, sizeof nonce);
  const std::string ad = associated_data(request_id, purpose);
  std::string ciphertext(plaintext.size() + crypto_aead_xchacha20poly1305_ietf_ABYTES, '\0');
  unsigned long long written = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      reinterpret_cast<uint8_t*>(ciphertext.data()), &written,
      reinterpret_cast<const uint8_t*>(plaintext.data()), plaintext.size(),
      reinterpret_cast<const uint8_t*>(ad.data()), ad.size(), nullptr, nonce, key);
  sodium_memzero(key, sizeof key);
  ciphertext.resize(written);

  v1::SealedEnvelope envelope;
  envelope.set_version(kEnvelopeVersion);
  const auto key_id = recipient_key_id(recipient);
  envelope.set_recipient_key_id(key_id.data(), key_id.size());
  envelope.set_ephemeral_public_key(eph.public_key().data(), eph.public_key().size());
  envelope.set_nonce(nonce, sizeof nonce);
  envelope.set_ciphertext(std::move(ciphertext));
  std::string out;
  ALEM_CHECK(envelope.SerializeToString(&out), "cannot serialize a sealed envelope");
  return out;
}

OpenedPayload::OpenedPayload(OpenedPayload&& other) noexcept {
  bytes_.swap(other.bytes_);
  other.wipe();
}

OpenedPayload& OpenedPayload::operator=(OpenedPayload&& other) noexcept {
  if (this != &other) {
    wipe();
    bytes_.swap(other.bytes_);
    other.wipe();
  }
  return *this;
}

OpenedPayload::~OpenedPayload() {
  wipe();
}

void OpenedPayload::wipe() {
  wipe_string(bytes_);
}

const char* open_error_name(OpenError error) {
  switch (error) {
    case OpenError::kNone:
      return "none";
    case OpenError::kBadEnvelope:
      return "bad_envelope";
    case OpenError::kWrongRecipient:
      return "wrong_recipient";
    case OpenError::kTampered:
      return "tampered";
  }
  return "unknown";
}

OpenResult open_envelope(const X25519KeyPair& recipient, std::string_view request_id,
                         std::string_view purpose, std::string_view envelope_bytes) {
  ensure_sodium();
  OpenResult result;
  auto fail = [&result](OpenError error, std::string message) {
    result.error = error;
    result.message = std::move(message);
    return std::move(result);
  };
  if (request_id.size() != kRequestIdBytes) {
    return fail(OpenError::kBadEnvelope,
                "the request id is " + std::to_string(request_id.size()) + " bytes, not 32");
  }
  v1::SealedEnvelope envelope;
  if (!envelope.ParseFromArray(envelope_bytes.data(), static_cast<int>(envelope_bytes.size()))) {
    return fail(OpenError::kBadEnvelope, "the sealed envelope is not a parseable message");
  }
  if (envelope.version() != kEnvelopeVersion) {
    return fail(OpenError::kBadEnvelope,
                "unsupported envelope version " + std::to_string(envelope.version()));
  }
  if (envelope.ephemeral_public_key().size() != kX25519KeyBytes ||
      envelope.nonce().size() != kEnvelopeNonceBytes ||
      envelope.recipient_key_id().size() != kRecipientKeyIdBytes ||
      envelope.ciphertext().size() < kEnvelopeTagBytes) {
    return fail(OpenError::kBadEnvelope,
                "the sealed envelope has a field of the wrong size (key 32, nonce 24, key id 8, "
                "ciphertext >= 16 bytes)");
  }
  const auto expected_id = recipient_key_id(recipient.public_key());
  if (std::memcmp(envelope.recipient_key_id().data(), expected_id.data(), expected_id.size()) !=
      0) {
    return fail(OpenError::kWrongRecipient, "the envelope is sealed to another provider key");
  }
  const auto* eph_pub = reinterpret_cast<const uint8_t*>(envelope.ephemeral_public_key().data());
  uint8_t shared[crypto_scalarmult_BYTES];
  if (crypto_scalarmult(shared, recipient.secret_key().data(), eph_pub) != 0) {
    sodium_memzero(shared, sizeof shared);
    return fail(OpenError::kTampered, "the envelope's ephemeral key is a low-order point");
  }
  uint8_t key[crypto_aead_xchacha20poly1305_ietf_KEYBYTES];
  bool derived = derive_key(shared, eph_pub, recipient.public_key().data(), key);
  sodium_memzero(shared, sizeof shared);
  if (!derived) {
    sodium_memzero(key, sizeof key);
    return fail(OpenError::kTampered, "key derivation failed");
  }
  const std::string ad = associated_data(request_id, purpose);
  const std::string& ciphertext = envelope.ciphertext();
  std::string plaintext(ciphertext.size() - kEnvelopeTagBytes, '\0');
  unsigned long long written = 0;
  const int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      reinterpret_cast<uint8_t*>(plaintext.data()), &written, nullptr,
      reinterpret_cast<const uint8_t*>(ciphertext.data()), ciphertext.size(),
      reinterpret_cast<const uint8_t*>(ad.data()), ad.size(),
      reinterpret_cast<const uint8_t*>(envelope.nonce().data()), key);
  sodium_memzero(key, sizeof key);
  if (rc != 0) {
    wipe_string(plaintext);
    return fail(OpenError::kTampered,
                "the envelope failed authentication (tampered, or bound to another request id "
                "or purpose)");
  }
  plaintext.resize(written);
  result.payload = OpenedPayload(std::move(plaintext));
  return result;
}

}  // namespace alem::network
