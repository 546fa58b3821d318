// Attestation evidence for Register (see evidence.h): the default hook over
// confidential::make_attestation_provider, and the software-evidence check.
#include "network/evidence.h"

#include <sodium.h>

#include <cstring>
#include <memory>
#include <mutex>

#include "confidential/attestation.h"
#include "core/error.h"

namespace alem::network {

confidential::ReportData sealing_report_data(const X25519PublicKey& sealing_key) {
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  confidential::ReportData data{};
  crypto_hash_sha256(data.data(), sealing_key.data(), sealing_key.size());
  return data;
}

EvidenceHook make_evidence_hook(const std::string& mode) {
  std::shared_ptr<confidential::AttestationProvider> provider =
      confidential::make_attestation_provider(mode);
  auto lock = std::make_shared<std::mutex>();
  return [provider, lock](const X25519PublicKey& sealing_key) {
    std::lock_guard<std::mutex> guard(*lock);
    const confidential::Evidence e = provider->attest(sealing_report_data(sealing_key));
    RegisterEvidence out;
    out.format = e.format;
    if (e.format == confidential::kEvidenceFormatSoftwareEd25519) {
      out.bytes = e.mode;
      out.bytes.push_back('\0');
      out.bytes.append(reinterpret_cast<const char*>(e.public_key.data()), e.public_key.size());
      out.bytes.append(reinterpret_cast<const char*>(e.signature.data()), e.signature.size());
    } else {
      out.bytes.assign(e.quote.begin(), e.quote.end());
    }
    return out;
  };
}

bool verify_software_register_evidence(const v1::Register& message) {
  if (message.evidence_format() != confidential::kEvidenceFormatSoftwareEd25519) return false;
  if (message.sealing_public_key().size() != kX25519KeyBytes) return false;
  const std::string& bytes = message.evidence();
  const size_t nul = bytes.find('\0');
  if (nul == std::string::npos || bytes.size() != nul + 1 + 32 + 64) return false;
  confidential::Evidence e;
  e.mode = bytes.substr(0, nul);
  e.format = std::string(confidential::kEvidenceFormatSoftwareEd25519);
  e.hardware_backed = false;
  X25519PublicKey sealing{};
  std::memcpy(sealing.data(), message.sealing_public_key().data(), sealing.size());
  e.report_data = sealing_report_data(sealing);
  std::memcpy(e.public_key.data(), bytes.data() + nul + 1, 32);
  std::memcpy(e.signature.data(), bytes.data() + nul + 33, 64);
  return confidential::verify_software_evidence(e);
}

}  // namespace alem::network
