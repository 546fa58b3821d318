// Fuzzes the provider protocol's Protobuf messages (src/network/provider.proto) the way each
// side handles them. The first byte picks the mode:
//   0  a ProviderMessage as the network (netsim) receives it: a Register goes through the same
//      checks as QueueServer::on_register (version, key sizes, identity signature, software
//      evidence or cluster bundle);
//   1  a NetworkMessage as the provider receives it: a Lease goes through LeaseHandler's steps
//      up to the engine (size limit, open the envelope, parse the RequestPayload, its key and
//      endpoint, then serve::parse_request on the body);
//   2  a RequestPayload that the harness seals to the provider key inside a Lease, so the
//      steps after opening are reached with fuzzed content.
// ALEM_FUZZ_MAKE_SEEDS=<dir> writes a signed Register, a Lease and a RequestPayload.
#include <exception>
#include <string>

#include "confidential/attestation.h"
#include "confidential/bundle_verifier.h"
#include "confidential/cluster_bundle.h"
#include "core/error.h"
#include "fuzz_util.h"
#include "network/evidence.h"
#include "network/protocol.h"
#include "network/provider.pb.h"
#include "network/provider_keys.h"
#include "network/sealing.h"
#include "serve/openai_protocol.h"

namespace {

using namespace alem::network;

const X25519KeyPair& provider_key() {
  static const std::string secret = alem::fuzz::fixed_bytes(7);
  static const X25519KeyPair key =
      X25519KeyPair::from_secret(reinterpret_cast<const uint8_t*>(secret.data()), secret.size());
  return key;
}

// QueueServer::on_register's checks, in its order (netsim_server.cc).
void check_register(const v1::Register& reg) {
  if (reg.protocol_version() != kProtocolVersion) return;
  if (reg.identity_public_key().size() != 32 || reg.sealing_public_key().size() != 32) return;
  if (!verify_register(reg)) return;
  if (reg.evidence_format() == alem::confidential::kEvidenceFormatSoftwareEd25519) {
    (void)verify_software_register_evidence(reg);
  } else if (reg.evidence_format() == alem::confidential::kClusterBundleFormat &&
             !reg.models().empty()) {
    alem::confidential::PublicKey sealing{};
    std::copy(reg.sealing_public_key().begin(), reg.sealing_public_key().end(), sealing.begin());
    const std::string& digest = reg.models(0).model_digest();
    alem::confidential::BundlePolicy policy;
    policy.accept_software_evidence = true;
    (void)alem::confidential::check_register_bundle(
        reg.evidence(), sealing, std::vector<uint8_t>(digest.begin(), digest.end()), policy);
  }
}

// LeaseHandler::compute's steps before the engine (lease_handler.cc).
void handle_lease(const v1::Lease& lease) {
  if (lease.request_id().size() != kRequestIdBytes) return;
  if (lease.sealed_request().size() > kMaxSealedRequestBytes) return;
  OpenResult opened =
      open_envelope(provider_key(), lease.request_id(), kPurposeRequest, lease.sealed_request());
  if (!opened.ok()) return;
  v1::RequestPayload payload;
  const bool parsed =
      payload.ParseFromArray(opened.payload.view().data(), static_cast<int>(opened.payload.size()));
  opened.payload.wipe();
  if (!parsed || payload.client_public_key().size() != kX25519KeyBytes) return;
  alem::serve::Endpoint endpoint;
  if (payload.endpoint() == "/v1/completions") {
    endpoint = alem::serve::Endpoint::kCompletions;
  } else if (payload.endpoint() == "/v1/chat/completions") {
    endpoint = alem::serve::Endpoint::kChatCompletions;
  } else {
    return;
  }
  try {
    alem::serve::ApiRequest request =
        alem::serve::parse_request(payload.body(), endpoint, "SmolLM2-135M-Instruct");
    request.wipe();
  } catch (const alem::serve::ApiException&) {
  }
  wipe_string(*payload.mutable_body());
}

v1::Lease lease_for(const std::string& payload_bytes) {
  v1::Lease lease;
  lease.set_request_id(alem::fuzz::fixed_bytes(9));
  lease.set_sealed_request(
      seal(provider_key().public_key(), lease.request_id(), kPurposeRequest, payload_bytes));
  lease.set_deadline_unix_ms(1768435200000);
  lease.set_attempt(1);
  lease.set_model("SmolLM2-135M-Instruct");
  return lease;
}

std::string with_mode(char mode, const std::string& bytes) {
  return std::string(1, mode) + bytes;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const std::string dir = alem::fuzz::seed_dir(); !dir.empty()) {
    const ProviderKeys keys = ProviderKeys::generate();
    v1::ProviderMessage pm;
    v1::Register* reg = pm.mutable_register_();
    reg->set_protocol_version(kProtocolVersion);
    const auto& sealing = keys.sealing().public_key();
    reg->set_sealing_public_key(std::string(sealing.begin(), sealing.end()));
    const RegisterEvidence ev = make_evidence_hook("sandbox")(sealing);
    reg->set_evidence_format(ev.format);
    reg->set_evidence(ev.bytes);
    v1::ModelInfo* model = reg->add_models();
    model->set_name("SmolLM2-135M-Instruct");
    model->set_model_digest(std::string(32, '\xAA'));
    model->set_max_context(8192);
    reg->set_credits(4);
    reg->set_replicas(1);
    reg->set_provider_name("fuzz");
    sign_register(keys, *reg);
    alem::fuzz::write_seed(dir, "register-software", with_mode(0, pm.SerializeAsString()));
    v1::ProviderMessage heartbeat;
    heartbeat.mutable_heartbeat()->set_open_leases(2);
    alem::fuzz::write_seed(dir, "heartbeat", with_mode(0, heartbeat.SerializeAsString()));

    v1::RequestPayload payload;
    payload.set_client_public_key(alem::fuzz::fixed_bytes(3));
    payload.set_endpoint("/v1/chat/completions");
    payload.set_body(
        "{\"model\":\"SmolLM2-135M-Instruct\",\"messages\":[{\"role\":\"user\",\"content\":"
        "\"Hi\"}],\"max_tokens\":8,\"stream\":true}");
    v1::NetworkMessage nm;
    *nm.mutable_lease() = lease_for(payload.SerializeAsString());
    alem::fuzz::write_seed(dir, "lease", with_mode(1, nm.SerializeAsString()));
    alem::fuzz::write_seed(dir, "request-payload", with_mode(2, payload.SerializeAsString()));
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  const uint8_t* rest = data + 1;
  const int n = static_cast<int>(size - 1);
  try {
    if (mode == 0) {
      v1::ProviderMessage msg;
      if (!msg.ParseFromArray(rest, n)) return 0;
      if (msg.has_register_()) check_register(msg.register_());
      if (msg.has_error()) (void)v1::ErrorCode_Name(msg.error().code());
    } else if (mode == 1) {
      v1::NetworkMessage msg;
      if (!msg.ParseFromArray(rest, n)) return 0;
      if (msg.has_lease()) handle_lease(msg.lease());
    } else {
      handle_lease(lease_for(std::string(reinterpret_cast<const char*>(rest), size - 1)));
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("provider_messages", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("provider_messages", e.what());
  }
  return 0;
}
