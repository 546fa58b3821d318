// Tests the TDX quote parser, the offline verifier and the COCOON image hash on a real quote
// (tests/data/tdx-quote-v4.dat, public COCOON test data; offsets in ../shared/testdata/README.md).
// Expected values are read from the README or computed here straight from byte offsets with
// OpenSSL, never through the code under test. All checks are offline: the TCB status, which
// needs Intel collateral, is expected to be reported as not checked.
#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <random>
#include <set>

#include "confidential/image_hash.h"
#include "confidential/intel_root_ca.h"
#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "tests/test_env.h"

namespace alem::confidential {
namespace {

constexpr size_t kQuoteFileSize = 5010;
constexpr const char* kQuoteFileSha256 =
    "4e36dfe92842050bdef6fc65450e8c2f3fda49beb519f65ec44ac766f8b834b5";

std::vector<uint8_t> load_quote_bytes() {
  const std::string path = test::data_dir() + "/tdx-quote-v4.dat";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return {std::istreambuf_iterator<char>(in), {}};
}

std::string hex_at(const std::vector<uint8_t>& bytes, size_t offset, size_t size) {
  return to_lower_hex({bytes.data() + offset, size});
}

std::string sha256_hex_openssl(std::span<const uint8_t> data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr), 1);
  return to_lower_hex({digest, size});
}

std::chrono::system_clock::time_point utc(int year, int month, int day) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

// A time inside every certificate's validity (PCK: 2025-07-20 .. 2032-07-20).
VerifyOptions options_inside_validity() {
  VerifyOptions options;
  options.at_time = utc(2026, 1, 1);
  options.enforce_validity_periods = true;
  return options;
}

std::string parse_error(std::span<const uint8_t> bytes) {
  try {
    parse_tdx_quote(bytes);
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

void put_u16(std::vector<uint8_t>& bytes, size_t offset, uint16_t value) {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = value >> 8;
}
void put_u32(std::vector<uint8_t>& bytes, size_t offset, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[offset + i] = (value >> (8 * i)) & 0xff;
}

class TdxQuoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bytes_ = load_quote_bytes();
    ASSERT_EQ(bytes_.size(), kQuoteFileSize);
  }
  std::vector<uint8_t> bytes_;
};

TEST_F(TdxQuoteTest, RepositoryCopyIsTheSharedTestVector) {
  EXPECT_EQ(sha256_hex_openssl(bytes_), kQuoteFileSha256);
}

TEST_F(TdxQuoteTest, HeaderFieldsMatchTheReadme) {
  const TdxQuote quote = parse_tdx_quote(bytes_);
  EXPECT_EQ(quote.header.version, 4);
  EXPECT_EQ(quote.header.attestation_key_type, 2);
  EXPECT_EQ(quote.header.tee_type, 0x81u);
  EXPECT_EQ(to_lower_hex(quote.header.qe_vendor_id), "939a7233f79c4ca9940a0db3957f0607");
  EXPECT_EQ(to_lower_hex(quote.header.user_data), hex_at(bytes_, 28, 20));
  EXPECT_EQ(quote.body_type, kQuoteBodyTdReport10);
  EXPECT_EQ(quote.signed_size, 632u);
}

TEST_F(TdxQuoteTest, TdReportBodyFieldsMatchTheReadme) {
  const TdxQuote quote = parse_tdx_quote(bytes_);
  const TdReportBody& body = quote.body;
  const std::string zero48(96, '0');
  EXPECT_EQ(to_lower_hex(body.tee_tcb_svn), "07010300000000000000000000000000");
  EXPECT_EQ(to_lower_hex(body.mrseam), hex_at(bytes_, 64, 48));
  EXPECT_EQ(to_lower_hex(body.mrsignerseam), zero48);
  EXPECT_EQ(to_lower_hex(body.seam_attributes), hex_at(bytes_, 160, 8));
  EXPECT_EQ(to_lower_hex(body.td_attributes), "0000001000000000");
  EXPECT_EQ(to_lower_hex(body.xfam), "e702060000000000");
  EXPECT_EQ(to_lower_hex(body.mrtd),
            "7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a219786afe2cd478f684b5"
            "2c61837e1114");
  EXPECT_EQ(to_lower_hex(body.mrconfigid), zero48);
  EXPECT_EQ(to_lower_hex(body.mrowner), zero48);
  EXPECT_EQ(to_lower_hex(body.mrownerconfig), zero48);
  EXPECT_EQ(to_lower_hex(body.rtmr[0]),
            "251a7f3cfc68006349444307c686485986beea461740437dae618e22a7aaac4ec0233ae0190eb1ce92ab"
            "8e9966563acc");
  EXPECT_EQ(to_lower_hex(body.rtmr[1]).substr(0, 8), "7a6eb32a");
  EXPECT_EQ(to_lower_hex(body.rtmr[1]), hex_at(bytes_, 424, 48));
  EXPECT_EQ(to_lower_hex(body.rtmr[2]).substr(0, 8), "aaccda38");
  EXPECT_EQ(to_lower_hex(body.rtmr[2]), hex_at(bytes_, 472, 48));
  EXPECT_EQ(to_lower_hex(body.rtmr[3]), zero48);
  EXPECT_EQ(to_lower_hex(body.report_data),
            "d21efaa8d7de2b0f5601df8b24cfbca690c5231e677d0fe35954c8be00614bd2"
            "7f467a5624a6667aa74506cb14c271a48894c3ef11d2d26b269a2926fc74f87b");
  EXPECT_FALSE(body.has_tdx15_fields);
}

TEST_F(TdxQuoteTest, SignatureDataMatchesTheReadme) {
  const TdxQuote quote = parse_tdx_quote(bytes_);
  EXPECT_EQ(quote.signature_data_size, 4304u);
  EXPECT_EQ(to_lower_hex(quote.quote_signature), hex_at(bytes_, 636, 64));
  EXPECT_EQ(to_lower_hex(quote.attestation_key), hex_at(bytes_, 700, 64));
  EXPECT_EQ(quote.certification_data_type, 6);
  EXPECT_EQ(to_lower_hex(quote.qe_report_raw), hex_at(bytes_, 770, 384));
  EXPECT_EQ(to_lower_hex(quote.qe_report.report_data), hex_at(bytes_, 770 + 320, 64));
  EXPECT_EQ(to_lower_hex(quote.qe_report_signature), hex_at(bytes_, 1154, 64));
  ASSERT_EQ(quote.qe_auth_data.size(), 32u);
  EXPECT_EQ(to_lower_hex(quote.qe_auth_data), hex_at(bytes_, 1220, 32));
  EXPECT_EQ(quote.pck_certification_data_type, 5);
  EXPECT_EQ(quote.pck_chain_pem.size(), 3682u - 1u);  // the block ends in one NUL
  EXPECT_EQ(quote.pck_chain_pem.rfind("-----BEGIN CERTIFICATE-----", 0), 0u);
  EXPECT_EQ(quote.trailing_padding_size, kQuoteFileSize - (1258 + 3682));
}

TEST_F(TdxQuoteTest, PinnedRootConstantsAgreeWithEachOtherAndTheQuote) {
  EXPECT_EQ(certificate_sha256_hex(kIntelSgxRootCaPem), kIntelSgxRootCaSha256);
  // Public key of the pinned PEM, read back with OpenSSL.
  BIO* bio =
      BIO_new_mem_buf(kIntelSgxRootCaPem.data(), static_cast<int>(kIntelSgxRootCaPem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  ASSERT_NE(cert, nullptr);
  unsigned char point[65];
  size_t point_size = 0;
  ASSERT_EQ(EVP_PKEY_get_octet_string_param(X509_get0_pubkey(cert), OSSL_PKEY_PARAM_PUB_KEY, point,
                                            sizeof(point), &point_size),
            1);
  ASSERT_EQ(point_size, 65u);
  EXPECT_EQ(to_lower_hex({point + 1, 64}), kIntelSgxRootCaPublicKeyXY);
  X509_free(cert);
  BIO_free(bio);
  // The quote's last certificate is that root.
  const TdxQuote quote = parse_tdx_quote(bytes_);
  const size_t root_begin = quote.pck_chain_pem.rfind("-----BEGIN CERTIFICATE-----");
  EXPECT_EQ(certificate_sha256_hex(std::string_view(quote.pck_chain_pem).substr(root_begin)),
            kIntelSgxRootCaSha256);
}

TEST_F(TdxQuoteTest, VerificationPassesAtAFixedTimeInsideValidity) {
  const QuoteVerification result =
      verify_tdx_quote(parse_tdx_quote(bytes_), options_inside_validity());
  EXPECT_TRUE(result.ok()) << result.report();
  for (std::string_view name :
       {quote_check::kQeVendorId, quote_check::kQuoteSignature, quote_check::kDebugDisabled,
        quote_check::kPckChainParse, quote_check::kRootCaPinned, quote_check::kPckChain,
        quote_check::kCertificateValidity, quote_check::kQeReportSignature,
        quote_check::kQeReportBinding}) {
    const VerificationCheck* check = result.find(name);
    ASSERT_NE(check, nullptr) << name;
    EXPECT_EQ(check->outcome, CheckOutcome::kPassed) << name << ": " << check->detail;
    EXPECT_TRUE(check->mandatory) << name;
  }
  const VerificationCheck* tcb = result.find(quote_check::kTcbStatus);
  ASSERT_NE(tcb, nullptr);
  EXPECT_EQ(tcb->outcome, CheckOutcome::kNotChecked);
  EXPECT_FALSE(tcb->mandatory);
  EXPECT_EQ(tcb->detail, "TCB status not checked: no collateral");
  EXPECT_EQ(result.tcb_status, "");
  EXPECT_EQ(result.pck_fmspc_hex, "90c06f000000");
}

TEST_F(TdxQuoteTest, ExpiryIsAdvisoryByDefaultAndMandatoryOnRequest) {
  const TdxQuote quote = parse_tdx_quote(bytes_);
  VerifyOptions later;
  later.at_time = utc(2040, 1, 1);  // PCK certificate expired in 2032
  QuoteVerification result = verify_tdx_quote(quote, later);
  const VerificationCheck* validity = result.find(quote_check::kCertificateValidity);
  ASSERT_NE(validity, nullptr);
  EXPECT_EQ(validity->outcome, CheckOutcome::kFailed);
  EXPECT_FALSE(validity->mandatory);
  EXPECT_NE(validity->detail.find("PCK certificate has expired"), std::string::npos)
      << validity->detail;
  EXPECT_TRUE(result.ok()) << result.report();

  later.enforce_validity_periods = true;
  EXPECT_FALSE(verify_tdx_quote(quote, later).ok());

  VerifyOptions earlier;
  earlier.at_time = utc(2020, 1, 1);
  earlier.enforce_validity_periods = true;
  result = verify_tdx_quote(quote, earlier);
  EXPECT_FALSE(result.ok());
  EXPECT_NE(result.find(quote_check::kCertificateValidity)->detail.find("not yet valid"),
            std::string::npos);
}

TEST_F(TdxQuoteTest, ExpectedReportDataIsEnforcedWhenGiven) {
  const TdxQuote quote = parse_tdx_quote(bytes_);
  VerifyOptions options = options_inside_validity();
  options.expected_report_data = quote.body.report_data;
  EXPECT_TRUE(verify_tdx_quote(quote, options).ok());
  (*options.expected_report_data)[63] ^= 1;
  const QuoteVerification result = verify_tdx_quote(quote, options);
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"report_data"});
}

// 28 = the BEGIN line; then 65 bytes per base64 line. Line 10, column 20 lies in the signed
// part (past the names) of each certificate and keeps the DER well formed.
size_t offset_inside_certificate(const std::vector<uint8_t>& bytes, int index, int line = 10) {
  const std::string text(bytes.begin(), bytes.end());
  size_t begin = 0;
  for (int i = 0; i <= index; ++i) begin = text.find("-----BEGIN CERTIFICATE-----", begin + 1);
  return begin + 28 + 65 * line + 20;
}

struct Tamper {
  const char* region;
  size_t offset;
  std::set<std::string> expected_failures;
};

TEST_F(TdxQuoteTest, FlippingAByteInEachSignedRegionFailsTheRightCheck) {
  const std::vector<Tamper> cases = {
      {"header user data", 30, {"quote_signature"}},
      {"header QE vendor id", 12, {"qe_vendor_id", "quote_signature"}},
      {"TD report body MRTD", 200, {"quote_signature"}},
      {"TD report body TDATTRIBUTES.DEBUG", 168, {"quote_signature", "debug_disabled"}},
      {"TD report body REPORTDATA", 600, {"quote_signature"}},
      {"quote signature", 640, {"quote_signature"}},
      {"attestation key", 710, {"quote_signature", "qe_report_binding"}},
      {"QE report CPUSVN", 775, {"qe_report_signature"}},
      {"QE report REPORTDATA", 770 + 320, {"qe_report_signature", "qe_report_binding"}},
      {"QE report signature", 1160, {"qe_report_signature"}},
      {"QE auth data", 1225, {"qe_report_binding"}},
      {"PCK certificate", offset_inside_certificate(bytes_, 0), {"pck_chain"}},
      {"PCK Platform CA certificate", offset_inside_certificate(bytes_, 1), {"pck_chain"}},
      // The quote's copy of the root is never trusted: only the pin comparison notices.
      {"Root CA certificate copy", offset_inside_certificate(bytes_, 2), {"root_ca_pinned"}},
      // Here the change breaks the DER itself: the chain no longer parses.
      {"PCK Platform CA DER structure",
       offset_inside_certificate(bytes_, 1, 6),
       {"pck_chain_parse"}},
      // Here it lands in the PCK certificate's subject name, which must be Intel's.
      {"PCK certificate subject", offset_inside_certificate(bytes_, 0, 4), {"pck_chain_parse"}},
  };
  for (const Tamper& tamper : cases) {
    std::vector<uint8_t> bytes = bytes_;
    uint8_t& target = bytes[tamper.offset];
    // Inside PEM text keep the byte a base64 letter, so the change reaches the DER.
    target = tamper.offset >= 1258 ? (target == 'A' ? 'B' : 'A') : target ^ 0x01;
    const QuoteVerification result =
        verify_tdx_quote(parse_tdx_quote(bytes), options_inside_validity());
    EXPECT_FALSE(result.ok()) << tamper.region;
    const std::vector<std::string> failed = result.failed_checks();
    EXPECT_EQ(std::set<std::string>(failed.begin(), failed.end()), tamper.expected_failures)
        << tamper.region << "\n"
        << result.report();
  }
}

TEST_F(TdxQuoteTest, TruncationAtEveryOffsetIsAParseErrorNeverACrash) {
  const size_t end_of_fields = 1258 + 3682;  // what follows is zero padding
  for (size_t size = 0; size < kQuoteFileSize; ++size) {
    std::span<const uint8_t> prefix(bytes_.data(), size);
    if (size < end_of_fields) {
      const std::string error = parse_error(prefix);
      EXPECT_NE(error.find("quote truncated"), std::string::npos) << size << ": " << error;
    } else {
      EXPECT_EQ(parse_error(prefix), "") << size;  // only padding was cut
    }
  }
  EXPECT_EQ(parse_error(std::span<const uint8_t>(bytes_.data(), 736)),
            "quote truncated: signature data length 4304 exceeds remaining 100 bytes (at offset "
            "636, in the quote)");
  EXPECT_NE(parse_error(std::span<const uint8_t>(bytes_.data(), 30)).find("header user data"),
            std::string::npos);
}

TEST_F(TdxQuoteTest, InconsistentLengthsAndTypesAreRefusedWithTheReason) {
  struct Edit {
    const char* what;
    std::function<void(std::vector<uint8_t>&)> apply;
    const char* expected;
  };
  const std::vector<Edit> edits = {
      {"version 3", [](auto& b) { put_u16(b, 0, 3); }, "unsupported quote version 3"},
      {"key type 3", [](auto& b) { put_u16(b, 2, 3); }, "unsupported attestation key type 3"},
      {"SGX tee type", [](auto& b) { put_u32(b, 4, 0); }, "unsupported TEE type 0x0"},
      {"signature data too long", [](auto& b) { put_u32(b, 632, 5000); },
       "signature data length 5000 exceeds remaining 4374 bytes"},
      {"signature data one short", [](auto& b) { put_u32(b, 632, 4303); },
       "certification data size 4170 exceeds remaining 4169 bytes"},
      {"certification data type 5", [](auto& b) { put_u16(b, 764, 5); },
       "unsupported certification data type 5"},
      {"certification data one short", [](auto& b) { put_u32(b, 766, 4169); },
       "quote inconsistent: signature data declares 4304 bytes but its contents take 4303"},
      {"auth data length huge", [](auto& b) { put_u16(b, 1218, 0xffff); },
       "QE authentication data length 65535 exceeds remaining"},
      {"PCK chain type 4", [](auto& b) { put_u16(b, 1252, 4); },
       "unsupported PCK certification data type 4"},
      {"PCK chain one long", [](auto& b) { put_u32(b, 1254, 3683); },
       "PCK certificate chain size 3683 exceeds remaining 3682 bytes"},
      {"PCK chain one short", [](auto& b) { put_u32(b, 1254, 3681); },
       "quote inconsistent: QE report certification data declares 4170 bytes but its contents "
       "take 4169"},
      {"non-zero padding", [](auto& b) { b[5000] = 1; }, "non-zero byte at offset 5000"},
      {"NUL inside the chain", [](auto& b) { b[2000] = 0; }, "contains a NUL byte"},
  };
  for (const Edit& edit : edits) {
    std::vector<uint8_t> bytes = bytes_;
    edit.apply(bytes);
    const std::string error = parse_error(bytes);
    EXPECT_NE(error.find(edit.expected), std::string::npos)
        << edit.what << ": got \"" << error << "\"";
  }
}

TEST_F(TdxQuoteTest, RandomCorruptionNeverCrashesParserOrVerifier) {
  std::mt19937 random(12345);
  // Length and type fields, where corruption is most dangerous, plus anywhere at all.
  const std::vector<size_t> hot = {0,   2,   4,    632,  633,  634,  635, 764,
                                   766, 767, 1218, 1219, 1252, 1254, 1255};
  int parsed = 0;
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> bytes = bytes_;
    const int edits = 1 + static_cast<int>(random() % 3);
    for (int e = 0; e < edits; ++e) {
      const size_t offset = round % 2 ? hot[random() % hot.size()] : random() % bytes.size();
      bytes[offset] = static_cast<uint8_t>(random());
    }
    bytes.resize(random() % 4 ? bytes.size() : random() % bytes.size());
    try {
      const TdxQuote quote = parse_tdx_quote(bytes);
      ++parsed;
      verify_tdx_quote(quote, options_inside_validity());
    } catch (const Error&) {
      // a refused quote is fine; anything else escapes and fails the test
    }
  }
  EXPECT_GT(parsed, 0);
}

// A version-5 quote built from the v4 one: same body behind a body descriptor. Its signature
// no longer covers the right bytes (the descriptor is signed in v5), so only that check fails.
std::vector<uint8_t> as_version5(const std::vector<uint8_t>& v4, uint16_t body_type,
                                 uint32_t body_size, size_t extra_body_bytes) {
  std::vector<uint8_t> v5(v4.begin(), v4.begin() + 48);
  put_u16(v5, 0, 5);
  v5.resize(54);
  put_u16(v5, 48, body_type);
  put_u32(v5, 50, body_size);
  v5.insert(v5.end(), v4.begin() + 48, v4.begin() + 632);
  v5.insert(v5.end(), extra_body_bytes, 0xab);
  v5.insert(v5.end(), v4.begin() + 632, v4.end());
  return v5;
}

TEST_F(TdxQuoteTest, Version5QuotesParseWithTdx10And15Bodies) {
  const TdxQuote v4 = parse_tdx_quote(bytes_);
  const TdxQuote v10 = parse_tdx_quote(as_version5(bytes_, 2, 584, 0));
  EXPECT_EQ(v10.header.version, 5);
  EXPECT_EQ(v10.signed_size, 48u + 6u + 584u);
  EXPECT_EQ(v10.body.mrtd, v4.body.mrtd);
  EXPECT_EQ(v10.body.report_data, v4.body.report_data);
  EXPECT_EQ(cocoon_image_hash_hex(v10), cocoon_image_hash_hex(v4));
  const QuoteVerification result = verify_tdx_quote(v10, options_inside_validity());
  EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"quote_signature"});

  const TdxQuote v15 = parse_tdx_quote(as_version5(bytes_, 3, 648, 64));
  EXPECT_TRUE(v15.body.has_tdx15_fields);
  EXPECT_EQ(v15.body.tee_tcb_svn2[0], 0xab);
  EXPECT_EQ(v15.body.mrservicetd[47], 0xab);
  EXPECT_EQ(v15.signed_size, 48u + 6u + 648u);

  EXPECT_NE(parse_error(as_version5(bytes_, 3, 584, 0)).find("must be 648 bytes"),
            std::string::npos);
  EXPECT_NE(parse_error(as_version5(bytes_, 1, 384, 0)).find("unsupported quote v5 body type 1"),
            std::string::npos);
}

TEST_F(TdxQuoteTest, ImageHashEqualsAnIndependentComputationOverTheReadmeOffsets) {
  // MRTD @184, MRCONFIGID @232, MROWNER @280, MROWNERCONFIG @328, RTMR0..3 @376..568: eight
  // consecutive 48-byte registers, then 64 zero bytes.
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr), 1);
  for (size_t offset : {184, 232, 280, 328, 376, 424, 472, 520}) {
    ASSERT_EQ(EVP_DigestUpdate(ctx, bytes_.data() + offset, 48), 1);
  }
  const std::array<uint8_t, 64> zeros{};
  ASSERT_EQ(EVP_DigestUpdate(ctx, zeros.data(), zeros.size()), 1);
  unsigned char digest[32];
  unsigned int size = 0;
  ASSERT_EQ(EVP_DigestFinal_ex(ctx, digest, &size), 1);
  EVP_MD_CTX_free(ctx);
  const std::string expected = to_lower_hex({digest, size});

  const TdxQuote quote = parse_tdx_quote(bytes_);
  EXPECT_EQ(cocoon_image_hash_hex(quote), expected);
  // Pinned too, so a change in either computation is noticed.
  EXPECT_EQ(expected, "04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436");
  // REPORTDATA is not part of the image.
  TdxQuote other = quote;
  other.body.report_data[0] ^= 1;
  EXPECT_EQ(cocoon_image_hash_hex(other), expected);
  other.body.rtmr[3][0] ^= 1;
  EXPECT_NE(cocoon_image_hash_hex(other), expected);
}

}  // namespace
}  // namespace alem::confidential
