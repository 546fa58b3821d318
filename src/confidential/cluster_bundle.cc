// Building the cluster attestation bundle: key pairs, the canonical REPORTDATA binding, each
// rank's entry with its evidence, and the all-gather that gives every rank the whole bundle.
#include "confidential/cluster_bundle.h"

#include <sodium.h>

#include <algorithm>
#include <cstring>

#include "core/aligned_buffer.h"
#include "core/error.h"

namespace alem::confidential {

namespace {

void ensure_sodium() {
  static const int status = sodium_init();
  ALEM_CHECK(status >= 0, "libsodium failed to initialize");
}

void put_u32(std::vector<uint8_t>& out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

void put_field(std::vector<uint8_t>& out, const uint8_t* data, size_t size) {
  ALEM_CHECK(size <= 0xffffffffu, "binding field too long");
  put_u32(out, static_cast<uint32_t>(size));
  out.insert(out.end(), data, data + size);
}

std::vector<uint8_t> bytes_of(const std::string& s) {
  return {s.begin(), s.end()};
}

}  // namespace

X25519KeyPair X25519KeyPair::generate() {
  ensure_sodium();
  X25519KeyPair pair;
  randombytes_buf(pair.secret_.data(), pair.secret_.size());
  ALEM_CHECK(crypto_scalarmult_base(pair.public_.data(), pair.secret_.data()) == 0,
             "X25519 public key derivation failed");
  return pair;
}

X25519KeyPair::X25519KeyPair(X25519KeyPair&& other) noexcept
    : public_(other.public_), secret_(other.secret_) {
  secure_wipe(other.secret_.data(), other.secret_.size());
}

X25519KeyPair& X25519KeyPair::operator=(X25519KeyPair&& other) noexcept {
  if (this != &other) {
    public_ = other.public_;
    secret_ = other.secret_;
    secure_wipe(other.secret_.data(), other.secret_.size());
  }
  return *this;
}

X25519KeyPair::~X25519KeyPair() {
  secure_wipe(secret_.data(), secret_.size());
}

std::vector<uint8_t> rank_binding_encoding(const RankBindingInput& input) {
  ALEM_CHECK(input.world_rank >= 0, "rank binding: negative world rank");
  static constexpr std::string_view kLabel = "alem-rank-binding-v1";
  std::vector<uint8_t> out;
  put_field(out, reinterpret_cast<const uint8_t*>(kLabel.data()), kLabel.size());
  put_field(out, reinterpret_cast<const uint8_t*>(input.job_id.data()), input.job_id.size());
  put_u32(out, static_cast<uint32_t>(input.world_rank));
  put_field(out, input.channel_public_key.data(), input.channel_public_key.size());
  put_field(out, input.sealing_public_key.data(), input.sealing_public_key.size());
  put_field(out, input.model_digest.data(), input.model_digest.size());
  put_field(out, input.config_digest.data(), input.config_digest.size());
  return out;
}

ReportData rank_binding(const RankBindingInput& input) {
  ensure_sodium();
  const std::vector<uint8_t> encoding = rank_binding_encoding(input);
  ReportData out{};
  static_assert(crypto_hash_sha512_BYTES == sizeof(ReportData));
  crypto_hash_sha512(out.data(), encoding.data(), encoding.size());
  return out;
}

std::string to_hex(const uint8_t* data, size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(size * 2);
  for (size_t i = 0; i < size; ++i) {
    out.push_back(digits[data[i] >> 4]);
    out.push_back(digits[data[i] & 15]);
  }
  return out;
}

std::vector<uint8_t> from_hex(std::string_view hex) {
  ALEM_CHECK(hex.size() % 2 == 0,
             "hex text has an odd number of digits (" + std::to_string(hex.size()) + ")");
  auto digit = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    ALEM_FAIL(std::string("not a hex digit: '") + c + "'");
  };
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>(digit(hex[2 * i]) * 16 + digit(hex[2 * i + 1]));
  return out;
}

pb::RankAttestation make_rank_attestation(AttestationProvider& provider,
                                          const RankBindingInput& input,
                                          const ParallelCoords& coords, const std::string& host) {
  const ReportData binding = rank_binding(input);
  const Evidence evidence = provider.attest(binding);
  ALEM_CHECK(evidence.report_data == binding,
             "the attestation provider bound other REPORTDATA than this rank asked for");
  pb::RankAttestation entry;
  entry.set_world_rank(input.world_rank);
  entry.set_tp(coords.tp);
  entry.set_pp(coords.pp);
  entry.set_dp(coords.dp);
  entry.set_host(host);
  entry.set_channel_public_key(input.channel_public_key.data(), input.channel_public_key.size());
  entry.set_sealing_public_key(input.sealing_public_key.data(), input.sealing_public_key.size());
  entry.set_evidence_mode(evidence.mode);
  entry.set_evidence_format(evidence.format);
  entry.set_report_data(evidence.report_data.data(), evidence.report_data.size());
  if (evidence.format == kEvidenceFormatTdxQuote) {
    entry.set_tdx_quote(evidence.quote.data(), evidence.quote.size());
  } else {
    entry.set_software_public_key(evidence.public_key.data(), evidence.public_key.size());
    entry.set_software_signature(evidence.signature.data(), evidence.signature.size());
  }
  return entry;
}

Evidence evidence_of(const pb::RankAttestation& entry) {
  Evidence evidence;
  evidence.mode = entry.evidence_mode();
  evidence.format = entry.evidence_format();
  evidence.hardware_backed = entry.evidence_format() == kEvidenceFormatTdxQuote;
  if (entry.report_data().size() == evidence.report_data.size())
    std::memcpy(evidence.report_data.data(), entry.report_data().data(),
                evidence.report_data.size());
  evidence.quote.assign(entry.tdx_quote().begin(), entry.tdx_quote().end());
  if (entry.software_public_key().size() == evidence.public_key.size())
    std::memcpy(evidence.public_key.data(), entry.software_public_key().data(),
                evidence.public_key.size());
  if (entry.software_signature().size() == evidence.signature.size())
    std::memcpy(evidence.signature.data(), entry.software_signature().data(),
                evidence.signature.size());
  return evidence;
}

pb::AttestationBundle gather_bundle(ParallelContext& ctx, const pb::RankAttestation& mine,
                                    const std::string& job_id,
                                    const std::vector<uint8_t>& model_digest,
                                    const std::vector<uint8_t>& config_digest) {
  ProcessGroup& world = *ctx.world;
  std::string bytes;
  ALEM_CHECK(mine.SerializeToString(&bytes), "cannot serialize this rank's attestation");
  // Sizes first, then every entry padded to the largest (all_gather needs equal parts).
  uint64_t my_size = bytes.size();
  std::vector<uint64_t> sizes(static_cast<size_t>(world.size()));
  world.all_gather(&my_size, sizeof(my_size), sizes.data());
  const uint64_t largest = *std::max_element(sizes.begin(), sizes.end());
  ALEM_CHECK(largest < (uint64_t{1} << 26),
             "a rank's attestation is implausibly large (" + std::to_string(largest) + " bytes)");
  std::vector<uint8_t> padded(largest, 0);
  std::memcpy(padded.data(), bytes.data(), bytes.size());
  std::vector<uint8_t> all(largest * sizes.size());
  world.all_gather(padded.data(), largest, all.data());

  pb::AttestationBundle bundle;
  bundle.set_format(std::string(kClusterBundleFormat));
  bundle.set_job_id(job_id);
  bundle.set_tp_size(ctx.layout.tp_size());
  bundle.set_pp_size(ctx.layout.pp_size());
  bundle.set_dp_size(ctx.layout.dp_size());
  bundle.set_model_digest(model_digest.data(), model_digest.size());
  bundle.set_config_digest(config_digest.data(), config_digest.size());
  for (size_t r = 0; r < sizes.size(); ++r) {
    ALEM_CHECK(
        bundle.add_ranks()->ParseFromArray(all.data() + r * largest, static_cast<int>(sizes[r])),
        "world rank " + std::to_string(r) + " sent an attestation that does not parse");
  }
  return bundle;
}

std::vector<uint8_t> serialize_bundle(const pb::AttestationBundle& bundle) {
  std::string bytes;
  ALEM_CHECK(bundle.SerializeToString(&bytes), "cannot serialize the attestation bundle");
  return bytes_of(bytes);
}

pb::AttestationBundle parse_bundle(const uint8_t* data, size_t size) {
  pb::AttestationBundle bundle;
  ALEM_CHECK(
      size <= static_cast<size_t>(INT32_MAX) && bundle.ParseFromArray(data, static_cast<int>(size)),
      "not an attestation bundle: " + std::to_string(size) +
          " bytes that do not parse as alem.confidential.pb.AttestationBundle");
  ALEM_CHECK(bundle.format() == kClusterBundleFormat, "attestation bundle format is '" +
                                                          bundle.format() + "', expected '" +
                                                          std::string(kClusterBundleFormat) + "'");
  return bundle;
}

}  // namespace alem::confidential
