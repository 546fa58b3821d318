// The attestation evidence a provider puts in its Register message. It binds the provider's
// X25519 sealing key: REPORTDATA = SHA-256(sealing public key) followed by 32 zero bytes, so a
// client that checks the evidence knows whom it seals requests to.
//
// This file is the hook through which evidence is made. Today the default is the software
// evidence of confidential::make_attestation_provider(mode) ("off" or "sandbox": an Ed25519
// signature by a per-process key, hardware_backed = false) or a raw TDX quote ("tdx"). A
// cluster-wide bundle (every rank's quote, format "alem-cluster-bundle-v1") can replace it by
// passing another EvidenceHook to the provider client, without touching the protocol code.
//
// Encoding of format "ed25519-software-v1" in Register.evidence:
//   mode (ASCII) 0x00 || signer public key (32) || signature (64)
// Format "tdx-quote": the quote bytes as the kernel returned them.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "confidential/tdx_quote.h"
#include "network/provider.pb.h"
#include "network/sealing.h"

namespace alem::network {

struct RegisterEvidence {
  std::string format;  // Register.evidence_format
  std::string bytes;   // Register.evidence
};

// Makes the evidence for a sealing key. Called on every (re)connection.
using EvidenceHook = std::function<RegisterEvidence(const X25519PublicKey& sealing_key)>;

// REPORTDATA for a sealing key: SHA-256(key) || 32 zero bytes.
confidential::ReportData sealing_report_data(const X25519PublicKey& sealing_key);

// The default hook for an attestation mode ("off", "sandbox" or "tdx"); throws alem::Error for
// another mode. The provider is made once and reused.
EvidenceHook make_evidence_hook(const std::string& mode);

// For the network side and tests: true when `message` carries software evidence whose signature
// verifies and whose REPORTDATA binds its sealing_public_key. (Trust in the signer's key, and
// TDX quote verification, are the verifier's policy, outside this check.)
bool verify_software_register_evidence(const v1::Register& message);

}  // namespace alem::network
