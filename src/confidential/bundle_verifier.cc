// The bundle checks listed in bundle_verifier.h. Each failure becomes a finding with the rank,
// the check's stable name and a reason that says what was expected and what was found.
#include "confidential/bundle_verifier.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "core/error.h"

namespace alem::confidential {

namespace {

std::string hex_of(const std::string& bytes) {
  return to_hex(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

template <size_t N>
std::string hex_of(const std::array<uint8_t, N>& bytes) {
  return to_hex(bytes.data(), bytes.size());
}

std::vector<uint8_t> vec_of(const std::string& bytes) {
  return {bytes.begin(), bytes.end()};
}

bool in_list(const Measurement& m, const std::vector<Measurement>& list) {
  return std::find(list.begin(), list.end(), m) != list.end();
}

// The binding input the bundle implies for `entry`.
RankBindingInput binding_input(const pb::AttestationBundle& bundle,
                               const pb::RankAttestation& entry) {
  RankBindingInput input;
  input.job_id = bundle.job_id();
  input.world_rank = entry.world_rank();
  if (entry.channel_public_key().size() == input.channel_public_key.size())
    std::memcpy(input.channel_public_key.data(), entry.channel_public_key().data(),
                input.channel_public_key.size());
  input.sealing_public_key = vec_of(entry.sealing_public_key());
  input.model_digest = vec_of(bundle.model_digest());
  input.config_digest = vec_of(bundle.config_digest());
  return input;
}

void check_measurements(const TdReportBody& body, const TdxQuote& quote, const BundlePolicy& policy,
                        int rank, std::vector<BundleFinding>& out) {
  if (!in_list(body.mrtd, policy.allowed_mrtd))
    out.push_back({rank, std::string(bundle_check::kMrtd),
                   "MRTD " + hex_of(body.mrtd) +
                       (policy.allowed_mrtd.empty() ? " refused: the MRTD allowlist is empty"
                                                    : " is not in the allowlist")});
  for (size_t i = 0; i < 4; ++i) {
    if (policy.allowed_rtmr[i].empty() || in_list(body.rtmr[i], policy.allowed_rtmr[i])) continue;
    out.push_back(
        {rank, std::string(bundle_check::kRtmr),
         "RTMR" + std::to_string(i) + " " + hex_of(body.rtmr[i]) + " is not in the allowlist"});
  }
  if (!policy.allowed_image_hashes.empty()) {
    const ImageHash image = cocoon_image_hash(quote);
    if (std::find(policy.allowed_image_hashes.begin(), policy.allowed_image_hashes.end(), image) ==
        policy.allowed_image_hashes.end())
      out.push_back({rank, std::string(bundle_check::kImageHash),
                     "COCOON image hash " + hex_of(image) + " is not in the allowlist"});
  }
}

void check_tdx_evidence(const pb::RankAttestation& entry, const ReportData& binding,
                        const BundlePolicy& policy, std::vector<BundleFinding>& out) {
  const int rank = entry.world_rank();
  if (entry.evidence_mode() != "tdx")
    out.push_back({rank, std::string(bundle_check::kEvidenceFormat),
                   "a TDX quote must come with mode 'tdx', not '" + entry.evidence_mode() + "'"});
  TdxQuote quote;
  try {
    const auto* data = reinterpret_cast<const uint8_t*>(entry.tdx_quote().data());
    quote = parse_tdx_quote({data, entry.tdx_quote().size()});
  } catch (const Error& e) {
    out.push_back({rank, std::string(bundle_check::kQuoteParse), e.message()});
    return;
  }
  VerifyOptions options = policy.quote_options;
  options.expected_report_data.reset();  // compared below, with a reason naming the binding
  const QuoteVerification verification = verify_tdx_quote(quote, options);
  for (const VerificationCheck& check : verification.checks) {
    if (!check.mandatory || check.outcome != CheckOutcome::kFailed) continue;
    out.push_back({rank, std::string(bundle_check::kQuote), check.name + ": " + check.detail});
  }
  if (quote.body.report_data != binding)
    out.push_back({rank, std::string(bundle_check::kReportData),
                   "the quote's REPORTDATA " + hex_of(quote.body.report_data) +
                       " does not equal the binding of (job id, rank, keys, model and config "
                       "digests) " +
                       hex_of(binding)});
  check_measurements(quote.body, quote, policy, rank, out);
}

void check_software_evidence(const pb::RankAttestation& entry, const ReportData& binding,
                             const BundlePolicy& policy, std::vector<BundleFinding>& out) {
  const int rank = entry.world_rank();
  if (entry.evidence_mode() != "sandbox" && entry.evidence_mode() != "off") {
    out.push_back({rank, std::string(bundle_check::kEvidenceFormat),
                   "software evidence must come with mode 'sandbox' or 'off', not '" +
                       entry.evidence_mode() + "'"});
    return;
  }
  if (!policy.accept_software_evidence) {
    out.push_back({rank, std::string(bundle_check::kSoftwareRefused),
                   "software evidence (mode '" + entry.evidence_mode() +
                       "') is not hardware-backed and proves nothing about the machine; refused "
                       "(accept it only for development: accept_software_evidence)"});
    return;
  }
  if (entry.software_public_key().size() != 32 || entry.software_signature().size() != 64) {
    out.push_back({rank, std::string(bundle_check::kSoftwareSignature),
                   "software evidence needs a 32-byte key and a 64-byte signature, got " +
                       std::to_string(entry.software_public_key().size()) + " and " +
                       std::to_string(entry.software_signature().size()) + " bytes"});
    return;
  }
  Evidence evidence = evidence_of(entry);
  evidence.report_data = binding;  // the signature must cover the recomputed binding
  if (!verify_software_evidence(evidence))
    out.push_back({rank, std::string(bundle_check::kSoftwareSignature),
                   "the Ed25519 signature does not verify over the binding of (job id, rank, "
                   "keys, model and config digests) " +
                       hex_of(binding)});
}

}  // namespace

bool BundleVerification::has(std::string_view check, int world_rank) const {
  return std::any_of(failures.begin(), failures.end(), [&](const BundleFinding& f) {
    return f.check == check && (world_rank < 0 || f.world_rank == world_rank);
  });
}

std::string BundleVerification::report() const {
  if (ok()) return "OK: " + std::to_string(ranks_checked) + " ranks verified\n";
  std::string text;
  for (const BundleFinding& f : failures) {
    text += "FAIL ";
    text += f.world_rank < 0 ? std::string("bundle") : "rank " + std::to_string(f.world_rank);
    text += " " + f.check + ": " + f.detail + "\n";
  }
  return text;
}

std::vector<BundleFinding> verify_rank_entry(const pb::AttestationBundle& bundle,
                                             const pb::RankAttestation& entry,
                                             const BundlePolicy& policy) {
  std::vector<BundleFinding> out;
  const int rank = entry.world_rank();
  if (entry.channel_public_key().size() != 32)
    out.push_back({rank, std::string(bundle_check::kChannelKey),
                   "channel key is " + std::to_string(entry.channel_public_key().size()) +
                       " bytes, expected 32 (X25519)"});
  const size_t sealing = entry.sealing_public_key().size();
  if (rank == 0 && sealing != 32)
    out.push_back({rank, std::string(bundle_check::kSealingKey),
                   "the gateway (world rank 0) must bind a 32-byte sealing key, got " +
                       std::to_string(sealing) + " bytes"});
  if (rank != 0 && sealing != 0)
    out.push_back({rank, std::string(bundle_check::kSealingKey),
                   "only the gateway (world rank 0) may bind a sealing key"});

  const ReportData binding = rank_binding(binding_input(bundle, entry));
  if (entry.report_data() != std::string(binding.begin(), binding.end()))
    out.push_back({rank, std::string(bundle_check::kReportData),
                   "the entry's REPORTDATA " + hex_of(entry.report_data()) +
                       " does not equal the binding of (job id, rank, keys, model and config "
                       "digests) " +
                       hex_of(binding)});
  if (entry.evidence_format() == kEvidenceFormatTdxQuote) {
    check_tdx_evidence(entry, binding, policy, out);
  } else if (entry.evidence_format() == kEvidenceFormatSoftwareEd25519) {
    check_software_evidence(entry, binding, policy, out);
  } else {
    out.push_back({rank, std::string(bundle_check::kEvidenceFormat),
                   "unknown evidence format '" + entry.evidence_format() + "'"});
  }
  return out;
}

BundleVerification verify_bundle(const pb::AttestationBundle& bundle, const BundlePolicy& policy) {
  BundleVerification result;
  auto fail = [&](int rank, std::string_view check, std::string detail) {
    result.failures.push_back({rank, std::string(check), std::move(detail)});
  };
  if (bundle.format() != kClusterBundleFormat)
    fail(-1, bundle_check::kFormat,
         "format is '" + bundle.format() + "', expected '" + std::string(kClusterBundleFormat) +
             "'");
  if (!policy.expected_model_digest)
    fail(-1, bundle_check::kModelDigest, "no served model digest was given to compare with");
  else if (vec_of(bundle.model_digest()) != *policy.expected_model_digest)
    fail(-1, bundle_check::kModelDigest,
         "the bundle binds model digest " + hex_of(bundle.model_digest()) +
             " but the served model is " +
             to_hex(policy.expected_model_digest->data(), policy.expected_model_digest->size()));
  if (policy.expected_config_digest &&
      vec_of(bundle.config_digest()) != *policy.expected_config_digest)
    fail(-1, bundle_check::kConfigDigest,
         "the bundle binds config digest " + hex_of(bundle.config_digest()) + ", expected " +
             to_hex(policy.expected_config_digest->data(), policy.expected_config_digest->size()));
  if (policy.expected_job_id && bundle.job_id() != *policy.expected_job_id)
    fail(-1, bundle_check::kJobId,
         "the bundle is for job '" + bundle.job_id() + "', expected '" + *policy.expected_job_id +
             "'");

  const int64_t tp = bundle.tp_size(), pp = bundle.pp_size(), dp = bundle.dp_size();
  if (tp < 1 || pp < 1 || dp < 1 || tp * pp * dp > (1 << 20)) {
    fail(-1, bundle_check::kLayout,
         "layout tp=" + std::to_string(tp) + " pp=" + std::to_string(pp) +
             " dp=" + std::to_string(dp) + " is not a valid layout");
    return result;
  }
  const ParallelLayout layout(static_cast<int>(tp), static_cast<int>(pp), static_cast<int>(dp));
  const int world = layout.world_size();
  std::map<int, int> seen;
  for (const pb::RankAttestation& entry : bundle.ranks()) {
    const int rank = entry.world_rank();
    if (rank < 0 || rank >= world) {
      fail(rank, bundle_check::kLayout,
           "world rank " + std::to_string(rank) + " is outside the layout " + layout.describe() +
               " of " + std::to_string(world) + " ranks");
      continue;
    }
    if (++seen[rank] == 2)
      fail(rank, bundle_check::kRankDuplicate,
           "world rank " + std::to_string(rank) + " appears more than once");
    const ParallelCoords c = layout.coords(rank);
    if (entry.tp() != c.tp || entry.pp() != c.pp || entry.dp() != c.dp)
      fail(rank, bundle_check::kCoords,
           "coordinates (tp " + std::to_string(entry.tp()) + ", pp " + std::to_string(entry.pp()) +
               ", dp " + std::to_string(entry.dp()) + ") differ from the layout's (tp " +
               std::to_string(c.tp) + ", pp " + std::to_string(c.pp) + ", dp " +
               std::to_string(c.dp) + ")");
    for (BundleFinding& f : verify_rank_entry(bundle, entry, policy))
      result.failures.push_back(std::move(f));
    ++result.ranks_checked;
    if (rank == 0 && entry.sealing_public_key().size() == 32) {
      PublicKey key{};
      std::memcpy(key.data(), entry.sealing_public_key().data(), key.size());
      result.sealing_key = key;
    }
  }
  for (int r = 0; r < world; ++r)
    if (!seen.count(r))
      fail(r, bundle_check::kRankMissing,
           "world rank " + std::to_string(r) + " of the layout " + layout.describe() +
               " has no entry");
  if (policy.expected_sealing_key) {
    if (!result.sealing_key)
      fail(0, bundle_check::kSealingKey, "the bundle binds no sealing key on world rank 0");
    else if (*result.sealing_key != *policy.expected_sealing_key)
      fail(0, bundle_check::kSealingKey,
           "the gateway bound sealing key " + hex_of(*result.sealing_key) +
               " but requests would be sealed to " + hex_of(*policy.expected_sealing_key));
  }
  return result;
}

std::string check_register_bundle(std::string_view evidence, const PublicKey& sealing_key,
                                  const std::vector<uint8_t>& model_digest, BundlePolicy policy) {
  pb::AttestationBundle bundle;
  try {
    bundle = parse_bundle(reinterpret_cast<const uint8_t*>(evidence.data()), evidence.size());
  } catch (const Error& e) {
    return e.message();
  }
  policy.expected_sealing_key = sealing_key;
  policy.expected_model_digest = model_digest;
  const BundleVerification result = verify_bundle(bundle, policy);
  if (result.ok()) return "";
  std::string text = "the cluster attestation bundle failed " +
                     std::to_string(result.failures.size()) + " check(s): ";
  for (size_t i = 0; i < result.failures.size(); ++i) {
    const BundleFinding& f = result.failures[i];
    if (i) text += "; ";
    text += (f.world_rank < 0 ? std::string("bundle") : "rank " + std::to_string(f.world_rank)) +
            " " + f.check + ": " + f.detail;
  }
  return text;
}

void require_ok(const BundleVerification& result, const std::string& what) {
  ALEM_CHECK(result.ok(), what + " failed verification:\n" + result.report());
}

}  // namespace alem::confidential
