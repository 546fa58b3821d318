// OpenSSL 3 building blocks shared by the quote verifier and the collateral evaluator: owning
// pointers, raw (r||s, x||y) ECDSA-P256 signatures and keys as Intel formats them, PEM
// certificate lists, and chain verification against the one pinned root. Only non-deprecated
// OpenSSL 3 APIs are used. Internal to src/confidential; not a general crypto API.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <array>
#include <cstdint>
#include <ctime>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace alem::confidential::pki {

struct OpenSslDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
};
using EvpPkeyPtr = std::unique_ptr<EVP_PKEY, OpenSslDeleter>;
using X509Ptr = std::unique_ptr<X509, OpenSslDeleter>;

// Lower-case hex SHA-256 of bytes, and of a certificate's DER encoding.
std::string sha256_hex(std::span<const uint8_t> bytes);
std::array<uint8_t, 32> sha256(std::span<const uint8_t> bytes);
std::string der_sha256_hex(X509* cert);

// A P-256 public key from Intel's raw x || y. Returns nullptr (and sets `reason`) when the
// point is not on the curve.
EvpPkeyPtr p256_key_from_xy(std::span<const uint8_t, 64> xy, std::string& reason);

// Verifies an ECDSA-P256-SHA256 signature given as raw r || s. Returns "" when valid, else why.
std::string verify_ecdsa_p256_raw(EVP_PKEY* key, std::span<const uint8_t> message,
                                  std::span<const uint8_t, 64> raw_signature);

// The subject common name, with non-printable bytes replaced (it comes from untrusted input).
std::string common_name(X509* cert);

// Reads the certificate blocks of a PEM text. Sets `reason` when the text holds anything but
// certificate blocks separated by whitespace, or a block does not decode.
std::vector<X509Ptr> read_pem_certificates(std::string_view pem, std::string& reason);

// The pinned Intel SGX Root CA (intel_root_ca.h), checked against its pinned fingerprint.
X509Ptr pinned_intel_root();

// Verifies leaf <- intermediates <- `root` with OpenSSL path validation, `root` being the only
// trust anchor (never a certificate from `intermediates`). Validity periods are not checked
// here (see validity_problem). Returns "" when the chain verifies, else the reason.
std::string verify_chain_to_root(X509* leaf, const std::vector<X509*>& intermediates, X509* root);

// "" when `cert` is within its validity period at `at`, else e.g. "has expired at ...".
std::string validity_problem(X509* cert, time_t at);

// "2026-01-03T05:16:25Z".
std::string format_utc(time_t t);

}  // namespace alem::confidential::pki
