// Implements verify_tdx_quote. Each check records its own verdict, so one broken part of a quote
// never hides what is wrong (or right) with the others. The OpenSSL work lives in openssl_pki.cc
// and the Intel-collateral rules in tdx_collateral.cc.
#include "confidential/quote_verifier.h"

#include <algorithm>

#include "confidential/intel_root_ca.h"
#include "confidential/openssl_pki.h"
#include "confidential/tdx_collateral.h"
#include "core/error.h"

namespace alem::confidential {
namespace {

using pki::X509Ptr;

class CheckList {
 public:
  void add(std::string_view name, bool passed, std::string detail, bool mandatory = true) {
    checks.push_back({std::string(name), passed ? CheckOutcome::kPassed : CheckOutcome::kFailed,
                      mandatory, std::move(detail)});
  }
  void skip(std::string_view name, std::string detail, bool mandatory = true) {
    checks.push_back({std::string(name), CheckOutcome::kNotChecked, mandatory, std::move(detail)});
  }
  std::vector<VerificationCheck> checks;
};

void check_quote_signature(const TdxQuote& quote, CheckList& checks) {
  std::string reason;
  pki::EvpPkeyPtr key = pki::p256_key_from_xy(quote.attestation_key, reason);
  if (!key) {
    checks.add(quote_check::kQuoteSignature, false, "attestation " + reason);
    return;
  }
  reason = pki::verify_ecdsa_p256_raw(key.get(), quote.signed_bytes(), quote.quote_signature);
  const std::string range = "bytes [0, " + std::to_string(quote.signed_size) + ")";
  if (reason.empty()) {
    checks.add(quote_check::kQuoteSignature, true,
               "attestation key signed the header and TD report body (" + range + ")");
  } else {
    checks.add(quote_check::kQuoteSignature, false,
               reason + " over " + range + " with the attestation key");
  }
}

// A debug TD (TDATTRIBUTES bit 0) or a debug QE (SGX ATTRIBUTES bit 1) lets the host read its
// memory: such evidence says nothing about confidentiality, whatever its signatures.
void check_debug_disabled(const TdxQuote& quote, CheckList& checks) {
  const bool td_debug = quote.body.td_attributes[0] & 0x01;
  const bool qe_debug = quote.qe_report.attributes[0] & 0x02;
  if (td_debug) {
    checks.add(quote_check::kDebugDisabled, false,
               "TD runs in debug mode (TDATTRIBUTES.DEBUG set): the host can read its memory");
  } else if (qe_debug) {
    checks.add(quote_check::kDebugDisabled, false, "the Quoting Enclave is a debug enclave");
  } else {
    checks.add(quote_check::kDebugDisabled, true, "neither the TD nor the QE is in debug mode");
  }
}

// Parses the PEM chain into leaf, intermediate and root. Returns false when it is not that.
bool parse_pck_chain(const TdxQuote& quote, std::vector<X509Ptr>& chain, CheckList& checks) {
  std::string reason;
  chain = pki::read_pem_certificates(quote.pck_chain_pem, reason);
  if (reason.empty() && chain.size() != 3) {
    reason =
        "expected 3 certificates (PCK, PCK CA, Root CA), found " + std::to_string(chain.size());
  }
  if (reason.empty()) {
    const std::string leaf = pki::common_name(chain[0].get());
    const std::string ca = pki::common_name(chain[1].get());
    const std::string root = pki::common_name(chain[2].get());
    if (leaf != "Intel SGX PCK Certificate") {
      reason = "first certificate is \"" + leaf + "\", not \"Intel SGX PCK Certificate\"";
    } else if (ca != "Intel SGX PCK Platform CA" && ca != "Intel SGX PCK Processor CA") {
      reason = "second certificate is \"" + ca + "\", not an Intel SGX PCK Platform/Processor CA";
    } else if (root != "Intel SGX Root CA") {
      reason = "third certificate is \"" + root + "\", not \"Intel SGX Root CA\"";
    } else {
      checks.add(quote_check::kPckChainParse, true, leaf + " <- " + ca + " <- " + root);
      return true;
    }
  }
  checks.add(quote_check::kPckChainParse, false, "PCK certificate chain: " + reason);
  return false;
}

void check_root_pinned(X509* quote_root, CheckList& checks) {
  const std::string fingerprint = pki::der_sha256_hex(quote_root);
  if (fingerprint == kIntelSgxRootCaSha256) {
    checks.add(quote_check::kRootCaPinned, true,
               "root certificate is the pinned Intel SGX Root CA (sha256 " + fingerprint + ")");
  } else {
    checks.add(quote_check::kRootCaPinned, false,
               "root certificate sha256 " + fingerprint + " is not the pinned Intel SGX Root CA " +
                   std::string(kIntelSgxRootCaSha256));
  }
}

// Only the intermediate is offered as untrusted: the quote's own root copy is never a candidate
// anchor, so the path can only end at the pinned certificate.
void check_chain(const std::vector<X509Ptr>& chain, X509* root, CheckList& checks) {
  const std::string reason = pki::verify_chain_to_root(chain[0].get(), {chain[1].get()}, root);
  if (reason.empty()) {
    checks.add(quote_check::kPckChain, true,
               "PCK certificate <- PCK CA <- pinned Intel SGX Root CA: signatures and CA "
               "constraints verify (validity periods checked separately)");
  } else {
    checks.add(quote_check::kPckChain, false,
               "chain does not verify to the pinned Intel SGX Root CA: " + reason +
                   "; depth 0 is the PCK certificate, 1 the PCK CA");
  }
}

void check_certificate_validity(const std::vector<X509Ptr>& chain, time_t at, bool mandatory,
                                CheckList& checks) {
  static const char* kRoles[] = {"PCK certificate", "PCK CA", "root CA"};
  for (size_t i = 0; i < chain.size(); ++i) {
    const std::string problem = pki::validity_problem(chain[i].get(), at);
    if (!problem.empty()) {
      checks.add(quote_check::kCertificateValidity, false, std::string(kRoles[i]) + " " + problem,
                 mandatory);
      return;
    }
  }
  checks.add(quote_check::kCertificateValidity, true,
             "all certificates valid at " + pki::format_utc(at), mandatory);
}

void check_qe_report_signature(const TdxQuote& quote, X509* pck, CheckList& checks) {
  EVP_PKEY* key = X509_get0_pubkey(pck);
  if (!key || !EVP_PKEY_is_a(key, "EC")) {
    checks.add(quote_check::kQeReportSignature, false, "PCK certificate key is not an EC key");
    return;
  }
  const std::string reason =
      pki::verify_ecdsa_p256_raw(key, quote.qe_report_raw, quote.qe_report_signature);
  if (reason.empty()) {
    checks.add(quote_check::kQeReportSignature, true,
               "the PCK certificate's key signed the QE report");
  } else {
    checks.add(quote_check::kQeReportSignature, false,
               reason + " over the QE report with the PCK certificate's key");
  }
}

// The QE commits to the attestation key in its own (PCK-signed) report:
// QE REPORTDATA = SHA-256(attestation key x||y || QE auth data) || 32 zero bytes.
void check_qe_report_binding(const TdxQuote& quote, CheckList& checks) {
  std::vector<uint8_t> preimage(quote.attestation_key.begin(), quote.attestation_key.end());
  preimage.insert(preimage.end(), quote.qe_auth_data.begin(), quote.qe_auth_data.end());
  const std::array<uint8_t, 32> digest = pki::sha256(preimage);
  const auto& report_data = quote.qe_report.report_data;
  const bool hash_matches = std::equal(digest.begin(), digest.end(), report_data.begin());
  const bool tail_zero =
      std::all_of(report_data.begin() + 32, report_data.end(), [](uint8_t b) { return b == 0; });
  if (hash_matches && tail_zero) {
    checks.add(quote_check::kQeReportBinding, true,
               "QE report REPORTDATA = SHA-256(attestation key || QE auth data) || zeros");
  } else if (!hash_matches) {
    checks.add(quote_check::kQeReportBinding, false,
               "QE report REPORTDATA[0..32) " + to_lower_hex({report_data.data(), 32}) +
                   " != SHA-256(attestation key || QE auth data) " + to_lower_hex(digest));
  } else {
    checks.add(quote_check::kQeReportBinding, false, "QE report REPORTDATA[32..64) is not zero");
  }
}

}  // namespace

const char* to_string(CheckOutcome outcome) {
  switch (outcome) {
    case CheckOutcome::kPassed:
      return "PASS";
    case CheckOutcome::kFailed:
      return "FAIL";
    case CheckOutcome::kNotChecked:
      return "SKIP";
  }
  return "?";
}

bool QuoteVerification::ok() const {
  if (checks.empty()) return false;
  return std::all_of(checks.begin(), checks.end(), [](const VerificationCheck& c) {
    return !c.mandatory || c.outcome == CheckOutcome::kPassed;
  });
}

const VerificationCheck* QuoteVerification::find(std::string_view name) const {
  for (const VerificationCheck& c : checks) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::vector<std::string> QuoteVerification::failed_checks() const {
  std::vector<std::string> names;
  for (const VerificationCheck& c : checks) {
    if (c.outcome == CheckOutcome::kFailed) names.push_back(c.name);
  }
  return names;
}

std::string QuoteVerification::report() const {
  std::string out;
  for (const VerificationCheck& c : checks) {
    out += std::string(to_string(c.outcome)) + " " + c.name + (c.mandatory ? "" : " (advisory)") +
           ": " + c.detail + "\n";
  }
  if (!pck_fmspc_hex.empty()) out += "platform FMSPC: " + pck_fmspc_hex + "\n";
  out += ok() ? "verdict: genuine Intel TDX quote" +
                    std::string(tcb_status.empty() ? " (offline checks; TCB status not checked)"
                                                   : ", TCB status " + tcb_status) +
                    "\n"
              : "verdict: NOT verified\n";
  return out;
}

std::string certificate_sha256_hex(std::string_view pem) {
  std::string reason;
  std::vector<X509Ptr> certs = pki::read_pem_certificates(pem, reason);
  ALEM_CHECK(!certs.empty(), "no PEM certificate found");
  return pki::der_sha256_hex(certs[0].get());
}

QuoteVerification verify_tdx_quote(const TdxQuote& quote, const VerifyOptions& options) {
  QuoteVerification result;
  CheckList checks;
  const time_t at = std::chrono::system_clock::to_time_t(
      options.at_time.value_or(std::chrono::system_clock::now()));
  const bool enforce_time = options.enforce_validity_periods;

  const bool intel_qe = quote.header.qe_vendor_id == kIntelQeVendorId;
  checks.add(quote_check::kQeVendorId, intel_qe,
             intel_qe
                 ? "Intel Quoting Enclave"
                 : "QE vendor id " + to_lower_hex(quote.header.qe_vendor_id) + " is not Intel's");
  check_quote_signature(quote, checks);
  check_debug_disabled(quote, checks);

  std::vector<X509Ptr> chain;
  const bool chain_parsed = parse_pck_chain(quote, chain, checks);
  X509Ptr root = pki::pinned_intel_root();
  std::optional<PckPlatformTcb> platform;
  if (chain_parsed) {
    check_root_pinned(chain[2].get(), checks);
    check_chain(chain, root.get(), checks);
    check_certificate_validity(chain, at, enforce_time, checks);
    check_qe_report_signature(quote, chain[0].get(), checks);
    try {
      platform = read_pck_platform_tcb(chain[0].get());
      result.pck_fmspc_hex = to_lower_hex(platform->fmspc);
    } catch (const Error&) {
      // Reported by the collateral checks when collateral is given; irrelevant otherwise.
    }
  } else {
    const std::string why = "not checked: the PCK certificate chain did not parse";
    checks.skip(quote_check::kRootCaPinned, why);
    checks.skip(quote_check::kPckChain, why);
    checks.skip(quote_check::kCertificateValidity, why, enforce_time);
    checks.skip(quote_check::kQeReportSignature, why);
  }
  check_qe_report_binding(quote, checks);

  if (options.expected_report_data) {
    const bool same = quote.body.report_data == *options.expected_report_data;
    checks.add(quote_check::kReportData, same,
               same ? "REPORTDATA equals the expected value"
                    : "REPORTDATA " + to_lower_hex(quote.body.report_data) + " != expected " +
                          to_lower_hex(*options.expected_report_data));
  }

  if (!options.collateral) {
    checks.skip(quote_check::kTcbStatus, "TCB status not checked: no collateral",
                /*mandatory=*/false);
  } else if (!platform) {
    checks.skip(quote_check::kTcbStatus,
                chain_parsed ? "not checked: the PCK certificate's SGX extension is unreadable"
                             : "not checked: the PCK certificate chain did not parse");
  } else {
    CollateralVerdict verdict = evaluate_tdx_collateral(
        *options.collateral, CollateralContext{quote, *platform, root.get(), at, enforce_time,
                                               options.accepted_tcb_statuses});
    for (VerificationCheck& check : verdict.checks) checks.checks.push_back(std::move(check));
    result.tcb_status = verdict.tcb_status;
    result.advisory_ids = verdict.advisory_ids;
  }

  result.checks = std::move(checks.checks);
  return result;
}

}  // namespace alem::confidential
