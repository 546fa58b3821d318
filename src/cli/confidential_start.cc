// The confidential start-up of `alem serve` and `alem generate`: flags, the job id and config
// digest that every rank binds, and the bundle as the network's Register evidence.
#include "cli/confidential_start.h"

#include <sodium.h>

#include <cstdlib>
#include <fstream>

#include "confidential/cluster_bundle.h"
#include "core/error.h"
#include "core/log.h"

namespace alem::cli {

namespace cc = confidential;

void add_confidential_flags(CLI::App& cmd, ConfidentialFlags& flags) {
  cmd.add_option("--confidential", flags.mode,
                 "Attest every rank and exchange the cluster bundle: off, sandbox or tdx "
                 "(docs/attestation.md)")
      ->check(CLI::IsMember({"off", "sandbox", "tdx"}))
      ->capture_default_str();
  cmd.add_option("--encrypt-interconnect", flags.encrypt,
                 "Encrypt process-group traffic between hosts: auto (when --confidential is not "
                 "off), always (every rank pair, even on one host), never (docs/secure-channel.md)")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->capture_default_str();
  cmd.add_option("--attestation-bundle-out", flags.bundle_out,
                 "World rank 0 writes the verified cluster attestation bundle (public data) to "
                 "this file, for `alem verify-bundle` or an out-of-band verifier");
}

std::optional<cc::ConfidentialSession> start_confidential(
    ParallelContext& ctx, const ConfidentialFlags& flags, const ModelStoreReader& store,
    const cc::PublicKey* gateway_sealing_key) {
  const cc::InterconnectEncryption encryption = cc::parse_interconnect_encryption(flags.encrypt);
  if (flags.mode == "off" && encryption != cc::InterconnectEncryption::kAlways) return std::nullopt;
  cc::ConfidentialOptions options;
  options.mode = flags.mode;
  options.encryption = encryption;
  const char* job = std::getenv("SLURM_JOB_ID");
  options.job_id = job && *job ? std::string("slurm-") + job : "local";
  options.model_digest = cc::from_hex(store.model_digest());
  // The configuration every rank binds: the layout, the modes, and the model's config.
  const std::string config = "layout=" + ctx.layout.describe() + ";mode=" + flags.mode +
                             ";encrypt=" + flags.encrypt + ";model=" + store.config().to_json();
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialize");
  options.config_digest.resize(crypto_hash_sha256_BYTES);
  crypto_hash_sha256(options.config_digest.data(), reinterpret_cast<const uint8_t*>(config.data()),
                     config.size());
  if (gateway_sealing_key && ctx.world_rank == 0)
    options.gateway_sealing_public_key = *gateway_sealing_key;
  cc::ConfidentialSession session = cc::establish_confidential_session(ctx, options);
  if (!flags.bundle_out.empty() && ctx.world_rank == 0) {
    const std::vector<uint8_t> bytes = cc::serialize_bundle(session.bundle);
    std::ofstream out(flags.bundle_out, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    ALEM_CHECK(out.good(), "cannot write the attestation bundle to '" + flags.bundle_out + "'");
  }
  log_info("confidential start-up done",
           {{"mode", flags.mode},
            {"encrypt_interconnect", flags.encrypt},
            {"groups_encrypted", std::to_string(session.groups_encrypted)},
            {"peers_keyed", std::to_string(session.peers_keyed)}});
  return session;
}

network::EvidenceHook bundle_evidence_hook(const cc::ConfidentialSession& session) {
  const std::vector<uint8_t> bytes = cc::serialize_bundle(session.bundle);
  const std::string bound = session.bundle.ranks_size() > 0
                                ? session.bundle.ranks(0).sealing_public_key()
                                : std::string();
  return [serialized = std::string(bytes.begin(), bytes.end()),
          bound](const network::X25519PublicKey& sealing_key) {
    ALEM_CHECK(bound == std::string(sealing_key.begin(), sealing_key.end()),
               "the cluster bundle binds another sealing key than the one being registered; "
               "start `alem serve` with the network key file so the gateway binds that key");
    return network::RegisterEvidence{std::string(cc::kClusterBundleFormat), serialized};
  };
}

}  // namespace alem::cli
