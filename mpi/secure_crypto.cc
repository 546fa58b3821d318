// OpenSSL 3 implementations of HKDF-SHA256 and AES-256-GCM for the secure channel.
#include "mpi/secure_crypto.h"

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/aligned_buffer.h"
#include "core/error.h"

namespace alem {

void hkdf_sha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                 std::span<const uint8_t> info, std::span<uint8_t> out) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nullptr);
  ALEM_CHECK(ctx, "OpenSSL: cannot make an HKDF context");
  size_t size = out.size();
  const bool ok =
      EVP_PKEY_derive_init(ctx) > 0 && EVP_PKEY_CTX_set_hkdf_md(ctx, EVP_sha256()) > 0 &&
      (salt.empty() ||  // no salt: HKDF then uses its default, a block of zeros
       EVP_PKEY_CTX_set1_hkdf_salt(ctx, salt.data(), static_cast<int>(salt.size())) > 0) &&
      EVP_PKEY_CTX_set1_hkdf_key(ctx, ikm.data(), static_cast<int>(ikm.size())) > 0 &&
      EVP_PKEY_CTX_add1_hkdf_info(ctx, info.data(), static_cast<int>(info.size())) > 0 &&
      EVP_PKEY_derive(ctx, out.data(), &size) > 0 && size == out.size();
  EVP_PKEY_CTX_free(ctx);
  ALEM_CHECK(ok, "OpenSSL: HKDF-SHA256 failed");
}

AesGcm::AesGcm(const ChannelKey& key, bool encrypt) : encrypt_(encrypt) {
  auto* ctx = EVP_CIPHER_CTX_new();
  ALEM_CHECK(ctx, "OpenSSL: cannot make a cipher context");
  ctx_ = ctx;
  const int ok = encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nullptr)
                         : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nullptr);
  ALEM_CHECK(ok == 1, "OpenSSL: AES-256-GCM key setup failed");
}

AesGcm::~AesGcm() {
  if (ctx_) EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(ctx_));
}

AesGcm::AesGcm(AesGcm&& other) noexcept
    : ctx_(std::exchange(other.ctx_, nullptr)), encrypt_(other.encrypt_) {}

AesGcm& AesGcm::operator=(AesGcm&& other) noexcept {
  if (this != &other) {
    if (ctx_) EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(ctx_));
    ctx_ = std::exchange(other.ctx_, nullptr);
    encrypt_ = other.encrypt_;
  }
  return *this;
}

namespace {
constexpr size_t kPiece = size_t{1} << 30;  // EVP takes int lengths
}

void AesGcm::seal(const GcmNonce& nonce, std::span<const uint8_t> aad, std::span<const uint8_t> in,
                  uint8_t* out, uint8_t* tag) {
  ALEM_CHECK(encrypt_, "AesGcm: seal on a decrypting context");
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(ctx_);
  int len = 0;
  bool ok = EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) == 1;
  ok = ok && (aad.empty() ||
              EVP_EncryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1);
  for (size_t off = 0; ok && off < in.size(); off += kPiece) {
    const int n = static_cast<int>(std::min(kPiece, in.size() - off));
    ok = EVP_EncryptUpdate(ctx, out + off, &len, in.data() + off, n) == 1;
  }
  ok = ok && EVP_EncryptFinal_ex(ctx, out + in.size(), &len) == 1;
  ok = ok &&
       EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kGcmTagBytes), tag) == 1;
  ALEM_CHECK(ok, "OpenSSL: AES-256-GCM encryption failed");
}

bool AesGcm::open(const GcmNonce& nonce, std::span<const uint8_t> aad, std::span<const uint8_t> in,
                  const uint8_t* tag, uint8_t* out) {
  ALEM_CHECK(!encrypt_, "AesGcm: open on an encrypting context");
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(ctx_);
  int len = 0;
  bool ok = EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) == 1;
  ok = ok && (aad.empty() ||
              EVP_DecryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1);
  for (size_t off = 0; ok && off < in.size(); off += kPiece) {
    const int n = static_cast<int>(std::min(kPiece, in.size() - off));
    ok = EVP_DecryptUpdate(ctx, out + off, &len, in.data() + off, n) == 1;
  }
  ALEM_CHECK(ok, "OpenSSL: AES-256-GCM decryption failed");
  uint8_t tag_copy[kGcmTagBytes];
  std::memcpy(tag_copy, tag, kGcmTagBytes);
  ALEM_CHECK(
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kGcmTagBytes), tag_copy) == 1,
      "OpenSSL: cannot set the GCM tag");
  if (EVP_DecryptFinal_ex(ctx, out + in.size(), &len) != 1) {
    secure_wipe(out, in.size());
    return false;
  }
  return true;
}

}  // namespace alem
