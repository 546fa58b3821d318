// X25519 + HKDF pairwise keys, and the confidential start-up sequence: attest, exchange the
// bundle, verify every entry, agree keys with the peers that need them, wrap the groups.
#include "confidential/key_agreement.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/error.h"
#include "core/log.h"

namespace alem::confidential {

namespace {

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

PublicKey key_of(const std::string& bytes, int rank, const char* what) {
  ALEM_CHECK(bytes.size() == 32, std::string(what) + " of world rank " + std::to_string(rank) +
                                     " is " + std::to_string(bytes.size()) + " bytes, expected 32");
  PublicKey key{};
  std::memcpy(key.data(), bytes.data(), key.size());
  return key;
}

}  // namespace

ChannelKey derive_pair_key(const X25519KeyPair& mine, int my_world_rank,
                           const PublicKey& peer_public_key, int peer_world_rank,
                           const std::string& job_id) {
  ALEM_CHECK(my_world_rank != peer_world_rank,
             "derive_pair_key: a rank does not agree a key with itself");
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialize");
  std::array<uint8_t, 32> shared{};
  ALEM_CHECK(
      crypto_scalarmult(shared.data(), mine.secret_key().data(), peer_public_key.data()) == 0,
      "X25519 with world rank " + std::to_string(peer_world_rank) +
          " gave a degenerate shared secret (a low-order public key): refused");
  static constexpr std::string_view kSalt = "alem-pair-key-v1";
  std::vector<uint8_t> info(job_id.begin(), job_id.end());
  info.push_back(0);
  const bool mine_first = my_world_rank < peer_world_rank;
  const PublicKey& low_key = mine_first ? mine.public_key() : peer_public_key;
  const PublicKey& high_key = mine_first ? peer_public_key : mine.public_key();
  put_u32(info, static_cast<uint32_t>(std::min(my_world_rank, peer_world_rank)));
  info.insert(info.end(), low_key.begin(), low_key.end());
  put_u32(info, static_cast<uint32_t>(std::max(my_world_rank, peer_world_rank)));
  info.insert(info.end(), high_key.begin(), high_key.end());
  ChannelKey key{};
  hkdf_sha256(shared, {reinterpret_cast<const uint8_t*>(kSalt.data()), kSalt.size()}, info, key);
  secure_wipe(shared.data(), shared.size());
  return key;
}

InterconnectEncryption parse_interconnect_encryption(std::string_view text) {
  if (text == "auto") return InterconnectEncryption::kAuto;
  if (text == "always") return InterconnectEncryption::kAlways;
  if (text == "never") return InterconnectEncryption::kNever;
  ALEM_FAIL("--encrypt-interconnect must be auto, always or never, not '" + std::string(text) +
            "'");
}

const char* to_string(InterconnectEncryption mode) {
  switch (mode) {
    case InterconnectEncryption::kAuto:
      return "auto";
    case InterconnectEncryption::kAlways:
      return "always";
    case InterconnectEncryption::kNever:
      return "never";
  }
  return "unknown";
}

BundlePolicy default_peer_policy(const pb::RankAttestation& mine,
                                 const std::vector<uint8_t>& model_digest) {
  BundlePolicy policy;
  policy.expected_model_digest = model_digest;
  if (mine.evidence_format() == kEvidenceFormatTdxQuote) {
    // Peers must run the image this rank runs.
    const auto* data = reinterpret_cast<const uint8_t*>(mine.tdx_quote().data());
    const TdxQuote quote = parse_tdx_quote({data, mine.tdx_quote().size()});
    policy.allowed_mrtd = {quote.body.mrtd};
    for (size_t i = 0; i < 4; ++i) policy.allowed_rtmr[i] = {quote.body.rtmr[i]};
  } else {
    policy.accept_software_evidence = true;
  }
  return policy;
}

ConfidentialSession establish_confidential_session(ParallelContext& ctx,
                                                   const ConfidentialOptions& options) {
  ALEM_CHECK(options.model_digest.size() == 32,
             "confidential start-up needs the model's 32-byte SHA-256 digest, got " +
                 std::to_string(options.model_digest.size()) + " bytes");
  ConfidentialSession session;
  auto provider = make_attestation_provider(options.mode, options.attestation);
  X25519KeyPair channel = X25519KeyPair::generate();
  RankBindingInput input;
  input.job_id = options.job_id;
  input.world_rank = ctx.world_rank;
  input.channel_public_key = channel.public_key();
  input.model_digest = options.model_digest;
  input.config_digest = options.config_digest;
  if (ctx.world_rank == 0) {
    if (!options.gateway_sealing_public_key) session.sealing_key = X25519KeyPair::generate();
    const PublicKey& sealing = options.gateway_sealing_public_key
                                   ? *options.gateway_sealing_public_key
                                   : session.sealing_key->public_key();
    input.sealing_public_key.assign(sealing.begin(), sealing.end());
  }
  const pb::RankAttestation mine =
      make_rank_attestation(*provider, input, ctx.coords, process_identity().host);
  session.bundle =
      gather_bundle(ctx, mine, options.job_id, options.model_digest, options.config_digest);

  // Every rank checks the whole bundle (the layout, each entry's evidence and binding), so a
  // bad rank stops the job everywhere before any key is agreed or any request is accepted.
  BundlePolicy policy =
      options.peer_policy ? *options.peer_policy : default_peer_policy(mine, options.model_digest);
  if (!policy.expected_model_digest) policy.expected_model_digest = options.model_digest;
  policy.expected_job_id = options.job_id;
  const BundleVerification verdict = verify_bundle(session.bundle, policy);
  require_ok(verdict, "the cluster attestation bundle (checked on world rank " +
                          std::to_string(ctx.world_rank) + ")");
  if (ctx.world_rank == 0)
    log_info("cluster attestation bundle verified",
             {{"ranks", std::to_string(verdict.ranks_checked)},
              {"mode", options.mode},
              {"encrypt_interconnect", to_string(options.encryption)}});

  const bool encrypt =
      options.encryption == InterconnectEncryption::kAlways ||
      (options.encryption == InterconnectEncryption::kAuto && options.mode != "off");
  if (!encrypt) return session;
  SecureGroupOptions group_options;
  group_options.treat_every_rank_as_own_node =
      options.encryption == InterconnectEncryption::kAlways;
  session.keys = std::make_shared<SecureChannelKeys>(ctx.world_rank);
  for (int peer : peers_needing_keys(ctx, group_options)) {
    const pb::RankAttestation& entry = session.bundle.ranks(peer);
    ALEM_CHECK(entry.world_rank() == peer, "bundle entry " + std::to_string(peer) +
                                               " is for world rank " +
                                               std::to_string(entry.world_rank()));
    // Verified above as part of the bundle; checked again here, next to the derivation, so no
    // key is ever agreed with an entry that did not pass.
    const std::vector<BundleFinding> findings = verify_rank_entry(session.bundle, entry, policy);
    ALEM_CHECK(findings.empty(), "refusing a channel key with world rank " + std::to_string(peer) +
                                     ": " + findings.front().check + ": " +
                                     findings.front().detail);
    ChannelKey key = derive_pair_key(channel, ctx.world_rank,
                                     key_of(entry.channel_public_key(), peer, "channel key"), peer,
                                     options.job_id);
    session.keys->set_pair_key(peer, key);
    secure_wipe(key.data(), key.size());
    ++session.peers_keyed;
  }
  session.groups_encrypted = secure_parallel_context(ctx, session.keys, group_options);
  return session;
}

}  // namespace alem::confidential
