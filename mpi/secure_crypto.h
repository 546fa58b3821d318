// The two primitives of the encrypted inter-node channel, on OpenSSL 3: HKDF-SHA256 (to derive
// per-group keys from a pairwise key, and pairwise keys from an X25519 secret) and AES-256-GCM
// with a 96-bit nonce (AES-NI through EVP). Kept apart from the process-group code so the key
// agreement (src/confidential/key_agreement.h) and the benchmark use the same implementation.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace alem {

using ChannelKey = std::array<uint8_t, 32>;
using GcmNonce = std::array<uint8_t, 12>;
inline constexpr size_t kGcmTagBytes = 16;

// HKDF-SHA256 (RFC 5869) of `ikm` with `salt` and `info` into `out`. Throws alem::Error when
// OpenSSL fails.
void hkdf_sha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                 std::span<const uint8_t> info, std::span<uint8_t> out);

// One direction of AES-256-GCM under one key: the key schedule is made once, each call sets a
// fresh nonce. The caller guarantees that a nonce is never used twice under the key. Move-only.
class AesGcm {
 public:
  AesGcm(const ChannelKey& key, bool encrypt);
  ~AesGcm();
  AesGcm(AesGcm&& other) noexcept;
  AesGcm& operator=(AesGcm&& other) noexcept;
  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;

  // out gets in.size() bytes of ciphertext, tag 16 bytes. out may equal in.
  void seal(const GcmNonce& nonce, std::span<const uint8_t> aad, std::span<const uint8_t> in,
            uint8_t* out, uint8_t* tag);
  // Returns false (and leaves `out` wiped) when the tag does not verify. out may equal in.
  bool open(const GcmNonce& nonce, std::span<const uint8_t> aad, std::span<const uint8_t> in,
            const uint8_t* tag, uint8_t* out);

 private:
  void* ctx_ = nullptr;  // EVP_CIPHER_CTX
  bool encrypt_ = true;
};

}  // namespace alem
