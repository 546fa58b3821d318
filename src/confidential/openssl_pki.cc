// Implements the OpenSSL 3 helpers in openssl_pki.h. Raw Intel signatures (r || s) become DER
// ECDSA-Sig-Value; raw keys (x || y) become EVP_PKEYs through OSSL_PARAM; nothing deprecated.
#include "confidential/openssl_pki.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509_vfy.h>

#include <cctype>
#include <cstring>

#include "confidential/intel_root_ca.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"

namespace alem::confidential::pki {
namespace {

struct LocalDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
  void operator()(STACK_OF(X509) * p) const { sk_X509_free(p); }
  void operator()(unsigned char* p) const { OPENSSL_free(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, LocalDeleter>;

std::string asn1_time_text(const ASN1_TIME* time) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(time, &tm) != 1) return "(bad time)";
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

std::array<uint8_t, 32> sha256(std::span<const uint8_t> bytes) {
  std::array<uint8_t, 32> digest{};
  SHA256(bytes.data(), bytes.size(), digest.data());
  return digest;
}

std::string sha256_hex(std::span<const uint8_t> bytes) {
  return to_lower_hex(sha256(bytes));
}

std::string der_sha256_hex(X509* cert) {
  unsigned char* der = nullptr;
  int size = i2d_X509(cert, &der);
  ALEM_CHECK(size > 0, "OpenSSL: cannot DER-encode a certificate");
  Owned<unsigned char> owner(der);
  return sha256_hex({der, static_cast<size_t>(size)});
}

EvpPkeyPtr p256_key_from_xy(std::span<const uint8_t, 64> xy, std::string& reason) {
  std::array<uint8_t, 65> point{};
  point[0] = 0x04;  // uncompressed SEC1 point
  std::memcpy(point.data() + 1, xy.data(), xy.size());
  Owned<OSSL_PARAM_BLD> builder(OSSL_PARAM_BLD_new());
  ALEM_CHECK(builder, "OpenSSL: cannot allocate a parameter builder");
  ALEM_CHECK(OSSL_PARAM_BLD_push_utf8_string(builder.get(), OSSL_PKEY_PARAM_GROUP_NAME,
                                             "prime256v1", 0) == 1 &&
                 OSSL_PARAM_BLD_push_octet_string(builder.get(), OSSL_PKEY_PARAM_PUB_KEY,
                                                  point.data(), point.size()) == 1,
             "OpenSSL: cannot build EC key parameters");
  Owned<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(builder.get()));
  Owned<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  ALEM_CHECK(params && ctx && EVP_PKEY_fromdata_init(ctx.get()) == 1,
             "OpenSSL: cannot set up EC key import");
  EVP_PKEY* key = nullptr;
  if (EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) != 1 || !key) {
    ERR_clear_error();
    reason = "public key is not a valid P-256 point";
    return nullptr;
  }
  EvpPkeyPtr owned(key);
  // An explicit public-key check rejects points off the curve whatever the import did.
  Owned<EVP_PKEY_CTX> check(EVP_PKEY_CTX_new_from_pkey(nullptr, owned.get(), nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    ERR_clear_error();
    reason = "public key is not a valid P-256 point";
    return nullptr;
  }
  return owned;
}

std::string verify_ecdsa_p256_raw(EVP_PKEY* key, std::span<const uint8_t> message,
                                  std::span<const uint8_t, 64> raw_signature) {
  Owned<ECDSA_SIG> sig(ECDSA_SIG_new());
  ALEM_CHECK(sig, "OpenSSL: cannot allocate an ECDSA signature");
  BIGNUM* r = BN_bin2bn(raw_signature.data(), 32, nullptr);
  BIGNUM* s = BN_bin2bn(raw_signature.data() + 32, 32, nullptr);
  if (!r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ALEM_FAIL("OpenSSL: cannot build an ECDSA signature");
  }
  unsigned char* der = nullptr;
  int der_size = i2d_ECDSA_SIG(sig.get(), &der);
  ALEM_CHECK(der_size > 0, "OpenSSL: cannot DER-encode an ECDSA signature");
  Owned<unsigned char> der_owner(der);

  Owned<EVP_MD_CTX> md(EVP_MD_CTX_new());
  ALEM_CHECK(md, "OpenSSL: cannot allocate a digest context");
  if (EVP_DigestVerifyInit_ex(md.get(), nullptr, "SHA256", nullptr, nullptr, key, nullptr) != 1) {
    ERR_clear_error();
    return "key cannot verify ECDSA-SHA256 signatures";
  }
  int rc = EVP_DigestVerify(md.get(), der, static_cast<size_t>(der_size), message.data(),
                            message.size());
  ERR_clear_error();
  return rc == 1 ? "" : "ECDSA-P256-SHA256 signature does not verify";
}

std::string common_name(X509* cert) {
  X509_NAME* name = X509_get_subject_name(cert);
  int index = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (index < 0) return "(no CN)";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  std::string text(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                   static_cast<size_t>(ASN1_STRING_length(data)));
  for (char& c : text) {
    if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
  }
  return text;
}

std::vector<X509Ptr> read_pem_certificates(std::string_view pem, std::string& reason) {
  static constexpr std::string_view kBegin = "-----BEGIN CERTIFICATE-----";
  static constexpr std::string_view kEnd = "-----END CERTIFICATE-----";
  std::vector<X509Ptr> certs;
  size_t position = 0;
  while (position < pem.size()) {
    if (std::isspace(static_cast<unsigned char>(pem[position]))) {
      ++position;
      continue;
    }
    if (pem.substr(position, kBegin.size()) != kBegin) {
      reason = "unexpected text after certificate " + std::to_string(certs.size());
      return certs;
    }
    size_t end = pem.find(kEnd, position);
    if (end == std::string_view::npos) {
      reason = "certificate " + std::to_string(certs.size() + 1) + " has no END line";
      return certs;
    }
    end += kEnd.size();
    std::string_view block = pem.substr(position, end - position);
    Owned<BIO> bio(BIO_new_mem_buf(block.data(), static_cast<int>(block.size())));
    ALEM_CHECK(bio, "OpenSSL: cannot allocate a memory BIO");
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (!cert) {
      ERR_clear_error();
      reason = "certificate " + std::to_string(certs.size() + 1) + " does not decode";
      return certs;
    }
    certs.emplace_back(cert);
    position = end;
  }
  return certs;
}

X509Ptr pinned_intel_root() {
  std::string reason;
  std::vector<X509Ptr> certs = read_pem_certificates(kIntelSgxRootCaPem, reason);
  ALEM_CHECK(certs.size() == 1 && reason.empty(), "the pinned Intel SGX Root CA does not parse");
  ALEM_CHECK(der_sha256_hex(certs[0].get()) == kIntelSgxRootCaSha256,
             "the pinned Intel SGX Root CA does not match its pinned fingerprint");
  return std::move(certs[0]);
}

std::string verify_chain_to_root(X509* leaf, const std::vector<X509*>& intermediates, X509* root) {
  Owned<X509_STORE> store(X509_STORE_new());
  Owned<X509_STORE_CTX> ctx(X509_STORE_CTX_new());
  Owned<STACK_OF(X509)> untrusted(sk_X509_new_null());
  ALEM_CHECK(store && ctx && untrusted, "OpenSSL: cannot allocate a certificate store");
  ALEM_CHECK(X509_STORE_add_cert(store.get(), root) == 1, "OpenSSL: cannot add the pinned root");
  for (X509* cert : intermediates) {
    ALEM_CHECK(sk_X509_push(untrusted.get(), cert) > 0, "OpenSSL: cannot build a chain");
  }
  ALEM_CHECK(X509_STORE_CTX_init(ctx.get(), store.get(), leaf, untrusted.get()) == 1,
             "OpenSSL: cannot initialise chain verification");
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME);
  X509_VERIFY_PARAM_clear_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  if (X509_verify_cert(ctx.get()) == 1) return "";
  ERR_clear_error();
  const int error = X509_STORE_CTX_get_error(ctx.get());
  const int depth = X509_STORE_CTX_get_error_depth(ctx.get());
  return std::string(X509_verify_cert_error_string(error)) + " (at chain depth " +
         std::to_string(depth) + ")";
}

std::string validity_problem(X509* cert, time_t at) {
  const ASN1_TIME* not_before = X509_get0_notBefore(cert);
  const ASN1_TIME* not_after = X509_get0_notAfter(cert);
  const std::string period =
      " (valid " + asn1_time_text(not_before) + " .. " + asn1_time_text(not_after) + ")";
  if (X509_cmp_time(not_before, &at) >= 0) return "is not yet valid at " + format_utc(at) + period;
  if (X509_cmp_time(not_after, &at) <= 0) return "has expired at " + format_utc(at) + period;
  return "";
}

std::string format_utc(time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace alem::confidential::pki
