// The pinned trust anchor for TDX quotes: the Intel SGX Root CA. Every PCK certificate chain in
// a quote must end at exactly this certificate; it is the only anchor the verifier gives
// OpenSSL, so a chain that ends at any other root (however well formed) fails.
//
// Provenance: the PEM below was taken from the PCK chain of the public COCOON test quote
// (tests/data/tdx-quote-v4.dat, last certificate). A quote cannot vouch for its own root, so it
// is pinned only because it is byte-identical to the root Intel publishes:
//
//   https://certificates.trustedservices.intel.com/Intel_SGX_Provisioning_Certification_RootCA.cer
//   subject = issuer = CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US
//   serial 22650CD65A9D3489F383B49552BF501B392706AC, valid 2018-05-21 .. 2049-12-31, P-256 key
//   SHA-256 of the DER (659 bytes) =
//   44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3
//
// That fingerprint is the one Intel's DCAP quote verification library and other independent
// verifiers pin. To re-check it:
//   curl -s <the .cer URL above> | openssl x509 -inform DER -outform DER | sha256sum
// If Intel ever rotates its root, replace all three constants together; test_tdx_quote asserts
// that they agree with each other.
#pragma once

#include <string_view>

namespace alem::confidential {

inline constexpr std::string_view kIntelSgxRootCaPem =
    "-----BEGIN CERTIFICATE-----\n"
    "MIICjzCCAjSgAwIBAgIUImUM1lqdNInzg7SVUr9QGzknBqwwCgYIKoZIzj0EAwIw\n"
    "aDEaMBgGA1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENv\n"
    "cnBvcmF0aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJ\n"
    "BgNVBAYTAlVTMB4XDTE4MDUyMTEwNDUxMFoXDTQ5MTIzMTIzNTk1OVowaDEaMBgG\n"
    "A1UEAwwRSW50ZWwgU0dYIFJvb3QgQ0ExGjAYBgNVBAoMEUludGVsIENvcnBvcmF0\n"
    "aW9uMRQwEgYDVQQHDAtTYW50YSBDbGFyYTELMAkGA1UECAwCQ0ExCzAJBgNVBAYT\n"
    "AlVTMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEC6nEwMDIYZOj/iPWsCzaEKi7\n"
    "1OiOSLRFhWGjbnBVJfVnkY4u3IjkDYYL0MxO4mqsyYjlBalTVYxFP2sJBK5zlKOB\n"
    "uzCBuDAfBgNVHSMEGDAWgBQiZQzWWp00ifODtJVSv1AbOScGrDBSBgNVHR8ESzBJ\n"
    "MEegRaBDhkFodHRwczovL2NlcnRpZmljYXRlcy50cnVzdGVkc2VydmljZXMuaW50\n"
    "ZWwuY29tL0ludGVsU0dYUm9vdENBLmRlcjAdBgNVHQ4EFgQUImUM1lqdNInzg7SV\n"
    "Ur9QGzknBqwwDgYDVR0PAQH/BAQDAgEGMBIGA1UdEwEB/wQIMAYBAf8CAQEwCgYI\n"
    "KoZIzj0EAwIDSQAwRgIhAOW/5QkR+S9CiSDcNoowLuPRLsWGf/Yi7GSX94BgwTwg\n"
    "AiEA4J0lrHoMs+Xo5o/sX6O9QWxHRAvZUGOdRQ7cvqRXaqI=\n"
    "-----END CERTIFICATE-----\n";

// SHA-256 over the DER encoding of the certificate above (lower-case hex).
inline constexpr std::string_view kIntelSgxRootCaSha256 =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

// Its P-256 public key, uncompressed point x || y (lower-case hex, without the 0x04 prefix).
inline constexpr std::string_view kIntelSgxRootCaPublicKeyXY =
    "0ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48b4458561a36e705525f5"
    "67918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394";

}  // namespace alem::confidential
