// Fuzzes cluster attestation bundles (src/confidential/cluster_bundle parse_bundle and
// bundle_verifier): the network and every peer rank parse and verify a bundle someone else
// sent, so every field (layout, keys, evidence, TDX quotes inside) must be checked, never
// trusted. The input is the serialized bundle. ALEM_FUZZ_MAKE_SEEDS=<dir> writes a valid
// software-evidence bundle of 2 ranks and one whose rank carries the real TDX quote.
#include <chrono>
#include <exception>
#include <string>

#include "confidential/attestation.h"
#include "confidential/bundle_verifier.h"
#include "confidential/cluster_bundle.h"
#include "core/error.h"
#include "fuzz_util.h"
#include "mpi/parallel_layout.h"

namespace {

using namespace alem::confidential;

std::vector<uint8_t> digest(uint8_t v) {
  return std::vector<uint8_t>(32, v);
}

BundlePolicy policy() {
  BundlePolicy p;
  p.accept_software_evidence = true;
  p.expected_model_digest = digest(0xAA);
  p.expected_config_digest = digest(0xCC);
  p.expected_job_id = "job-42";
  p.quote_options.at_time = std::chrono::system_clock::from_time_t(1768435200);  // 2026-01-15
  Measurement m{};
  m.fill(0x11);
  p.allowed_mrtd.push_back(m);
  return p;
}

pb::AttestationBundle make_bundle(int tp) {
  const alem::ParallelLayout layout(tp, 1, 1);
  pb::AttestationBundle b;
  b.set_format(std::string(kClusterBundleFormat));
  b.set_job_id("job-42");
  b.set_tp_size(tp);
  b.set_pp_size(1);
  b.set_dp_size(1);
  b.set_model_digest(std::string(32, '\xAA'));
  b.set_config_digest(std::string(32, '\xCC'));
  for (int r = 0; r < layout.world_size(); ++r) {
    auto provider = make_attestation_provider("sandbox");
    RankBindingInput in;
    in.job_id = "job-42";
    in.world_rank = r;
    in.channel_public_key = X25519KeyPair::generate().public_key();
    in.model_digest = digest(0xAA);
    in.config_digest = digest(0xCC);
    if (r == 0) in.sealing_public_key.assign(32, 0x5A);
    *b.add_ranks() = make_rank_attestation(*provider, in, layout.coords(r), "node0");
  }
  return b;
}

std::string bytes_of(const pb::AttestationBundle& b) {
  const std::vector<uint8_t> v = serialize_bundle(b);
  return std::string(v.begin(), v.end());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const std::string dir = alem::fuzz::seed_dir(); !dir.empty()) {
    alem::fuzz::write_seed(dir, "software-2-ranks", bytes_of(make_bundle(2)));
    pb::AttestationBundle tdx = make_bundle(1);
    pb::RankAttestation* r = tdx.mutable_ranks(0);
    r->set_evidence_mode("tdx");
    r->set_evidence_format(std::string(kEvidenceFormatTdxQuote));
    r->set_tdx_quote(alem::fuzz::read_data_file("tdx-quote-v4.dat"));
    r->clear_software_public_key();
    r->clear_software_signature();
    alem::fuzz::write_seed(dir, "tdx-1-rank", bytes_of(tdx));
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const pb::AttestationBundle bundle = parse_bundle(data, size);
    const BundleVerification v = verify_bundle(bundle, policy());
    (void)v.report();
    for (const pb::RankAttestation& entry : bundle.ranks()) {
      (void)verify_rank_entry(bundle, entry, policy());
    }
    PublicKey sealing{};
    sealing.fill(0x5A);
    (void)check_register_bundle(std::string_view(reinterpret_cast<const char*>(data), size),
                                sealing, digest(0xAA), policy());
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("cluster_bundle", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("cluster_bundle", e.what());
  }
  return 0;
}
