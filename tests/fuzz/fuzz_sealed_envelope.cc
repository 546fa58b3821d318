// Fuzzes opening sealed envelopes (src/network/sealing open_envelope): every request from the
// network arrives as one, so the SealedEnvelope parsing and every size check must hold against
// any bytes. The first byte picks the mode: 0 the rest is an envelope, opened with the fixed
// provider key for the request purpose (it must fail unless untouched); 1 the rest is a
// plaintext that is sealed, opened (must round-trip), then opened with one byte flipped (must
// fail). ALEM_FUZZ_MAKE_SEEDS=<dir> writes valid envelopes as seeds.
#include <exception>
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "network/sealing.h"

namespace {

using namespace alem::network;

const X25519KeyPair& provider_key() {
  static const std::string secret = alem::fuzz::fixed_bytes(7);
  static const X25519KeyPair key =
      X25519KeyPair::from_secret(reinterpret_cast<const uint8_t*>(secret.data()), secret.size());
  return key;
}

const std::string& request_id() {
  static const std::string id = alem::fuzz::fixed_bytes(9);
  return id;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const std::string dir = alem::fuzz::seed_dir(); !dir.empty()) {
    const auto& pub = provider_key().public_key();
    alem::fuzz::write_seed(dir, "request-envelope",
                           std::string(1, '\0') + seal(pub, request_id(), kPurposeRequest,
                                                       "{\"prompt\":\"hi\",\"max_tokens\":4}"));
    alem::fuzz::write_seed(dir, "empty-envelope",
                           std::string(1, '\0') + seal(pub, request_id(), kPurposeRequest, ""));
    alem::fuzz::write_seed(dir, "roundtrip-text", std::string(1, '\1') + "data: {\"x\":1}\n\n");
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    if (data[0] == 0) {
      OpenResult r = open_envelope(provider_key(), request_id(), kPurposeRequest, rest);
      (void)open_error_name(r.error);
      if (!r.ok() && r.message.empty()) alem::fuzz::unexpected("sealed_envelope", "no message");
      return 0;
    }
    const uint32_t sequence = static_cast<uint32_t>(size);
    const std::string purpose = chunk_purpose(sequence);
    std::string sealed = seal(provider_key().public_key(), request_id(), purpose, rest);
    OpenResult r = open_envelope(provider_key(), request_id(), purpose, sealed);
    if (!r.ok() || r.payload.view() != rest)
      alem::fuzz::unexpected("sealed_envelope", "round trip");
    sealed[static_cast<size_t>(data[0]) % sealed.size()] ^= 0x01;
    if (open_envelope(provider_key(), request_id(), purpose, sealed).ok()) {
      alem::fuzz::unexpected("sealed_envelope", "a modified envelope opened");
    }
    if (open_envelope(provider_key(), request_id(), chunk_purpose(sequence + 1),
                      seal(provider_key().public_key(), request_id(), purpose, rest))
            .ok()) {
      alem::fuzz::unexpected("sealed_envelope", "opened under another purpose");
    }
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("sealed_envelope", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("sealed_envelope", e.what());
  }
  return 0;
}
