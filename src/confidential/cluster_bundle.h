// The cluster attestation bundle: how one multi-node job proves itself as ONE provider. Every
// rank makes an X25519 key for the pairwise inter-node channel keys (and the gateway, world rank
// 0, also the X25519 key requests are sealed to), asks its attestation provider for evidence
// whose REPORTDATA binds
//
//   SHA-512( "alem-rank-binding-v1" || job id || world rank || channel key || sealing key
//            || model digest || config digest )          (length-prefixed, see rank_binding)
//
// and all ranks exchange these (gather_bundle), so rank 0 holds the whole bundle for the network
// and every rank can check its peers before it agrees keys with them (key_agreement.h). The
// checks themselves are in bundle_verifier.h.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "confidential/attestation.h"
#include "confidential/attestation_bundle.pb.h"
#include "mpi/parallel_context.h"

namespace alem::confidential {

inline constexpr std::string_view kClusterBundleFormat = "alem-cluster-bundle-v1";

using PublicKey = std::array<uint8_t, 32>;
using Digest = std::array<uint8_t, 32>;

// An X25519 key pair made with libsodium. The secret is wiped when the pair is destroyed; it is
// never serialized. Move-only.
class X25519KeyPair {
 public:
  static X25519KeyPair generate();
  X25519KeyPair(X25519KeyPair&& other) noexcept;
  X25519KeyPair& operator=(X25519KeyPair&& other) noexcept;
  X25519KeyPair(const X25519KeyPair&) = delete;
  X25519KeyPair& operator=(const X25519KeyPair&) = delete;
  ~X25519KeyPair();

  const PublicKey& public_key() const { return public_; }
  const std::array<uint8_t, 32>& secret_key() const { return secret_; }

 private:
  X25519KeyPair() = default;
  PublicKey public_{};
  std::array<uint8_t, 32> secret_{};
};

// What one rank binds; the same values the verifier recomputes the binding from.
struct RankBindingInput {
  std::string job_id;
  int world_rank = 0;
  PublicKey channel_public_key{};
  std::vector<uint8_t> sealing_public_key;  // 32 bytes on the gateway, empty elsewhere
  std::vector<uint8_t> model_digest;        // SHA-256 of the model store (32 bytes)
  std::vector<uint8_t> config_digest;       // SHA-256 of the serving configuration (32 bytes)
};

// The canonical encoding (label, then each field as a 4-byte little-endian length and its bytes;
// the rank as 4 bytes little-endian) and its SHA-512: the 64 bytes of REPORTDATA.
std::vector<uint8_t> rank_binding_encoding(const RankBindingInput& input);
ReportData rank_binding(const RankBindingInput& input);

// Hex helpers shared by the bundle code and its command ("" <-> empty).
std::string to_hex(const uint8_t* data, size_t size);
std::vector<uint8_t> from_hex(std::string_view hex);  // throws alem::Error on a bad digit

// Makes this rank's entry: binds `input` and asks `provider` for evidence over it.
pb::RankAttestation make_rank_attestation(AttestationProvider& provider,
                                          const RankBindingInput& input,
                                          const ParallelCoords& coords, const std::string& host);

// The Evidence (attestation.h) carried by an entry, for the software and quote verifiers.
Evidence evidence_of(const pb::RankAttestation& entry);

// Collective over ctx.world: every rank contributes its entry, every rank gets the whole bundle
// (ranks in world-rank order). The exchange is in the clear: everything in it is public.
// `job_id`, the digests and the layout are taken from the caller and must be equal everywhere;
// the verifier checks each rank's binding against them.
pb::AttestationBundle gather_bundle(ParallelContext& ctx, const pb::RankAttestation& mine,
                                    const std::string& job_id,
                                    const std::vector<uint8_t>& model_digest,
                                    const std::vector<uint8_t>& config_digest);

// Serialization for the network's Register evidence and for files (`alem verify-bundle`).
std::vector<uint8_t> serialize_bundle(const pb::AttestationBundle& bundle);
pb::AttestationBundle parse_bundle(const uint8_t* data, size_t size);  // throws alem::Error

}  // namespace alem::confidential
