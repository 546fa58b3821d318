// Sealed envelopes and the provider key file (network/sealing.h, network/provider_keys.h).
// The construction is checked against an independent implementation built here from OpenSSL
// (X25519, BLAKE2b-512, ChaCha20-Poly1305) and a hand-written HChaCha20, both ways, and the
// XChaCha20-Poly1305 primitive against the published test vectors, so a change to either side
// of the construction makes these tests fail.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "network/protocol.h"
#include "network/provider.pb.h"
#include "network/provider_keys.h"
#include "network/sealing.h"

namespace alem::network {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes from_hex(const std::string& text) {
  Bytes out;
  for (size_t i = 0; i + 1 < text.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(text.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string as_string(const Bytes& b) {
  return std::string(b.begin(), b.end());
}

std::string request_id(uint8_t fill) {
  return std::string(kRequestIdBytes, static_cast<char>(fill));
}

// ---- An independent XChaCha20-Poly1305 and key derivation (OpenSSL + RFC-draft HChaCha20) ----

uint32_t rotl(uint32_t v, int c) {
  return (v << c) | (v >> (32 - c));
}

void quarter(uint32_t* x, int a, int b, int c, int d) {
  x[a] += x[b];
  x[d] = rotl(x[d] ^ x[a], 16);
  x[c] += x[d];
  x[b] = rotl(x[b] ^ x[c], 12);
  x[a] += x[b];
  x[d] = rotl(x[d] ^ x[a], 8);
  x[c] += x[d];
  x[b] = rotl(x[b] ^ x[c], 7);
}

uint32_t load32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// HChaCha20 (draft-irtf-cfrg-xchacha section 2.2): 20 ChaCha rounds without the final addition,
// output words 0..3 and 12..15.
Bytes hchacha20(const Bytes& key, const uint8_t* nonce16) {
  uint32_t x[16] = {0x61707865, 0x3320646e, 0x79622d32, 0x6b206574};
  for (int i = 0; i < 8; ++i) x[4 + i] = load32(key.data() + 4 * i);
  for (int i = 0; i < 4; ++i) x[12 + i] = load32(nonce16 + 4 * i);
  for (int round = 0; round < 10; ++round) {
    quarter(x, 0, 4, 8, 12);
    quarter(x, 1, 5, 9, 13);
    quarter(x, 2, 6, 10, 14);
    quarter(x, 3, 7, 11, 15);
    quarter(x, 0, 5, 10, 15);
    quarter(x, 1, 6, 11, 12);
    quarter(x, 2, 7, 8, 13);
    quarter(x, 3, 4, 9, 14);
  }
  Bytes out;
  for (int w : {0, 1, 2, 3, 12, 13, 14, 15}) {
    for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(x[w] >> (8 * k)));
  }
  return out;
}

// XChaCha20-Poly1305-IETF via OpenSSL's ChaCha20-Poly1305: subkey = HChaCha20(key, n[0:16]),
// nonce = 0^4 || n[16:24]. Returns ciphertext || tag; decrypt returns false on a bad tag.
Bytes openssl_xchacha_encrypt(const Bytes& key, const Bytes& nonce, const std::string& ad,
                              const std::string& plaintext) {
  const Bytes subkey = hchacha20(key, nonce.data());
  uint8_t iv[12] = {};
  std::memcpy(iv + 4, nonce.data() + 16, 8);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  EXPECT_EQ(EVP_EncryptInit_ex(ctx, EVP_chacha20_poly1305(), nullptr, subkey.data(), iv), 1);
  int len = 0;
  EXPECT_EQ(EVP_EncryptUpdate(ctx, nullptr, &len, reinterpret_cast<const uint8_t*>(ad.data()),
                              static_cast<int>(ad.size())),
            1);
  Bytes out(plaintext.size() + 16);
  EXPECT_EQ(
      EVP_EncryptUpdate(ctx, out.data(), &len, reinterpret_cast<const uint8_t*>(plaintext.data()),
                        static_cast<int>(plaintext.size())),
      1);
  int fin = 0;
  EXPECT_EQ(EVP_EncryptFinal_ex(ctx, out.data() + len, &fin), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, out.data() + plaintext.size()), 1);
  EVP_CIPHER_CTX_free(ctx);
  return out;
}

bool openssl_xchacha_decrypt(const Bytes& key, const Bytes& nonce, const std::string& ad,
                             const std::string& sealed, std::string* plaintext) {
  if (sealed.size() < 16) return false;
  const Bytes subkey = hchacha20(key, nonce.data());
  uint8_t iv[12] = {};
  std::memcpy(iv + 4, nonce.data() + 16, 8);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  EVP_DecryptInit_ex(ctx, EVP_chacha20_poly1305(), nullptr, subkey.data(), iv);
  int len = 0;
  EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const uint8_t*>(ad.data()),
                    static_cast<int>(ad.size()));
  const size_t n = sealed.size() - 16;
  std::string out(n, '\0');
  EVP_DecryptUpdate(ctx, reinterpret_cast<uint8_t*>(out.data()), &len,
                    reinterpret_cast<const uint8_t*>(sealed.data()), static_cast<int>(n));
  Bytes tag(sealed.end() - 16, sealed.end());
  EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag.data());
  int fin = 0;
  const bool ok = EVP_DecryptFinal_ex(ctx, reinterpret_cast<uint8_t*>(out.data()) + len, &fin) == 1;
  EVP_CIPHER_CTX_free(ctx);
  if (ok) *plaintext = out;
  return ok;
}

Bytes openssl_x25519(const uint8_t* secret, const uint8_t* peer_public) {
  EVP_PKEY* priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret, 32);
  EVP_PKEY* peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public, 32);
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(priv, nullptr);
  Bytes shared(32);
  size_t len = shared.size();
  EXPECT_EQ(EVP_PKEY_derive_init(ctx), 1);
  EXPECT_EQ(EVP_PKEY_derive_set_peer(ctx, peer), 1);
  EXPECT_EQ(EVP_PKEY_derive(ctx, shared.data(), &len), 1);
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(peer);
  EVP_PKEY_free(priv);
  return shared;
}

Bytes openssl_x25519_public(const uint8_t* secret) {
  EVP_PKEY* priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, secret, 32);
  Bytes pub(32);
  size_t len = pub.size();
  EXPECT_EQ(EVP_PKEY_get_raw_public_key(priv, pub.data(), &len), 1);
  EVP_PKEY_free(priv);
  return pub;
}

// The documented key derivation, written out again with OpenSSL's BLAKE2b-512.
Bytes openssl_derive(const Bytes& shared, const uint8_t* eph_pub, const uint8_t* recipient_pub) {
  std::string input("alem-seal-v1", 12);
  input.push_back('\0');
  input.append(reinterpret_cast<const char*>(shared.data()), 32);
  input.append(reinterpret_cast<const char*>(eph_pub), 32);
  input.append(reinterpret_cast<const char*>(recipient_pub), 32);
  Bytes digest(64);
  unsigned int len = 0;
  EXPECT_EQ(EVP_Digest(input.data(), input.size(), digest.data(), &len, EVP_blake2b512(), nullptr),
            1);
  digest.resize(32);
  return digest;
}

TEST(NetworkSealing, HChaCha20MatchesTheDraftVector) {
  const Bytes key = from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  const Bytes nonce = from_hex("000000090000004a0000000031415927");
  EXPECT_EQ(hchacha20(key, nonce.data()),
            from_hex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"));
}

TEST(NetworkSealing, XChaCha20Poly1305MatchesTheDraftVector) {
  // draft-irtf-cfrg-xchacha-03, appendix A.3.1.
  const std::string plaintext =
      "Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
      "future, sunscreen would be it.";
  const std::string ad = as_string(from_hex("50515253c0c1c2c3c4c5c6c7"));
  const Bytes key = from_hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
  const Bytes nonce = from_hex("404142434445464748494a4b4c4d4e4f5051525354555657");
  const Bytes expected = from_hex(
      "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4e"
      "da7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2"
      "383565d3fff921f9664c97637da9768812f615c68b13b52e"
      "c0875924c1c7987947deafd8780acf49");
  EXPECT_EQ(openssl_xchacha_encrypt(key, nonce, ad, plaintext), expected);
}

TEST(NetworkSealing, RoundTrip) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const std::string id = request_id(7);
  for (size_t size : {size_t{0}, size_t{1}, size_t{100}, size_t{70000}}) {
    std::string plaintext(size, '\0');
    for (size_t i = 0; i < size; ++i) plaintext[i] = static_cast<char>(i * 31 + 5);
    const std::string envelope = seal(provider.public_key(), id, kPurposeRequest, plaintext);
    OpenResult opened = open_envelope(provider, id, kPurposeRequest, envelope);
    ASSERT_TRUE(opened.ok()) << opened.message;
    EXPECT_EQ(opened.payload.view(), plaintext);
  }
  // Two seals of the same plaintext differ (fresh ephemeral key and nonce).
  EXPECT_NE(seal(provider.public_key(), id, kPurposeRequest, "same"),
            seal(provider.public_key(), id, kPurposeRequest, "same"));
}

TEST(NetworkSealing, EveryTamperedByteFails) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const std::string id = request_id(1);
  const std::string envelope =
      seal(provider.public_key(), id, kPurposeRequest, "{\"prompt\":\"tamper me\"}");
  for (size_t i = 0; i < envelope.size(); ++i) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}}) {
      std::string bad = envelope;
      bad[i] = static_cast<char>(bad[i] ^ flip);
      OpenResult opened = open_envelope(provider, id, kPurposeRequest, bad);
      EXPECT_FALSE(opened.ok()) << "byte " << i << " flipped with " << int(flip) << " opened";
      EXPECT_TRUE(opened.payload.view().empty());
    }
  }
  // A flipped ciphertext byte is reported as tampering, not as a bad envelope.
  v1::SealedEnvelope parsed;
  ASSERT_TRUE(parsed.ParseFromString(envelope));
  std::string ct = parsed.ciphertext();
  ct[0] ^= 1;
  parsed.set_ciphertext(ct);
  EXPECT_EQ(open_envelope(provider, id, kPurposeRequest, parsed.SerializeAsString()).error,
            OpenError::kTampered);
}

TEST(NetworkSealing, WrongKeyRequestIdAndPurposeFail) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const X25519KeyPair other = X25519KeyPair::generate();
  const std::string id = request_id(2);
  const std::string envelope = seal(provider.public_key(), id, kPurposeRequest, "hello");

  OpenResult wrong = open_envelope(other, id, kPurposeRequest, envelope);
  EXPECT_EQ(wrong.error, OpenError::kWrongRecipient) << wrong.message;

  // The key id forged to look like `other`'s: authentication still fails.
  v1::SealedEnvelope parsed;
  ASSERT_TRUE(parsed.ParseFromString(envelope));
  const auto other_id = recipient_key_id(other.public_key());
  parsed.set_recipient_key_id(other_id.data(), other_id.size());
  EXPECT_EQ(open_envelope(other, id, kPurposeRequest, parsed.SerializeAsString()).error,
            OpenError::kTampered);

  EXPECT_EQ(open_envelope(provider, request_id(3), kPurposeRequest, envelope).error,
            OpenError::kTampered);
  EXPECT_EQ(open_envelope(provider, id, chunk_purpose(0), envelope).error, OpenError::kTampered);
  const std::string chunk = seal(provider.public_key(), id, chunk_purpose(1), "chunk");
  EXPECT_EQ(open_envelope(provider, id, chunk_purpose(2), chunk).error, OpenError::kTampered);
  EXPECT_TRUE(open_envelope(provider, id, chunk_purpose(1), chunk).ok());
}

TEST(NetworkSealing, MalformedEnvelopesAreBadEnvelopes) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const std::string id = request_id(4);
  for (const std::string& junk :
       {std::string(), std::string("\xff\xff\xff\xff", 4), std::string("not a protobuf")}) {
    EXPECT_EQ(open_envelope(provider, id, kPurposeRequest, junk).error, OpenError::kBadEnvelope);
  }
  v1::SealedEnvelope parsed;
  ASSERT_TRUE(parsed.ParseFromString(seal(provider.public_key(), id, kPurposeRequest, "x")));
  v1::SealedEnvelope future = parsed;
  future.set_version(2);
  EXPECT_EQ(open_envelope(provider, id, kPurposeRequest, future.SerializeAsString()).error,
            OpenError::kBadEnvelope);
  v1::SealedEnvelope short_nonce = parsed;
  short_nonce.set_nonce(std::string(12, 'n'));
  EXPECT_EQ(open_envelope(provider, id, kPurposeRequest, short_nonce.SerializeAsString()).error,
            OpenError::kBadEnvelope);
  EXPECT_EQ(open_envelope(provider, "short", kPurposeRequest, parsed.SerializeAsString()).error,
            OpenError::kBadEnvelope);
  EXPECT_THROW(seal(provider.public_key(), "short", kPurposeRequest, "x"), Error);
}

TEST(NetworkSealing, IndependentImplementationOpensWhatWeSeal) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const std::string id = request_id(9);
  const std::string plaintext = "{\"model\":\"m\",\"prompt\":\"cross-check\"}";
  v1::SealedEnvelope parsed;
  ASSERT_TRUE(parsed.ParseFromString(seal(provider.public_key(), id, kPurposeRequest, plaintext)));
  const auto* eph = reinterpret_cast<const uint8_t*>(parsed.ephemeral_public_key().data());
  const Bytes shared = openssl_x25519(provider.secret_key().data(), eph);
  const Bytes key = openssl_derive(shared, eph, provider.public_key().data());
  const Bytes nonce(parsed.nonce().begin(), parsed.nonce().end());
  std::string opened;
  ASSERT_TRUE(openssl_xchacha_decrypt(key, nonce, id + std::string(kPurposeRequest),
                                      parsed.ciphertext(), &opened));
  EXPECT_EQ(opened, plaintext);
  // And the key id is SHA-256's first 8 bytes, computed independently.
  uint8_t digest[32];
  unsigned int len = 0;
  EVP_Digest(provider.public_key().data(), 32, digest, &len, EVP_sha256(), nullptr);
  EXPECT_EQ(parsed.recipient_key_id(), std::string(reinterpret_cast<char*>(digest), 8));
}

TEST(NetworkSealing, WeOpenWhatTheIndependentImplementationSeals) {
  const X25519KeyPair provider = X25519KeyPair::generate();
  const std::string id = request_id(10);
  const std::string plaintext = "sealed by OpenSSL";
  const Bytes eph_secret =
      from_hex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4");
  const Bytes eph_public = openssl_x25519_public(eph_secret.data());
  const Bytes shared = openssl_x25519(eph_secret.data(), provider.public_key().data());
  const Bytes key = openssl_derive(shared, eph_public.data(), provider.public_key().data());
  const Bytes nonce = from_hex("000102030405060708090a0b0c0d0e0f1011121314151617");
  const Bytes sealed =
      openssl_xchacha_encrypt(key, nonce, id + std::string(kPurposeRequest), plaintext);
  v1::SealedEnvelope envelope;
  envelope.set_version(1);
  const auto key_id = recipient_key_id(provider.public_key());
  envelope.set_recipient_key_id(key_id.data(), key_id.size());
  envelope.set_ephemeral_public_key(eph_public.data(), eph_public.size());
  envelope.set_nonce(nonce.data(), nonce.size());
  envelope.set_ciphertext(sealed.data(), sealed.size());
  OpenResult opened = open_envelope(provider, id, kPurposeRequest, envelope.SerializeAsString());
  ASSERT_TRUE(opened.ok()) << opened.message;
  EXPECT_EQ(opened.payload.view(), plaintext);
}

TEST(NetworkSealing, OpenedPayloadMovesAndWipes) {
  OpenedPayload a(std::string("secret text that is long enough to live on the heap"));
  OpenedPayload b(std::move(a));
  EXPECT_EQ(a.size(), 0u);
  EXPECT_EQ(b.view().substr(0, 6), "secret");
  b.wipe();
  EXPECT_EQ(b.size(), 0u);
}

class ProviderKeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("alem-keys-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "provider.key").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::string path_;
};

TEST_F(ProviderKeyFile, CreatedWithMode0600AndKeptAcrossLoads) {
  bool created = false;
  const ProviderKeys first = ProviderKeys::load_or_create(path_, &created);
  EXPECT_TRUE(created);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_size, 104);
  const ProviderKeys second = ProviderKeys::load_or_create(path_, &created);
  EXPECT_FALSE(created);
  EXPECT_EQ(first.identity_public_key(), second.identity_public_key());
  EXPECT_EQ(first.sealing().public_key(), second.sealing().public_key());
  // The reloaded sealing key opens what was sealed to the first one.
  const std::string id = request_id(5);
  const std::string envelope = seal(first.sealing().public_key(), id, kPurposeRequest, "kept");
  EXPECT_TRUE(open_envelope(second.sealing(), id, kPurposeRequest, envelope).ok());
  EXPECT_TRUE(verify_identity_signature(second.identity_public_key(), "m", first.sign("m")));
  EXPECT_FALSE(verify_identity_signature(second.identity_public_key(), "n", first.sign("m")));
}

TEST_F(ProviderKeyFile, BadFilesAreRefusedWithAReason) {
  ProviderKeys::load_or_create(path_);
  std::string bytes;
  {
    std::ifstream in(path_, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& content, mode_t mode) {
    std::filesystem::remove(path_);
    std::ofstream(path_, std::ios::binary) << content;
    ::chmod(path_.c_str(), mode);
  };
  auto expect_error = [&](const std::string& needle) {
    try {
      ProviderKeys::load(path_);
      ADD_FAILURE() << "loaded a bad key file (" << needle << ")";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::string corrupt = bytes;
  corrupt[20] ^= 1;
  write(corrupt, 0600);
  expect_error("checksum");
  write(bytes.substr(0, 50), 0600);
  expect_error("truncated");
  std::string other = bytes;
  other[0] = 'X';
  write(other, 0600);
  expect_error("alem-pk1");
  write(bytes, 0644);
  expect_error("chmod 600");
  std::filesystem::remove(path_);
  EXPECT_THROW(ProviderKeys::load(path_), Error);
}

TEST(NetworkProtocol, RegisterSignatureCoversEveryField) {
  const ProviderKeys keys = ProviderKeys::generate();
  v1::Register reg;
  reg.set_protocol_version(kProtocolVersion);
  reg.set_credits(4);
  reg.add_models()->set_name("SmolLM2-135M-Instruct");
  sign_register(keys, reg);
  EXPECT_TRUE(verify_register(reg));
  v1::Register changed = reg;
  changed.set_credits(400);
  EXPECT_FALSE(verify_register(changed));
  v1::Register other_key = reg;
  const ProviderKeys stranger = ProviderKeys::generate();
  other_key.set_identity_public_key(stranger.identity_public_key().data(), 32);
  EXPECT_FALSE(verify_register(other_key));
  EXPECT_EQ(hex(std::string("\x01\xab", 2)), "01ab");
}

}  // namespace
}  // namespace alem::network
