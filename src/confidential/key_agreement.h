// Pairwise channel keys between attested ranks, and the start-up of a confidential job's
// communication. Every rank's X25519 channel key is bound into its evidence (cluster_bundle.h);
// after the bundle is exchanged each rank verifies a peer's evidence and only then derives the
// key it shares with that peer:
//
//   pair key = HKDF-SHA256(ikm  = X25519(my secret, peer public),
//                          salt = "alem-pair-key-v1",
//                          info = job id || lower world rank || its public key
//                                        || higher world rank || its public key)
//
// Both sides compute the same key. The secure process groups (mpi/secure_process_group.h)
// derive per-group keys from it. establish_confidential_session() runs the whole sequence.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "confidential/bundle_verifier.h"
#include "confidential/cluster_bundle.h"
#include "mpi/secure_process_group.h"

namespace alem::confidential {

// X25519 + HKDF as above. Throws alem::Error when the shared secret is degenerate (a low-order
// peer key) or the two ranks are equal.
ChannelKey derive_pair_key(const X25519KeyPair& mine, int my_world_rank,
                           const PublicKey& peer_public_key, int peer_world_rank,
                           const std::string& job_id);

enum class InterconnectEncryption {
  kAuto,    // encrypt traffic between hosts when the confidential mode is not "off"
  kAlways,  // encrypt every message between ranks, even on one host (tests, benchmarks)
  kNever,   // never encrypt (attestation still runs when the mode is not "off")
};
InterconnectEncryption parse_interconnect_encryption(std::string_view text);  // auto|always|never
const char* to_string(InterconnectEncryption mode);

struct ConfidentialOptions {
  std::string mode = "off";  // "tdx", "sandbox" or "off" (attestation provider)
  InterconnectEncryption encryption = InterconnectEncryption::kAuto;
  std::string job_id;                  // e.g. the Slurm job id; part of every binding
  std::vector<uint8_t> model_digest;   // SHA-256 of the served model store (32 bytes)
  std::vector<uint8_t> config_digest;  // SHA-256 of the serving configuration (32 bytes)
  AttestationOptions attestation;
  // World rank 0 binds this sealing key (the network provider's, from its key file) when set;
  // otherwise it makes a fresh one (ConfidentialSession::sealing_key).
  std::optional<PublicKey> gateway_sealing_public_key;
  // Extra policy for peers. By default a TDX rank accepts peers whose MRTD and RTMR0-3 equal its
  // own (the same image), and a sandbox/off rank accepts software evidence.
  std::optional<BundlePolicy> peer_policy;
};

struct ConfidentialSession {
  pb::AttestationBundle bundle;  // the whole bundle, on every rank
  // World rank 0 only, when no gateway_sealing_public_key was given: the key requests are
  // sealed to.
  std::optional<X25519KeyPair> sealing_key;
  std::shared_ptr<SecureChannelKeys> keys;  // pairwise keys (empty when nothing is encrypted)
  int groups_encrypted = 0;                 // this rank's groups that now encrypt
  int peers_keyed = 0;                      // peers this rank agreed a key with
};

// The policy a rank applies to its peers given its own entry (see ConfidentialOptions).
BundlePolicy default_peer_policy(const pb::RankAttestation& mine,
                                 const std::vector<uint8_t>& model_digest);

// Collective over ctx: makes this rank's keys and evidence, exchanges the bundle, verifies it
// (every rank checks every entry; any failure throws alem::Error with the findings), derives
// pairwise keys with the peers that need them and wraps ctx's groups. Call it after
// make_mpi_context (and install_failure_handling), before the model uses the groups.
ConfidentialSession establish_confidential_session(ParallelContext& ctx,
                                                   const ConfidentialOptions& options);

}  // namespace alem::confidential
