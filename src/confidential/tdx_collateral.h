// Evaluation of Intel collateral for a TDX quote, offline: given the TCB info and QE identity
// JSON that Intel's PCS publishes (fetched by someone, at some time), decide the platform's TCB
// status the way Intel's quote verification library does. Split from quote_verifier.cc because
// it is a separate concern (Intel's signed policy documents, not the quote's own signatures).
//
// Steps: the collateral's signing chain ends at the pinned Intel root; the signatures over the
// raw "tcbInfo" and "enclaveIdentity" objects verify; the QE report matches the QE identity; the
// TDX module (MRSIGNERSEAM, SEAMATTRIBUTES) matches its identity; the PCK certificate's FMSPC,
// PCE id, CPU SVN components and PCESVN and the quote's TEE_TCB_SVN select the first matching
// TCB level; the statuses of platform, TDX module and QE are combined (Intel's convergence).
// Not done: CRLs (revocation of PCK or signing certificates) and the TDX 1.5 "relaunch advised"
// refinement.
#pragma once

#include <openssl/x509.h>

#include <array>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"

namespace alem::confidential {

// The TCB values Intel wrote into a PCK certificate (SGX extension 1.2.840.113741.1.13.1).
struct PckPlatformTcb {
  std::array<uint8_t, 6> fmspc{};
  std::array<uint8_t, 2> pce_id{};
  std::array<uint8_t, 16> cpu_svn_components{};  // SGX TCB components 1..16
  uint16_t pce_svn = 0;
};

// Reads the SGX extension of a PCK certificate. Throws alem::Error when it is missing or
// malformed (every length is checked against the extension's bytes).
PckPlatformTcb read_pck_platform_tcb(X509* pck_certificate);

struct CollateralVerdict {
  // collateral_signatures, collateral_validity, qe_identity, tdx_module, tcb_status.
  std::vector<VerificationCheck> checks;
  std::string tcb_status;  // combined status, "" when it could not be determined
  std::vector<std::string> advisory_ids;
};

struct CollateralContext {
  const TdxQuote& quote;
  const PckPlatformTcb& platform;
  X509* pinned_root;
  time_t at;
  bool enforce_validity_periods;
  const std::vector<std::string>& accepted_tcb_statuses;
};

// Runs the collateral checks. Never throws for bad collateral (each problem is a failed check),
// only for internal errors.
CollateralVerdict evaluate_tdx_collateral(const TdxCollateral& collateral,
                                          const CollateralContext& context);

// The exact text of the value of top-level member `key` in a JSON object, as the signer saw it.
// Throws alem::Error when the text is not an object or has no such member.
std::string_view raw_json_member(std::string_view json, std::string_view key);

}  // namespace alem::confidential
