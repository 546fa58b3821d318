// Verifying a cluster attestation bundle (cluster_bundle.h): the function the network side (and
// `alem verify-bundle`) calls before it trusts a cluster, and that every rank calls on its peers
// before agreeing channel keys with them. It checks, and reports each failure with a reason:
//
//   layout      every world rank of tp x pp x dp present exactly once, with its coordinates
//   keys        32-byte X25519 channel keys everywhere; a sealing key on rank 0 only
//   evidence    TDX: the quote parses and verify_tdx_quote's mandatory checks pass;
//               software (sandbox/off): refused unless accept_software_evidence, and then the
//               Ed25519 signature must verify over the binding
//   report_data each rank's REPORTDATA equals the binding recomputed from the bundle
//   allowlist   MRTD (and each pinned RTMR, and the COCOON image hash when listed) allowed
//   digests     the model digest is the one served (and the config digest / job id when given)
//   sealing key the gateway's bound sealing key is the one the network was given
#pragma once

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "confidential/cluster_bundle.h"
#include "confidential/image_hash.h"
#include "confidential/quote_verifier.h"

namespace alem::confidential {

// Stable names of the bundle checks (BundleFinding::check).
namespace bundle_check {
inline constexpr std::string_view kFormat = "format";
inline constexpr std::string_view kLayout = "layout";
inline constexpr std::string_view kRankMissing = "rank_missing";
inline constexpr std::string_view kRankDuplicate = "rank_duplicate";
inline constexpr std::string_view kCoords = "coords";
inline constexpr std::string_view kChannelKey = "channel_key";
inline constexpr std::string_view kSealingKey = "sealing_key";
inline constexpr std::string_view kEvidenceFormat = "evidence_format";
inline constexpr std::string_view kSoftwareRefused = "software_evidence_refused";
inline constexpr std::string_view kSoftwareSignature = "software_signature";
inline constexpr std::string_view kQuoteParse = "quote_parse";
inline constexpr std::string_view kQuote = "quote";  // a mandatory verify_tdx_quote check failed
inline constexpr std::string_view kReportData = "report_data";
inline constexpr std::string_view kMrtd = "mrtd";
inline constexpr std::string_view kRtmr = "rtmr";
inline constexpr std::string_view kImageHash = "image_hash";
inline constexpr std::string_view kModelDigest = "model_digest";
inline constexpr std::string_view kConfigDigest = "config_digest";
inline constexpr std::string_view kJobId = "job_id";
}  // namespace bundle_check

struct BundlePolicy {
  // TDX evidence: MRTD must be one of these (an empty list refuses every quote, by design).
  std::vector<Measurement> allowed_mrtd;
  // RTMR i must be one of allowed_rtmr[i]; an empty list leaves that register unpinned.
  std::array<std::vector<Measurement>, 4> allowed_rtmr;
  // When not empty, the quote's COCOON image hash must be one of these.
  std::vector<ImageHash> allowed_image_hashes;
  // The served model (SHA-256 of the model store). Mandatory: unset fails "model_digest".
  std::optional<std::vector<uint8_t>> expected_model_digest;
  std::optional<std::vector<uint8_t>> expected_config_digest;
  std::optional<std::string> expected_job_id;
  // The sealing key the network will seal requests to (Register.sealing_public_key). When set,
  // rank 0's bound sealing key must equal it.
  std::optional<PublicKey> expected_sealing_key;
  // Software (not hardware-backed) evidence is refused unless this is true.
  bool accept_software_evidence = false;
  // Passed to verify_tdx_quote (time, collateral, accepted TCB statuses).
  VerifyOptions quote_options;
};

struct BundleFinding {
  int world_rank = -1;  // -1: about the bundle as a whole
  std::string check;    // one of bundle_check::*
  std::string detail;   // the reason, in plain words
};

struct BundleVerification {
  std::vector<BundleFinding> failures;
  // Rank 0's bound sealing key, when present and 32 bytes long.
  std::optional<PublicKey> sealing_key;
  int ranks_checked = 0;

  bool ok() const { return failures.empty(); }
  // Failures naming `check` (and, when world_rank >= 0, that rank).
  bool has(std::string_view check, int world_rank = -1) const;
  // "OK: 4 ranks verified" or one "FAIL rank 2 report_data: ..." line per failure.
  std::string report() const;
};

// Runs every check over the whole bundle; never throws for a bad bundle (a failure is a
// finding), only for internal errors.
BundleVerification verify_bundle(const pb::AttestationBundle& bundle, const BundlePolicy& policy);

// The per-rank checks alone (evidence, binding, allowlist, keys), against the bundle's job id
// and digests: what a rank runs on a peer before it derives a channel key with it.
std::vector<BundleFinding> verify_rank_entry(const pb::AttestationBundle& bundle,
                                             const pb::RankAttestation& entry,
                                             const BundlePolicy& policy);

// For the network side (Register with evidence_format "alem-cluster-bundle-v1"): parses the
// evidence bytes, requires rank 0's bound sealing key to be `sealing_key` (the Register's) and
// the bundle's model digest to be `model_digest` (the announced model's), on top of `policy`.
// Returns "" when the bundle is acceptable, else every failure in one text.
std::string check_register_bundle(std::string_view evidence, const PublicKey& sealing_key,
                                  const std::vector<uint8_t>& model_digest, BundlePolicy policy);

// Throws alem::Error listing every failure when `result` is not ok.
void require_ok(const BundleVerification& result, const std::string& what);

}  // namespace alem::confidential
