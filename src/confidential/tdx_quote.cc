// Implements parse_tdx_quote: a bounds-checked reader over the quote bytes. Each read names the
// field it wants, so an error says exactly which field ran past the end or disagreed with a
// declared size ("quote truncated: signature data length 4304 exceeds remaining 100 bytes").
#include "confidential/tdx_quote.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace alem::confidential {
namespace {

// Reads little-endian fields from a byte range, refusing to step past its end.
class BoundedReader {
 public:
  BoundedReader(std::span<const uint8_t> bytes, size_t base_offset, std::string region)
      : bytes_(bytes), base_offset_(base_offset), region_(std::move(region)) {}

  size_t remaining() const { return bytes_.size() - position_; }
  size_t offset_in_quote() const { return base_offset_ + position_; }

  std::span<const uint8_t> take(size_t size, const char* field) {
    if (size > remaining()) {
      ALEM_FAIL("quote truncated: " + std::string(field) + " needs " + std::to_string(size) +
                " bytes at offset " + std::to_string(offset_in_quote()) + " but only " +
                std::to_string(remaining()) + " remain in the " + region_);
    }
    std::span<const uint8_t> out = bytes_.subspan(position_, size);
    position_ += size;
    return out;
  }

  // Takes a length-prefixed block whose length was already read: the message names the
  // length field, as that is the value a reader of the error will look for.
  std::span<const uint8_t> take_declared(uint64_t declared, const char* length_field) {
    if (declared > remaining()) {
      ALEM_FAIL("quote truncated: " + std::string(length_field) + " " + std::to_string(declared) +
                " exceeds remaining " + std::to_string(remaining()) + " bytes (at offset " +
                std::to_string(offset_in_quote()) + ", in the " + region_ + ")");
    }
    return take(static_cast<size_t>(declared), length_field);
  }

  template <size_t N>
  std::array<uint8_t, N> array(const char* field) {
    std::array<uint8_t, N> out;
    std::span<const uint8_t> in = take(N, field);
    std::memcpy(out.data(), in.data(), N);
    return out;
  }

  uint16_t u16(const char* field) {
    std::span<const uint8_t> in = take(2, field);
    return static_cast<uint16_t>(in[0] | (in[1] << 8));
  }

  uint32_t u32(const char* field) {
    std::span<const uint8_t> in = take(4, field);
    return static_cast<uint32_t>(in[0]) | (static_cast<uint32_t>(in[1]) << 8) |
           (static_cast<uint32_t>(in[2]) << 16) | (static_cast<uint32_t>(in[3]) << 24);
  }

  void skip(size_t size, const char* field) { take(size, field); }

 private:
  std::span<const uint8_t> bytes_;
  size_t base_offset_;
  std::string region_;
  size_t position_ = 0;
};

QuoteHeader read_header(BoundedReader& reader) {
  QuoteHeader header;
  header.version = reader.u16("header version");
  header.attestation_key_type = reader.u16("header attestation key type");
  header.tee_type = reader.u32("header TEE type");
  header.qe_svn = reader.u16("header QE SVN");
  header.pce_svn = reader.u16("header PCE SVN");
  header.qe_vendor_id = reader.array<16>("header QE vendor id");
  header.user_data = reader.array<20>("header user data");
  if (header.version != 4 && header.version != 5) {
    ALEM_FAIL("unsupported quote version " + std::to_string(header.version) +
              " (this parser reads TDX quote versions 4 and 5)");
  }
  if (header.attestation_key_type != kAttestationKeyTypeEcdsaP256) {
    ALEM_FAIL("unsupported attestation key type " + std::to_string(header.attestation_key_type) +
              " (expected 2, ECDSA-256 with P-256)");
  }
  if (header.tee_type != kTeeTypeTdx) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%x", header.tee_type);
    ALEM_FAIL("unsupported TEE type " + std::string(hex) +
              " (expected 0x81, TDX; SGX enclave quotes are not TD evidence)");
  }
  return header;
}

TdReportBody read_td_report_body(BoundedReader& reader, bool tdx15) {
  TdReportBody body;
  body.tee_tcb_svn = reader.array<16>("TEE_TCB_SVN");
  body.mrseam = reader.array<48>("MRSEAM");
  body.mrsignerseam = reader.array<48>("MRSIGNERSEAM");
  body.seam_attributes = reader.array<8>("SEAMATTRIBUTES");
  body.td_attributes = reader.array<8>("TDATTRIBUTES");
  body.xfam = reader.array<8>("XFAM");
  body.mrtd = reader.array<48>("MRTD");
  body.mrconfigid = reader.array<48>("MRCONFIGID");
  body.mrowner = reader.array<48>("MROWNER");
  body.mrownerconfig = reader.array<48>("MROWNERCONFIG");
  body.rtmr[0] = reader.array<48>("RTMR0");
  body.rtmr[1] = reader.array<48>("RTMR1");
  body.rtmr[2] = reader.array<48>("RTMR2");
  body.rtmr[3] = reader.array<48>("RTMR3");
  body.report_data = reader.array<64>("REPORTDATA");
  if (tdx15) {
    body.has_tdx15_fields = true;
    body.tee_tcb_svn2 = reader.array<16>("TEE_TCB_SVN2");
    body.mrservicetd = reader.array<48>("MRSERVICETD");
  }
  return body;
}

// SGX report body layout (Intel SGX SDK sgx_report_body_t): reserved gaps are skipped.
SgxReportBody decode_sgx_report_body(std::span<const uint8_t> raw, size_t base_offset) {
  BoundedReader reader(raw, base_offset, "QE report");
  SgxReportBody report;
  report.cpu_svn = reader.array<16>("QE report CPUSVN");
  report.misc_select = reader.u32("QE report MISCSELECT");
  reader.skip(28, "QE report reserved1");
  report.attributes = reader.array<16>("QE report ATTRIBUTES");
  report.mrenclave = reader.array<32>("QE report MRENCLAVE");
  reader.skip(32, "QE report reserved2");
  report.mrsigner = reader.array<32>("QE report MRSIGNER");
  reader.skip(96, "QE report reserved3");
  report.isv_prod_id = reader.u16("QE report ISVPRODID");
  report.isv_svn = reader.u16("QE report ISVSVN");
  reader.skip(60, "QE report reserved4");
  report.report_data = reader.array<64>("QE report REPORTDATA");
  return report;
}

std::string consistency_error(const std::string& what, size_t declared, size_t used) {
  return "quote inconsistent: " + what + " declares " + std::to_string(declared) +
         " bytes but its contents take " + std::to_string(used);
}

// Parses the type-6 certification data (QE report, its signature, QE auth data, and the nested
// type-5 PEM chain) and checks that the parts exactly fill the declared size.
void read_qe_report_certification_data(std::span<const uint8_t> block, size_t base_offset,
                                       TdxQuote& quote) {
  BoundedReader reader(block, base_offset, "QE report certification data");
  std::span<const uint8_t> qe_report = reader.take(kSgxReportBodySize, "QE report");
  std::memcpy(quote.qe_report_raw.data(), qe_report.data(), kSgxReportBodySize);
  quote.qe_report = decode_sgx_report_body(qe_report, base_offset);
  quote.qe_report_signature = reader.array<kEcdsaP256SignatureSize>("QE report signature");
  uint16_t auth_size = reader.u16("QE authentication data length");
  std::span<const uint8_t> auth = reader.take_declared(auth_size, "QE authentication data length");
  quote.qe_auth_data.assign(auth.begin(), auth.end());

  quote.pck_certification_data_type = reader.u16("PCK certification data type");
  if (quote.pck_certification_data_type != kCertificationDataPckCertChain) {
    ALEM_FAIL("unsupported PCK certification data type " +
              std::to_string(quote.pck_certification_data_type) +
              " inside the QE report certification data (expected 5, PEM PCK certificate chain)");
  }
  uint32_t chain_size = reader.u32("PCK certificate chain size");
  std::span<const uint8_t> chain = reader.take_declared(chain_size, "PCK certificate chain size");
  if (reader.remaining() != 0) {
    ALEM_FAIL(consistency_error("QE report certification data", block.size(),
                                block.size() - reader.remaining()));
  }
  size_t text_size = chain.size();
  while (text_size > 0 && chain[text_size - 1] == 0) --text_size;  // NUL padding is common
  quote.pck_chain_pem.assign(reinterpret_cast<const char*>(chain.data()), text_size);
  if (std::find(quote.pck_chain_pem.begin(), quote.pck_chain_pem.end(), '\0') !=
      quote.pck_chain_pem.end()) {
    ALEM_FAIL("quote malformed: PCK certificate chain contains a NUL byte before its end");
  }
}

}  // namespace

TdxQuote parse_tdx_quote(std::span<const uint8_t> bytes) {
  TdxQuote quote;
  BoundedReader reader(bytes, 0, "quote");
  quote.header = read_header(reader);

  size_t body_size = kTdReport10Size;
  if (quote.header.version == 5) {
    quote.body_type = reader.u16("quote v5 body type");
    uint32_t declared_body_size = reader.u32("quote v5 body size");
    if (quote.body_type == kQuoteBodyTdReport10) {
      body_size = kTdReport10Size;
    } else if (quote.body_type == kQuoteBodyTdReport15) {
      body_size = kTdReport15Size;
    } else {
      ALEM_FAIL("unsupported quote v5 body type " + std::to_string(quote.body_type) +
                " (expected 2, TD report 1.0, or 3, TD report 1.5)");
    }
    if (declared_body_size != body_size) {
      ALEM_FAIL("quote inconsistent: v5 body type " + std::to_string(quote.body_type) +
                " must be " + std::to_string(body_size) + " bytes but its size field says " +
                std::to_string(declared_body_size));
    }
  }
  std::span<const uint8_t> body = reader.take(body_size, "TD report body");
  BoundedReader body_reader(body, reader.offset_in_quote() - body_size, "TD report body");
  quote.body = read_td_report_body(body_reader, body_size == kTdReport15Size);
  quote.signed_size = reader.offset_in_quote();

  quote.signature_data_size = reader.u32("signature data length");
  size_t signature_data_offset = reader.offset_in_quote();
  std::span<const uint8_t> signature_data =
      reader.take_declared(quote.signature_data_size, "signature data length");
  // Quotes from the kernel and from quote generation services are often zero-padded to a
  // buffer size (the test quote has 70 zero bytes). Zeros carry nothing and are allowed;
  // anything else after the signature data is unsigned content and is refused.
  std::span<const uint8_t> trailing = reader.take(reader.remaining(), "trailing padding");
  auto nonzero = std::find_if(trailing.begin(), trailing.end(), [](uint8_t b) { return b != 0; });
  if (nonzero != trailing.end()) {
    ALEM_FAIL("quote inconsistent: non-zero byte at offset " +
              std::to_string(reader.offset_in_quote() - trailing.size() +
                             static_cast<size_t>(nonzero - trailing.begin())) +
              " in the " + std::to_string(trailing.size()) +
              " bytes after the signature data (only zero padding may follow it)");
  }
  quote.trailing_padding_size = trailing.size();

  BoundedReader sig_reader(signature_data, signature_data_offset, "signature data");
  quote.quote_signature = sig_reader.array<kEcdsaP256SignatureSize>("quote ECDSA signature");
  quote.attestation_key = sig_reader.array<kEcdsaP256PublicKeySize>("attestation public key");
  quote.certification_data_type = sig_reader.u16("certification data type");
  if (quote.certification_data_type != kCertificationDataQeReport) {
    ALEM_FAIL("unsupported certification data type " +
              std::to_string(quote.certification_data_type) +
              " (expected 6, QE report certification data, as TDX quotes carry)");
  }
  uint32_t certification_size = sig_reader.u32("certification data size");
  size_t certification_offset = sig_reader.offset_in_quote();
  std::span<const uint8_t> certification =
      sig_reader.take_declared(certification_size, "certification data size");
  if (sig_reader.remaining() != 0) {
    ALEM_FAIL(consistency_error("signature data", signature_data.size(),
                                signature_data.size() - sig_reader.remaining()));
  }
  read_qe_report_certification_data(certification, certification_offset, quote);

  quote.raw.assign(bytes.begin(), bytes.end());
  return quote;
}

std::string to_lower_hex(std::span<const uint8_t> bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

}  // namespace alem::confidential
