// `alem verify-bundle FILE`: checks a serialized cluster attestation bundle (what the gateway
// sends as its Register evidence, format "alem-cluster-bundle-v1") the way the network side
// would, against an allowlist of measurements and the served model's digest. Prints one line per
// failure (or "OK: N ranks verified") and exits non-zero when the bundle fails.
#include <cstdio>
#include <fstream>
#include <iterator>

#include "cli/commands.h"
#include "confidential/bundle_verifier.h"
#include "core/error.h"

namespace alem::cli {

namespace {

namespace cc = confidential;

cc::Measurement measurement_from_hex(const std::string& text, const std::string& what) {
  const std::vector<uint8_t> bytes = cc::from_hex(text);
  ALEM_CHECK(bytes.size() == 48, what + " must be 48 bytes (96 hex digits), got " +
                                     std::to_string(bytes.size()) + " bytes");
  cc::Measurement m{};
  std::copy(bytes.begin(), bytes.end(), m.begin());
  return m;
}

std::vector<uint8_t> digest_from_hex(const std::string& text, const std::string& what) {
  const std::vector<uint8_t> bytes = cc::from_hex(text);
  ALEM_CHECK(bytes.size() == 32, what + " must be 32 bytes (64 hex digits), got " +
                                     std::to_string(bytes.size()) + " bytes");
  return bytes;
}

struct VerifyBundleArgs {
  std::string file;
  std::vector<std::string> allow_mrtd, allow_rtmr, allow_image_hash;
  std::string model_digest, config_digest, job_id, sealing_key;
  bool accept_software = false;
};

}  // namespace

void add_verify_bundle_command(CLI::App& app) {
  auto a = std::make_shared<VerifyBundleArgs>();
  CLI::App* cmd = app.add_subcommand(
      "verify-bundle", "Verify a cluster attestation bundle (alem-cluster-bundle-v1) file");
  cmd->add_option("file", a->file, "Serialized AttestationBundle")->required();
  cmd->add_option("--allow-mrtd", a->allow_mrtd, "Allowed MRTD (96 hex digits); repeatable");
  cmd->add_option("--allow-rtmr", a->allow_rtmr,
                  "Allowed RTMR as N:HEX (N = 0..3); repeatable; unlisted registers are not "
                  "pinned");
  cmd->add_option("--allow-image-hash", a->allow_image_hash,
                  "Allowed COCOON image hash (64 hex digits); repeatable");
  cmd->add_option("--model-digest", a->model_digest, "SHA-256 of the served model store (hex)")
      ->required();
  cmd->add_option("--config-digest", a->config_digest, "Expected config digest (hex)");
  cmd->add_option("--job-id", a->job_id, "Expected job id");
  cmd->add_option("--sealing-key", a->sealing_key,
                  "The X25519 key requests will be sealed to (hex); must be rank 0's bound key");
  cmd->add_flag("--accept-software-evidence", a->accept_software,
                "Accept sandbox/off (not hardware-backed) evidence: development only");
  cmd->callback([a] {
    std::ifstream in(a->file, std::ios::binary);
    ALEM_CHECK(in, "cannot open bundle file '" + a->file + "'");
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const cc::pb::AttestationBundle bundle =
        cc::parse_bundle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    cc::BundlePolicy policy;
    for (const std::string& h : a->allow_mrtd)
      policy.allowed_mrtd.push_back(measurement_from_hex(h, "--allow-mrtd"));
    for (const std::string& spec : a->allow_rtmr) {
      ALEM_CHECK(spec.size() > 2 && spec[1] == ':' && spec[0] >= '0' && spec[0] <= '3',
                 "--allow-rtmr takes N:HEX with N in 0..3, got '" + spec + "'");
      policy.allowed_rtmr[static_cast<size_t>(spec[0] - '0')].push_back(
          measurement_from_hex(spec.substr(2), "--allow-rtmr"));
    }
    for (const std::string& h : a->allow_image_hash) {
      const std::vector<uint8_t> d = digest_from_hex(h, "--allow-image-hash");
      cc::ImageHash image{};
      std::copy(d.begin(), d.end(), image.begin());
      policy.allowed_image_hashes.push_back(image);
    }
    policy.expected_model_digest = digest_from_hex(a->model_digest, "--model-digest");
    if (!a->config_digest.empty())
      policy.expected_config_digest = digest_from_hex(a->config_digest, "--config-digest");
    if (!a->job_id.empty()) policy.expected_job_id = a->job_id;
    if (!a->sealing_key.empty()) {
      const std::vector<uint8_t> k = digest_from_hex(a->sealing_key, "--sealing-key");
      cc::PublicKey key{};
      std::copy(k.begin(), k.end(), key.begin());
      policy.expected_sealing_key = key;
    }
    policy.accept_software_evidence = a->accept_software;
    const cc::BundleVerification result = cc::verify_bundle(bundle, policy);
    std::printf("bundle: job '%s', layout tp=%d pp=%d dp=%d, %d entries\n", bundle.job_id().c_str(),
                bundle.tp_size(), bundle.pp_size(), bundle.dp_size(), bundle.ranks_size());
    std::fputs(result.report().c_str(), stdout);
    std::fflush(stdout);
    ALEM_CHECK(result.ok(),
               "the bundle failed " + std::to_string(result.failures.size()) + " check(s)");
  });
}

}  // namespace alem::cli
