// Tests TCB evaluation with real Intel collateral, offline. tests/data/tdx-collateral/ holds the
// TDX TCB info for FMSPC 90c06f000000 (the test quote's platform) and the TD_QE identity, both
// issued by Intel's PCS on 2026-01-03 and valid until 2026-02-02, with the TCB signing chain
// (Intel SGX TCB Signing, 2025-2032, <- Intel SGX Root CA). Their signatures are Intel's and are
// verified against the pinned root here, so evaluation runs at a fixed time inside that window.
// Outcomes other than "UpToDate" are reached by lowering SVNs in a parsed quote (the signed raw
// bytes stay untouched, so the other checks keep passing) rather than by editing the signed JSON.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <sstream>

#include "confidential/openssl_pki.h"
#include "confidential/quote_verifier.h"
#include "confidential/tdx_collateral.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "tests/test_env.h"

namespace alem::confidential {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::chrono::system_clock::time_point utc(int year, int month, int day) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

class TdxCollateralTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(test::data_dir() + "/tdx-quote-v4.dat", std::ios::binary);
    const std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
    quote_ = parse_tdx_quote(bytes);
    const std::string dir = test::data_dir() + "/tdx-collateral/";
    collateral_.tcb_info_json = read_text(dir + "tcb-info-90c06f000000.json");
    collateral_.qe_identity_json = read_text(dir + "qe-identity-td.json");
    collateral_.issuer_chain_pem = read_text(dir + "tcb-signing-chain.pem");
  }

  // Inside the collateral's window (2026-01-03 .. 2026-02-02), with every period enforced.
  VerifyOptions options() const {
    VerifyOptions options;
    options.at_time = utc(2026, 1, 15);
    options.enforce_validity_periods = true;
    options.collateral = collateral_;
    return options;
  }

  TdxQuote quote_;
  TdxCollateral collateral_;
};

TEST_F(TdxCollateralTest, RealCollateralSaysTheTestPlatformIsUpToDate) {
  const QuoteVerification result = verify_tdx_quote(quote_, options());
  EXPECT_TRUE(result.ok()) << result.report();
  EXPECT_EQ(result.tcb_status, "UpToDate");
  EXPECT_TRUE(result.advisory_ids.empty());
  for (std::string_view name :
       {quote_check::kCollateralSignatures, quote_check::kCollateralValidity,
        quote_check::kQeIdentity, quote_check::kTdxModule, quote_check::kTcbStatus}) {
    const VerificationCheck* check = result.find(name);
    ASSERT_NE(check, nullptr) << name;
    EXPECT_EQ(check->outcome, CheckOutcome::kPassed) << name << ": " << check->detail;
    EXPECT_TRUE(check->mandatory) << name;
  }
  EXPECT_NE(result.find(quote_check::kTdxModule)->detail.find("TDX_01"), std::string::npos);
}

TEST_F(TdxCollateralTest, PckCertificateExtensionIsRead) {
  std::string reason;
  std::vector<pki::X509Ptr> chain = pki::read_pem_certificates(quote_.pck_chain_pem, reason);
  ASSERT_EQ(chain.size(), 3u);
  const PckPlatformTcb platform = read_pck_platform_tcb(chain[0].get());
  EXPECT_EQ(to_lower_hex(platform.fmspc), "90c06f000000");
  EXPECT_EQ(to_lower_hex(platform.pce_id), "0000");
  EXPECT_EQ(to_lower_hex(platform.cpu_svn_components), "03030202040100050000000000000000");
  EXPECT_EQ(platform.pce_svn, 13);
  // The root has no SGX extension.
  EXPECT_THROW(read_pck_platform_tcb(chain[2].get()), Error);
}

TEST_F(TdxCollateralTest, StaleCollateralIsAdvisoryUnlessEnforced) {
  VerifyOptions later = options();
  later.at_time = utc(2026, 6, 1);  // past nextUpdate 2026-02-02
  later.enforce_validity_periods = false;
  QuoteVerification result = verify_tdx_quote(quote_, later);
  EXPECT_TRUE(result.ok()) << result.report();
  const VerificationCheck* validity = result.find(quote_check::kCollateralValidity);
  ASSERT_NE(validity, nullptr);
  EXPECT_EQ(validity->outcome, CheckOutcome::kFailed);
  EXPECT_FALSE(validity->mandatory);
  EXPECT_NE(validity->detail.find("tcbInfo is valid 2026-01-03T05:16:25Z .. 2026-02-02T05:16:25Z"),
            std::string::npos)
      << validity->detail;

  later.enforce_validity_periods = true;
  result = verify_tdx_quote(quote_, later);
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"collateral_validity"});
}

TEST_F(TdxCollateralTest, TamperedCollateralFailsItsSignature) {
  struct Tamper {
    const char* what;
    std::string TdxCollateral::*field;
    std::string from, to;
  };
  const std::vector<Tamper> cases = {
      {"tcbInfo level date", &TdxCollateral::tcb_info_json, "2024-11-13T00:00:00Z\",\"tcbStatus",
       "2025-11-13T00:00:00Z\",\"tcbStatus"},
      {"tcbInfo signature", &TdxCollateral::tcb_info_json, "\"signature\":\"e1",
       "\"signature\":\"e2"},
      {"QE identity isvsvn", &TdxCollateral::qe_identity_json, "\"isvsvn\":4", "\"isvsvn\":3"},
      {"issuer chain", &TdxCollateral::issuer_chain_pem, "MIICjTCCAjKgAwIBAgIUfjiC1ftVKUpASY5F",
       "MIICjTCCAjKgAwIBAgIUfjiC1ftVKUpASY5G"},
  };
  for (const Tamper& tamper : cases) {
    VerifyOptions opts = options();
    std::string& text = (*opts.collateral).*(tamper.field);
    const size_t at = text.find(tamper.from);
    ASSERT_NE(at, std::string::npos) << tamper.what;
    text.replace(at, tamper.from.size(), tamper.to);
    const QuoteVerification result = verify_tdx_quote(quote_, opts);
    EXPECT_FALSE(result.ok()) << tamper.what;
    EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"collateral_signatures"})
        << tamper.what << "\n"
        << result.report();
    EXPECT_EQ(result.find(quote_check::kTcbStatus)->outcome, CheckOutcome::kNotChecked);
    EXPECT_EQ(result.tcb_status, "");
  }
}

TEST_F(TdxCollateralTest, ASignerOtherThanIntelsTcbSigningKeyIsRefused) {
  VerifyOptions opts = options();
  opts.collateral->issuer_chain_pem = quote_.pck_chain_pem;  // Intel certificates, wrong role
  const QuoteVerification result = verify_tdx_quote(quote_, opts);
  EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"collateral_signatures"});
  EXPECT_NE(
      result.find(quote_check::kCollateralSignatures)->detail.find("not \"Intel SGX TCB Signing\""),
      std::string::npos);
}

TEST_F(TdxCollateralTest, AnOlderTdxMicrocodeSvnSelectsTheOutOfDateLevel) {
  quote_.body.tee_tcb_svn[2] = 2;  // below the UpToDate level's TDX Late Microcode Update SVN 3
  const QuoteVerification result = verify_tdx_quote(quote_, options());
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.tcb_status, "OutOfDate");
  EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"tcb_status"});
  EXPECT_EQ(result.advisory_ids.front(), "INTEL-SA-01036");
  EXPECT_NE(result.find(quote_check::kTcbStatus)->detail.find("not an accepted status"),
            std::string::npos);

  VerifyOptions lenient = options();
  lenient.accepted_tcb_statuses = {"UpToDate", "OutOfDate"};
  EXPECT_TRUE(verify_tdx_quote(quote_, lenient).ok());
}

TEST_F(TdxCollateralTest, AnOldTdxModuleLowersTheStatusThroughItsIdentity) {
  quote_.body.tee_tcb_svn[0] = 5;  // TDX_01 module SVN 5: level isvsvn 4, OutOfDate
  QuoteVerification result = verify_tdx_quote(quote_, options());
  EXPECT_EQ(result.tcb_status, "OutOfDate") << result.report();
  EXPECT_NE(result.find(quote_check::kTdxModule)->detail.find("module SVN 5 is OutOfDate"),
            std::string::npos);

  quote_.body.tee_tcb_svn[0] = 1;  // below every TDX_01 level
  result = verify_tdx_quote(quote_, options());
  EXPECT_EQ(result.find(quote_check::kTdxModule)->outcome, CheckOutcome::kFailed);
  EXPECT_FALSE(result.ok());

  quote_.body.tee_tcb_svn[0] = 7;
  quote_.body.tee_tcb_svn[1] = 2;  // no TDX_02 identity in this TCB info
  result = verify_tdx_quote(quote_, options());
  EXPECT_NE(result.find(quote_check::kTdxModule)->detail.find("no identity TDX_02"),
            std::string::npos);
}

TEST_F(TdxCollateralTest, TheQuotingEnclaveMustMatchItsIdentity) {
  quote_.qe_report.isv_svn = 3;  // below the TD_QE level (isvsvn 4)
  QuoteVerification result = verify_tdx_quote(quote_, options());
  EXPECT_EQ(result.find(quote_check::kQeIdentity)->outcome, CheckOutcome::kFailed);
  EXPECT_FALSE(result.ok());

  TdxQuote other = quote_;
  other.qe_report.isv_svn = 6;
  other.qe_report.mrsigner[0] ^= 1;
  result = verify_tdx_quote(other, options());
  EXPECT_NE(result.find(quote_check::kQeIdentity)->detail.find("is not Intel's"),
            std::string::npos);
}

TEST_F(TdxCollateralTest, MalformedCollateralIsAFindingNotACrash) {
  for (const std::string& text : {std::string(""), std::string("{"), std::string("{\"tcbInfo\":"),
                                  std::string("[]"), std::string("{\"signature\":\"00\"}"),
                                  std::string("{\"tcbInfo\":{},\"signature\":\"zz\"}")}) {
    VerifyOptions opts = options();
    opts.collateral->tcb_info_json = text;
    const QuoteVerification result = verify_tdx_quote(quote_, opts);
    EXPECT_FALSE(result.ok()) << text;
    EXPECT_EQ(result.failed_checks(), std::vector<std::string>{"collateral_signatures"}) << text;
  }
}

TEST(RawJsonMember, ReturnsTheExactBytesOfAMember) {
  const std::string text =
      " { \"a\" : \"x}\\\"{\" , \"tcbInfo\" :  {\"k\":[1,{\"s\":\"]}\"}], \"z\": null} ,"
      " \"signature\":\"ab\" } ";
  EXPECT_EQ(raw_json_member(text, "tcbInfo"), "{\"k\":[1,{\"s\":\"]}\"}], \"z\": null}");
  EXPECT_EQ(raw_json_member(text, "signature"), "\"ab\"");
  EXPECT_EQ(raw_json_member(text, "a"), "\"x}\\\"{\"");
  EXPECT_THROW(raw_json_member(text, "missing"), Error);
  EXPECT_THROW(raw_json_member("[1]", "a"), Error);
  EXPECT_THROW(raw_json_member("{\"a\":{", "a"), Error);
}

}  // namespace
}  // namespace alem::confidential
