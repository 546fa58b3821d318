// Offline verification of a parsed TDX quote: everything that can be checked from the quote's
// own bytes plus the pinned Intel SGX Root CA, with no network access. A peer (or the COCOON
// side) uses it to decide whether a quote is genuine Intel TDX evidence before it looks at the
// measurements (image hash) and REPORTDATA (the bound key).
//
// What "ok()" promises without collateral: the quote body was signed by an attestation key that
// Intel's Quoting Enclave vouched for, on a CPU whose PCK certificate chains to Intel's root, and
// neither the TD nor the QE runs in debug mode. It does NOT promise that the platform's TCB is up
// to date: that needs Intel's collateral (TCB info, QE identity), reported as "not checked"
// unless given. Revocation (Intel's CRLs) is never checked here. See docs/attestation.md.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "confidential/tdx_quote.h"

namespace alem::confidential {

// Stable names of the individual checks, in the order they run.
namespace quote_check {
inline constexpr std::string_view kQeVendorId = "qe_vendor_id";
inline constexpr std::string_view kQuoteSignature = "quote_signature";
inline constexpr std::string_view kDebugDisabled = "debug_disabled";
inline constexpr std::string_view kPckChainParse = "pck_chain_parse";
inline constexpr std::string_view kRootCaPinned = "root_ca_pinned";
inline constexpr std::string_view kPckChain = "pck_chain";
inline constexpr std::string_view kCertificateValidity = "certificate_validity";
inline constexpr std::string_view kQeReportSignature = "qe_report_signature";
inline constexpr std::string_view kQeReportBinding = "qe_report_binding";
inline constexpr std::string_view kReportData = "report_data";
// Only with collateral:
inline constexpr std::string_view kCollateralSignatures = "collateral_signatures";
inline constexpr std::string_view kCollateralValidity = "collateral_validity";
inline constexpr std::string_view kQeIdentity = "qe_identity";
inline constexpr std::string_view kTdxModule = "tdx_module";
// Always reported; mandatory only with collateral:
inline constexpr std::string_view kTcbStatus = "tcb_status";
}  // namespace quote_check

enum class CheckOutcome { kPassed, kFailed, kNotChecked };
const char* to_string(CheckOutcome outcome);

struct VerificationCheck {
  std::string name;  // one of quote_check::*
  CheckOutcome outcome = CheckOutcome::kNotChecked;
  bool mandatory = true;  // ok() requires every mandatory check to pass
  std::string detail;     // why it passed or failed, in plain words
};

struct QuoteVerification {
  std::vector<VerificationCheck> checks;
  // Intel's verdict on the platform when collateral was evaluated ("UpToDate", "OutOfDate",
  // "SWHardeningNeeded", ...), combined over the platform, TDX module and QE; "" otherwise.
  std::string tcb_status;
  std::vector<std::string> advisory_ids;  // Intel security advisories for that TCB level
  // The platform's FMSPC from the PCK certificate ("" when the chain did not parse): the key
  // under which Intel publishes this platform's TCB info (see docs/attestation.md).
  std::string pck_fmspc_hex;

  // True only when every mandatory check passed.
  bool ok() const;
  // The check with this name, or nullptr when it was not run.
  const VerificationCheck* find(std::string_view name) const;
  // Names of the checks that failed (mandatory or not), in order.
  std::vector<std::string> failed_checks() const;
  // One line per check: "PASS quote_signature: ...". For logs and command-line tools.
  std::string report() const;
};

// Intel collateral for one platform, as Intel's PCS (or a PCCS cache) serves it. Each JSON text
// is the response body exactly as received; its signature covers the raw bytes of the inner
// object, so it must not be re-formatted.
struct TdxCollateral {
  // GET https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=<FMSPC>
  // body: {"tcbInfo":{...},"signature":"<hex r||s>"}
  std::string tcb_info_json;
  // GET https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity
  // body: {"enclaveIdentity":{...},"signature":"<hex r||s>"}
  std::string qe_identity_json;
  // The TCB-Info-Issuer-Chain response header, URL-decoded: "Intel SGX TCB Signing" then the
  // Intel SGX Root CA. Only the pinned root is trusted; the chain's own root copy is not.
  std::string issuer_chain_pem;
};

struct VerifyOptions {
  // The moment at which validity periods (certificates, and collateral issueDate..nextUpdate)
  // are judged. Unset: now. Set it to check an archived quote as of the time it was produced,
  // or to keep a test independent of the clock.
  std::optional<std::chrono::system_clock::time_point> at_time;

  // Expiry policy, explicit on purpose. Signatures are always checked independently of time.
  // Validity periods are separate checks ("certificate_validity", "collateral_validity"): by
  // default they are advisory (a failure is reported, ok() is unaffected); set this to true to
  // make an expired or not-yet-valid certificate, or stale collateral, fail ok().
  bool enforce_validity_periods = false;

  // When set, REPORTDATA must equal it (mandatory check "report_data"); this is how a verifier
  // checks that the quote binds the key or nonce it expects.
  std::optional<ReportData> expected_report_data;

  // Intel collateral. Without it, "tcb_status" says "TCB status not checked: no collateral" and
  // is not mandatory. With it, the collateral checks run and are mandatory, and the combined
  // TCB status must be one of `accepted_tcb_statuses`.
  std::optional<TdxCollateral> collateral;
  std::vector<std::string> accepted_tcb_statuses = {"UpToDate"};
};

// Runs every check and returns them all; never throws for a bad quote (a failure is a finding),
// only for an internal error such as OpenSSL failing to allocate. `quote` should come from
// parse_tdx_quote: signatures are checked over quote.raw, the other checks read parsed fields.
QuoteVerification verify_tdx_quote(const TdxQuote& quote, const VerifyOptions& options = {});

// SHA-256 (lower-case hex) over the DER of the first certificate in a PEM text; used to check
// the pinned root and by tests. Throws alem::Error when the text holds no certificate.
std::string certificate_sha256_hex(std::string_view pem);

}  // namespace alem::confidential
