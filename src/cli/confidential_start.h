// `--confidential MODE` and `--encrypt-interconnect auto|always|never` for the commands that run
// the model (`alem serve`, `alem generate`): after the MPI context is made and the model store is
// open, every rank attests, the cluster bundle is exchanged and verified, pairwise keys are
// agreed and the process groups that cross hosts start encrypting (src/confidential/
// key_agreement.h). Defaults (off, auto) change nothing. The gateway can hand the bundle to the
// network provider as its Register evidence ("alem-cluster-bundle-v1").
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "confidential/key_agreement.h"
#include "model/model_store.h"
#include "mpi/parallel_context.h"
#include "network/evidence.h"

namespace alem::cli {

struct ConfidentialFlags {
  std::string mode = "off";      // off | sandbox | tdx
  std::string encrypt = "auto";  // auto | always | never
  std::string bundle_out;        // world rank 0 writes the serialized bundle here ("" = no)
};

void add_confidential_flags(CLI::App& cmd, ConfidentialFlags& flags);

// Collective over ctx. Returns nothing when the flags ask for nothing (mode off and encryption
// not "always"); otherwise the verified session (the groups of ctx are wrapped as needed).
// `gateway_sealing_key`: on world rank 0, the network provider's sealing key to bind (null: a
// fresh key is made). Throws alem::Error when attestation or verification fails.
std::optional<confidential::ConfidentialSession> start_confidential(
    ParallelContext& ctx, const ConfidentialFlags& flags, const ModelStoreReader& store,
    const confidential::PublicKey* gateway_sealing_key);

// The Register evidence hook that sends the serialized bundle (evidence_format
// "alem-cluster-bundle-v1"). It refuses a sealing key other than the one rank 0 bound.
network::EvidenceHook bundle_evidence_hook(const confidential::ConfidentialSession& session);

}  // namespace alem::cli
