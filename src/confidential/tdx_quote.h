// Parser for Intel TDX quotes (version 4, and version 5 with a TDX 1.0 or 1.5 report body).
// A quote is the evidence a confidential VM hands to the network: it names the TD image
// (MRTD, RTMRs, ...), binds caller data (REPORTDATA) and carries the signatures and certificate
// chain that let anyone check it offline. This file only turns bytes into fields; it trusts
// nothing. Verification lives in quote_verifier.h.
//
// Every length read from the input is checked against the bytes that remain, so a truncated or
// inconsistent quote yields an alem::Error naming the field and the sizes involved, never a read
// past the buffer. Layout (little-endian, from Intel's "TDX DCAP Quoting Library API", App. 3):
//
//   v4: header(48) | TD report 1.0 (584)                    | sig data len(4) | sig data
//   v5: header(48) | body type(2) | body size(4) | body(584 or 648) | sig data len(4) | sig data
//   sig data: ECDSA sig r||s (64) | attestation key x||y (64) | cert data type 6 (2) | size (4)
//             | QE report (384) | QE report sig (64) | QE auth data len (2) | auth data
//             | cert data type 5 (2) | size (4) | PEM chain: PCK cert, PCK CA, Intel SGX Root CA
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace alem::confidential {

inline constexpr size_t kQuoteHeaderSize = 48;
inline constexpr size_t kTdReport10Size = 584;  // TDX 1.0 TD report body
inline constexpr size_t kTdReport15Size = 648;  // TDX 1.5: 1.0 body + TEE_TCB_SVN2 + MRSERVICETD
inline constexpr size_t kQuoteV5BodyDescriptorSize = 6;  // u16 body type + u32 body size
inline constexpr size_t kSgxReportBodySize = 384;        // the QE report
inline constexpr size_t kEcdsaP256SignatureSize = 64;    // r || s, big-endian
inline constexpr size_t kEcdsaP256PublicKeySize = 64;    // x || y, big-endian

inline constexpr uint16_t kAttestationKeyTypeEcdsaP256 = 2;
inline constexpr uint32_t kTeeTypeTdx = 0x81;
inline constexpr uint16_t kCertificationDataPckCertChain = 5;
inline constexpr uint16_t kCertificationDataQeReport = 6;
// Quote v5 body types.
inline constexpr uint16_t kQuoteBodyTdReport10 = 2;
inline constexpr uint16_t kQuoteBodyTdReport15 = 3;
// Intel's Quoting Enclave vendor id (939a7233-f79c-4ca9-940a-0db3957f0607).
inline constexpr std::array<uint8_t, 16> kIntelQeVendorId = {
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07};

using Measurement = std::array<uint8_t, 48>;  // SHA-384 sized TDX measurement register
using ReportData = std::array<uint8_t, 64>;

struct QuoteHeader {
  uint16_t version = 0;
  uint16_t attestation_key_type = 0;
  uint32_t tee_type = 0;
  uint16_t qe_svn = 0;   // bytes 8..10 (reserved in TDX 1.0 docs, QE SVN in DCAP)
  uint16_t pce_svn = 0;  // bytes 10..12
  std::array<uint8_t, 16> qe_vendor_id{};
  std::array<uint8_t, 20> user_data{};
};

// The TD report body: what the TDX module measured about this TD.
struct TdReportBody {
  std::array<uint8_t, 16> tee_tcb_svn{};
  Measurement mrseam{};
  Measurement mrsignerseam{};
  std::array<uint8_t, 8> seam_attributes{};
  std::array<uint8_t, 8> td_attributes{};
  std::array<uint8_t, 8> xfam{};
  Measurement mrtd{};
  Measurement mrconfigid{};
  Measurement mrowner{};
  Measurement mrownerconfig{};
  std::array<Measurement, 4> rtmr{};
  ReportData report_data{};
  // TDX 1.5 bodies only (quote v5, body type 3); zero otherwise.
  bool has_tdx15_fields = false;
  std::array<uint8_t, 16> tee_tcb_svn2{};
  Measurement mrservicetd{};
};

// An SGX report body; in a TDX quote it is the Quoting Enclave's own report, signed by the PCK.
struct SgxReportBody {
  std::array<uint8_t, 16> cpu_svn{};
  uint32_t misc_select = 0;
  std::array<uint8_t, 16> attributes{};
  std::array<uint8_t, 32> mrenclave{};
  std::array<uint8_t, 32> mrsigner{};
  uint16_t isv_prod_id = 0;
  uint16_t isv_svn = 0;
  ReportData report_data{};
};

struct TdxQuote {
  // The whole quote as given. Signatures are checked over slices of it, never over re-encodings.
  std::vector<uint8_t> raw;
  QuoteHeader header;
  uint16_t body_type = kQuoteBodyTdReport10;  // v4 quotes always carry a TD report 1.0
  TdReportBody body;
  // Bytes [0, signed_size) are covered by the attestation key's signature: 632 for v4,
  // 48 + 6 + 584 (or 648) for v5, whose body descriptor is signed too.
  size_t signed_size = 0;
  uint32_t signature_data_size = 0;
  std::array<uint8_t, kEcdsaP256SignatureSize> quote_signature{};  // r || s over signed bytes
  std::array<uint8_t, kEcdsaP256PublicKeySize> attestation_key{};  // x || y
  uint16_t certification_data_type = 0;                            // 6
  std::array<uint8_t, kSgxReportBodySize> qe_report_raw{};
  SgxReportBody qe_report;
  std::array<uint8_t, kEcdsaP256SignatureSize> qe_report_signature{};  // by the PCK key
  std::vector<uint8_t> qe_auth_data;
  uint16_t pck_certification_data_type = 0;  // 5
  // The PEM chain exactly as carried, minus trailing NUL padding: PCK certificate, then the
  // Intel SGX PCK Platform (or Processor) CA, then the Intel SGX Root CA.
  std::string pck_chain_pem;
  // Zero bytes after the signature data (buffer padding, not signed, not used).
  size_t trailing_padding_size = 0;

  std::span<const uint8_t> signed_bytes() const { return {raw.data(), signed_size}; }
};

// Parses a TDX quote. Throws alem::Error with a precise reason when the input is not a
// well-formed version 4 or 5 ECDSA-P256 TDX quote with QE report certification data (type 6)
// wrapping a PEM PCK chain (type 5), or when any length disagrees with the bytes present.
// Never reads outside `bytes`. Performs no cryptographic checks.
TdxQuote parse_tdx_quote(std::span<const uint8_t> bytes);

// Lower-case hex of any byte range (used in reports, logs and tests).
std::string to_lower_hex(std::span<const uint8_t> bytes);

}  // namespace alem::confidential
