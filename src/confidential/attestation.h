// Where evidence comes from. A rank (or the gateway, for the network) asks its provider to
// attest 64 bytes of REPORTDATA, usually the hash of a public key it wants peers to trust, and
// gets back Evidence that binds those bytes:
//
//   "tdx"     a real Intel TDX quote, obtained through the Linux configfs-tsm report interface
//             (/sys/kernel/config/tsm/report, Linux >= 6.7 in a TDX guest). hardware_backed=true.
//   "sandbox" an Ed25519 signature by a per-process software key: lets the whole confidential
//             code path (key agreement, sealing, channel setup) run on machines without TDX.
//   "off"     the same software evidence, for jobs that run with confidential computing off.
//
// Software evidence is marked hardware_backed=false and says, in its statement, that it proves
// nothing about the machine: a verifier must never accept it where TDX is required.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "confidential/tdx_quote.h"

namespace alem::confidential {

inline constexpr std::string_view kEvidenceFormatTdxQuote = "tdx-quote";
inline constexpr std::string_view kEvidenceFormatSoftwareEd25519 = "ed25519-software-v1";

struct Evidence {
  std::string mode;              // "tdx", "sandbox" or "off"
  std::string format;            // kEvidenceFormat*
  bool hardware_backed = false;  // true only for a TDX quote
  ReportData report_data{};      // what the caller asked to bind
  std::string statement;         // what this evidence does and does not prove, in plain words

  // format "tdx-quote": the quote as the kernel returned it, and the configfs-tsm "provider"
  // attribute ("tdx_guest"), empty when the kernel does not expose it.
  std::vector<uint8_t> quote;
  std::string tsm_provider;

  // format "ed25519-software-v1": the signer's public key and the signature over
  // software_evidence_message(mode, report_data).
  std::array<uint8_t, 32> public_key{};
  std::array<uint8_t, 64> signature{};
};

class AttestationProvider {
 public:
  virtual ~AttestationProvider() = default;
  // "tdx", "sandbox" or "off".
  virtual std::string mode() const = 0;
  // Produces evidence binding `report_data`. Throws alem::Error with the reason when it cannot
  // (no TDX device, a racing writer, a quote that does not carry our REPORTDATA, ...).
  // Safe to call from several threads: each call uses its own configfs entry.
  virtual Evidence attest(const ReportData& report_data) = 0;
};

struct AttestationOptions {
  // The configfs-tsm report folder used by the "tdx" provider.
  std::string tsm_report_root = "/sys/kernel/config/tsm/report";
  // Called with the path of each fresh configfs entry right after mkdir, before any attribute
  // is read or written. The kernel populates an entry's attributes by itself; a test that points
  // tsm_report_root at a plain folder uses this to stand in for the kernel. Leave it empty in
  // production.
  std::function<void(const std::string& entry_path)> on_tsm_entry_created;
};

// Makes the provider for `mode` ("tdx", "sandbox" or "off"); throws alem::Error for any other
// mode. Creating a "tdx" provider does not touch configfs; attest() does.
std::unique_ptr<AttestationProvider> make_attestation_provider(
    std::string_view mode, const AttestationOptions& options = {});

// The exact bytes a software provider signs: a domain-separation label, the mode and the
// report data ("alem-software-attestation-v1" NUL mode NUL report_data).
std::vector<uint8_t> software_evidence_message(std::string_view mode,
                                               const ReportData& report_data);

// True when `evidence` is software evidence whose signature verifies under its own public key.
// This only shows that the holder of that key signed the report data; whether that key is
// trusted is the caller's decision (in sandbox mode, typically pinned out of band).
bool verify_software_evidence(const Evidence& evidence);

}  // namespace alem::confidential
