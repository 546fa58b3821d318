// The cluster attestation bundle and its verifier, on bundles made in-process with software
// (sandbox) evidence, and with the real TDX quote from the test data (whose REPORTDATA binds
// someone else's key, so the verifier must name exactly that mismatch). Every field of a bundle
// is tampered with in turn and must be caught by the check that names it. Also the X25519 + HKDF
// pairwise key agreement.
#include <gtest/gtest.h>
#include <sodium.h>

#include <fstream>
#include <iterator>

#include "confidential/bundle_verifier.h"
#include "confidential/cluster_bundle.h"
#include "confidential/key_agreement.h"
#include "core/error.h"
#include "test_env.h"

namespace alem::confidential {
namespace {

std::vector<uint8_t> digest_of(uint8_t seed) {
  return std::vector<uint8_t>(32, seed);
}

struct Cluster {
  pb::AttestationBundle bundle;
  std::vector<X25519KeyPair> channel;
  std::optional<X25519KeyPair> sealing;
};

// A bundle for tp x pp x dp ranks, every rank attesting with its own sandbox provider, built
// the way establish_confidential_session builds it but without MPI.
Cluster make_cluster(int tp, int pp, int dp, const std::string& job = "job-42") {
  Cluster c;
  const ParallelLayout layout(tp, pp, dp);
  c.bundle.set_format(std::string(kClusterBundleFormat));
  c.bundle.set_job_id(job);
  c.bundle.set_tp_size(tp);
  c.bundle.set_pp_size(pp);
  c.bundle.set_dp_size(dp);
  const std::vector<uint8_t> model = digest_of(0xAA), config = digest_of(0xCC);
  c.bundle.set_model_digest(model.data(), model.size());
  c.bundle.set_config_digest(config.data(), config.size());
  for (int r = 0; r < layout.world_size(); ++r) {
    auto provider = make_attestation_provider("sandbox");
    c.channel.push_back(X25519KeyPair::generate());
    RankBindingInput input;
    input.job_id = job;
    input.world_rank = r;
    input.channel_public_key = c.channel.back().public_key();
    input.model_digest = model;
    input.config_digest = config;
    if (r == 0) {
      c.sealing = X25519KeyPair::generate();
      input.sealing_public_key.assign(c.sealing->public_key().begin(),
                                      c.sealing->public_key().end());
    }
    *c.bundle.add_ranks() =
        make_rank_attestation(*provider, input, layout.coords(r), "node" + std::to_string(r / 2));
  }
  return c;
}

BundlePolicy software_policy(const Cluster& c) {
  BundlePolicy p;
  p.accept_software_evidence = true;
  p.expected_model_digest = digest_of(0xAA);
  p.expected_config_digest = digest_of(0xCC);
  p.expected_job_id = "job-42";
  p.expected_sealing_key = c.sealing->public_key();
  return p;
}

TEST(RankBinding, IsSha512OfTheDocumentedEncoding) {
  RankBindingInput in;
  in.job_id = "j1";
  in.world_rank = 258;
  in.channel_public_key.fill(7);
  in.sealing_public_key = {1, 2};
  in.model_digest = {3};
  in.config_digest = {};
  // Written out by hand from the header's description, independently of the implementation.
  std::vector<uint8_t> expected = {20, 0, 0, 0};
  for (char ch : std::string("alem-rank-binding-v1")) expected.push_back(uint8_t(ch));
  for (int b : {2, 0, 0, 0, int('j'), int('1'), 2, 1, 0, 0, 32, 0, 0, 0})
    expected.push_back(uint8_t(b));
  for (int i = 0; i < 32; ++i) expected.push_back(7);
  for (int b : {2, 0, 0, 0, 1, 2, 1, 0, 0, 0, 3, 0, 0, 0, 0}) expected.push_back(uint8_t(b));
  EXPECT_EQ(rank_binding_encoding(in), expected);
  ReportData sha{};
  ASSERT_GE(sodium_init(), 0);
  crypto_hash_sha512(sha.data(), expected.data(), expected.size());
  EXPECT_EQ(rank_binding(in), sha);
  // Every field changes the binding.
  const ReportData base = rank_binding(in);
  RankBindingInput other = in;
  other.world_rank = 259;
  EXPECT_NE(rank_binding(other), base);
  other = in;
  other.job_id = "j2";
  EXPECT_NE(rank_binding(other), base);
  other = in;
  other.channel_public_key[31] ^= 1;
  EXPECT_NE(rank_binding(other), base);
  other = in;
  other.sealing_public_key.clear();
  EXPECT_NE(rank_binding(other), base);
  other = in;
  other.model_digest = {4};
  EXPECT_NE(rank_binding(other), base);
  other = in;
  other.config_digest = {0};
  EXPECT_NE(rank_binding(other), base);
}

TEST(ClusterBundle, SoftwareBundleVerifiesWhenSoftwareEvidenceIsAccepted) {
  Cluster c = make_cluster(2, 2, 1);
  const BundleVerification v = verify_bundle(c.bundle, software_policy(c));
  EXPECT_TRUE(v.ok()) << v.report();
  EXPECT_EQ(v.ranks_checked, 4);
  ASSERT_TRUE(v.sealing_key.has_value());
  EXPECT_EQ(*v.sealing_key, c.sealing->public_key());
  // Through the wire format too.
  const std::vector<uint8_t> bytes = serialize_bundle(c.bundle);
  EXPECT_TRUE(verify_bundle(parse_bundle(bytes.data(), bytes.size()), software_policy(c)).ok());
}

TEST(ClusterBundle, SoftwareEvidenceIsRefusedByDefault) {
  Cluster c = make_cluster(2, 1, 1);
  BundlePolicy p = software_policy(c);
  p.accept_software_evidence = false;
  const BundleVerification v = verify_bundle(c.bundle, p);
  EXPECT_FALSE(v.ok());
  EXPECT_TRUE(v.has(bundle_check::kSoftwareRefused, 0));
  EXPECT_TRUE(v.has(bundle_check::kSoftwareRefused, 1));
  EXPECT_NE(v.report().find("not hardware-backed"), std::string::npos) << v.report();
}

TEST(ClusterBundle, ParseRefusesGarbageAndOtherFormats) {
  const std::vector<uint8_t> garbage = {0xff, 0xff, 0xff};
  EXPECT_THROW(parse_bundle(garbage.data(), garbage.size()), Error);
  pb::AttestationBundle other;
  other.set_format("something-else");
  const std::vector<uint8_t> bytes = serialize_bundle(other);
  try {
    parse_bundle(bytes.data(), bytes.size());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("something-else"), std::string::npos) << e.message();
  }
}

// One tampering, and the check (and rank) that must catch it.
struct Tamper {
  const char* what;
  std::function<void(Cluster&, BundlePolicy&)> apply;
  std::string_view check;
  int rank;
};

TEST(ClusterBundle, TamperingWithAnyFieldIsCaughtByItsCheck) {
  auto flip = [](std::string* s, size_t i = 0) { (*s)[i % s->size()] ^= 0x01; };
  const std::vector<Tamper> cases = {
      {"format", [](Cluster& c, BundlePolicy&) { c.bundle.set_format("v0"); },
       bundle_check::kFormat, -1},
      {"job id", [](Cluster& c, BundlePolicy&) { c.bundle.set_job_id("job-43"); },
       bundle_check::kJobId, -1},
      {"job id binding",
       [](Cluster& c, BundlePolicy& p) {
         c.bundle.set_job_id("job-43");
         p.expected_job_id = "job-43";
       },
       bundle_check::kReportData, 1},
      {"model digest", [&](Cluster& c, BundlePolicy&) { flip(c.bundle.mutable_model_digest()); },
       bundle_check::kModelDigest, -1},
      {"served model differs",
       [](Cluster&, BundlePolicy& p) { p.expected_model_digest = digest_of(1); },
       bundle_check::kModelDigest, -1},
      {"no served model", [](Cluster&, BundlePolicy& p) { p.expected_model_digest.reset(); },
       bundle_check::kModelDigest, -1},
      {"model digest binding",
       [&](Cluster& c, BundlePolicy& p) {
         flip(c.bundle.mutable_model_digest());
         p.expected_model_digest =
             std::vector<uint8_t>(c.bundle.model_digest().begin(), c.bundle.model_digest().end());
       },
       bundle_check::kReportData, 2},
      {"config digest", [&](Cluster& c, BundlePolicy&) { flip(c.bundle.mutable_config_digest()); },
       bundle_check::kConfigDigest, -1},
      {"tp size", [](Cluster& c, BundlePolicy&) { c.bundle.set_tp_size(1); }, bundle_check::kLayout,
       2},
      {"pp size grows", [](Cluster& c, BundlePolicy&) { c.bundle.set_pp_size(3); },
       bundle_check::kRankMissing, 4},
      {"zero dp", [](Cluster& c, BundlePolicy&) { c.bundle.set_dp_size(0); }, bundle_check::kLayout,
       -1},
      {"rank dropped", [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks()->RemoveLast(); },
       bundle_check::kRankMissing, 3},
      {"rank duplicated",
       [](Cluster& c, BundlePolicy&) { *c.bundle.mutable_ranks(3) = c.bundle.ranks(2); },
       bundle_check::kRankDuplicate, 2},
      {"world rank renumbered",
       [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(3)->set_world_rank(2); },
       bundle_check::kRankMissing, 3},
      {"coords", [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(1)->set_tp(0); },
       bundle_check::kCoords, 1},
      {"channel key",
       [&](Cluster& c, BundlePolicy&) {
         flip(c.bundle.mutable_ranks(2)->mutable_channel_public_key(), 5);
       },
       bundle_check::kReportData, 2},
      {"channel key length",
       [](Cluster& c, BundlePolicy&) {
         c.bundle.mutable_ranks(2)->mutable_channel_public_key()->pop_back();
       },
       bundle_check::kChannelKey, 2},
      {"sealing key",
       [&](Cluster& c, BundlePolicy&) {
         flip(c.bundle.mutable_ranks(0)->mutable_sealing_public_key(), 9);
       },
       bundle_check::kReportData, 0},
      {"sealing key not the network's",
       [](Cluster&, BundlePolicy& p) { p.expected_sealing_key->at(0) ^= 1; },
       bundle_check::kSealingKey, 0},
      {"sealing key on another rank",
       [](Cluster& c, BundlePolicy&) {
         c.bundle.mutable_ranks(1)->set_sealing_public_key(std::string(32, 'x'));
       },
       bundle_check::kSealingKey, 1},
      {"sealing key removed",
       [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(0)->clear_sealing_public_key(); },
       bundle_check::kSealingKey, 0},
      {"report data",
       [&](Cluster& c, BundlePolicy&) {
         flip(c.bundle.mutable_ranks(3)->mutable_report_data(), 63);
       },
       bundle_check::kReportData, 3},
      {"signature",
       [&](Cluster& c, BundlePolicy&) {
         flip(c.bundle.mutable_ranks(1)->mutable_software_signature(), 17);
       },
       bundle_check::kSoftwareSignature, 1},
      {"signer key",
       [&](Cluster& c, BundlePolicy&) {
         flip(c.bundle.mutable_ranks(1)->mutable_software_public_key(), 3);
       },
       bundle_check::kSoftwareSignature, 1},
      {"evidence mode",
       [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(2)->set_evidence_mode("off"); },
       bundle_check::kSoftwareSignature, 2},
      {"evidence mode tdx",
       [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(2)->set_evidence_mode("tdx"); },
       bundle_check::kEvidenceFormat, 2},
      {"evidence format",
       [](Cluster& c, BundlePolicy&) { c.bundle.mutable_ranks(2)->set_evidence_format("x509"); },
       bundle_check::kEvidenceFormat, 2},
      {"claims a quote",
       [](Cluster& c, BundlePolicy&) {
         c.bundle.mutable_ranks(2)->set_evidence_format(std::string(kEvidenceFormatTdxQuote));
         c.bundle.mutable_ranks(2)->set_evidence_mode("tdx");
       },
       bundle_check::kQuoteParse, 2},
  };
  for (const Tamper& t : cases) {
    Cluster c = make_cluster(2, 2, 1);
    BundlePolicy p = software_policy(c);
    t.apply(c, p);
    const BundleVerification v = verify_bundle(c.bundle, p);
    EXPECT_FALSE(v.ok()) << t.what;
    EXPECT_TRUE(v.has(t.check, t.rank))
        << t.what << ": expected " << t.check << " on rank " << t.rank << ", got\n"
        << v.report();
  }
}

TEST(ClusterBundle, RegisterCheckBindsTheRegisteredSealingKeyAndModel) {
  Cluster c = make_cluster(2, 1, 1);
  const std::vector<uint8_t> bytes = serialize_bundle(c.bundle);
  const std::string evidence(bytes.begin(), bytes.end());
  BundlePolicy accept;
  accept.accept_software_evidence = true;
  EXPECT_EQ(check_register_bundle(evidence, c.sealing->public_key(), digest_of(0xAA), accept), "");
  PublicKey other = c.sealing->public_key();
  other[0] ^= 1;
  const std::string wrong_key = check_register_bundle(evidence, other, digest_of(0xAA), accept);
  EXPECT_NE(wrong_key.find("rank 0 sealing_key"), std::string::npos) << wrong_key;
  const std::string wrong_model =
      check_register_bundle(evidence, c.sealing->public_key(), digest_of(1), accept);
  EXPECT_NE(wrong_model.find("bundle model_digest"), std::string::npos) << wrong_model;
  const std::string refused =
      check_register_bundle(evidence, c.sealing->public_key(), digest_of(0xAA), BundlePolicy{});
  EXPECT_NE(refused.find("software_evidence_refused"), std::string::npos) << refused;
  EXPECT_NE(check_register_bundle("garbage", c.sealing->public_key(), digest_of(0xAA), accept), "");
}

TEST(ClusterBundle, HostIsInformationalOnly) {
  // The host name is not bound (a rank cannot prove where it runs by naming it); changing it
  // leaves the verdict unchanged. Documented in docs/attestation.md.
  Cluster c = make_cluster(2, 1, 1);
  c.bundle.mutable_ranks(1)->set_host("elsewhere");
  EXPECT_TRUE(verify_bundle(c.bundle, software_policy(c)).ok());
}

class RealQuoteBundle : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ifstream in(test::data_dir() + "/tdx-quote-v4.dat", std::ios::binary);
    ASSERT_TRUE(in) << "missing tests/data/tdx-quote-v4.dat";
    quote_.assign(std::istreambuf_iterator<char>(in), {});
    ASSERT_EQ(quote_.size(), 5010u);
    channel_.emplace(X25519KeyPair::generate());
    sealing_.emplace(X25519KeyPair::generate());
    bundle_.set_format(std::string(kClusterBundleFormat));
    bundle_.set_job_id("job-7");
    bundle_.set_tp_size(1);
    bundle_.set_pp_size(1);
    bundle_.set_dp_size(1);
    bundle_.set_model_digest(std::string(32, '\x11'));
    bundle_.set_config_digest(std::string(32, '\x22'));
    pb::RankAttestation* e = bundle_.add_ranks();
    e->set_world_rank(0);
    e->set_host("td-host");
    e->set_channel_public_key(channel_->public_key().data(), 32);
    e->set_sealing_public_key(sealing_->public_key().data(), 32);
    e->set_evidence_mode("tdx");
    e->set_evidence_format(std::string(kEvidenceFormatTdxQuote));
    e->set_tdx_quote(quote_);
    e->set_report_data(quote_.substr(568, 64));  // what the quote really binds
    policy_.expected_model_digest = std::vector<uint8_t>(32, 0x11);
    policy_.allowed_mrtd = {to_measurement(
        "7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a219786afe2cd478f684b52c61"
        "837e1114")};
  }
  static Measurement to_measurement(const std::string& hex) {
    const std::vector<uint8_t> b = from_hex(hex);
    Measurement m{};
    std::copy(b.begin(), b.end(), m.begin());
    return m;
  }
  std::string quote_;
  std::optional<X25519KeyPair> channel_, sealing_;
  pb::AttestationBundle bundle_;
  BundlePolicy policy_;
};

TEST_F(RealQuoteBundle, GenuineQuoteButItsReportDataBindsSomethingElse) {
  const BundleVerification v = verify_bundle(bundle_, policy_);
  EXPECT_FALSE(v.ok());
  // The quote itself is genuine (no "quote" finding) and its MRTD is allowed; what fails is the
  // binding: REPORTDATA d21efaa8... is not the hash of this bundle's keys and digests.
  EXPECT_FALSE(v.has(bundle_check::kQuote)) << v.report();
  EXPECT_FALSE(v.has(bundle_check::kMrtd)) << v.report();
  ASSERT_TRUE(v.has(bundle_check::kReportData, 0)) << v.report();
  EXPECT_NE(v.report().find("the quote's REPORTDATA d21efaa8d7de2b0f5601df8b24cfbca6"),
            std::string::npos)
      << v.report();
  EXPECT_FALSE(v.has(bundle_check::kSoftwareRefused));
}

TEST_F(RealQuoteBundle, MeasurementsOutsideTheAllowlistAreNamed) {
  policy_.allowed_mrtd = {Measurement{}};
  policy_.allowed_rtmr[3] = {to_measurement(std::string(96, 'f'))};
  policy_.allowed_image_hashes = {ImageHash{}};
  const BundleVerification v = verify_bundle(bundle_, policy_);
  EXPECT_TRUE(v.has(bundle_check::kMrtd, 0)) << v.report();
  EXPECT_TRUE(v.has(bundle_check::kRtmr, 0)) << v.report();
  EXPECT_NE(v.report().find("RTMR3 0000"), std::string::npos) << v.report();
  EXPECT_TRUE(v.has(bundle_check::kImageHash, 0)) << v.report();
  EXPECT_NE(v.report().find("04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436"),
            std::string::npos)
      << v.report();
  // The right RTMR and image hash pass.
  BundlePolicy good = policy_;
  good.allowed_mrtd = {to_measurement(
      "7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a219786afe2cd478f684b52c6183"
      "7e1114")};
  good.allowed_rtmr[3] = {Measurement{}};
  const std::vector<uint8_t> image =
      from_hex("04b3afd931d28680af91a15b09d672c40ad6b141f7f9089a8d67d595220f7436");
  std::copy(image.begin(), image.end(), good.allowed_image_hashes[0].begin());
  const BundleVerification ok = verify_bundle(bundle_, good);
  EXPECT_FALSE(ok.has(bundle_check::kMrtd) || ok.has(bundle_check::kRtmr) ||
               ok.has(bundle_check::kImageHash))
      << ok.report();
}

TEST_F(RealQuoteBundle, ATamperedQuoteFailsTheQuoteCheck) {
  std::string* q = bundle_.mutable_ranks(0)->mutable_tdx_quote();
  (*q)[200] ^= 0x01;  // inside MRTD: signed by the attestation key
  const BundleVerification v = verify_bundle(bundle_, policy_);
  ASSERT_TRUE(v.has(bundle_check::kQuote, 0)) << v.report();
  EXPECT_NE(v.report().find("quote_signature"), std::string::npos) << v.report();
  q->resize(100);
  EXPECT_TRUE(verify_bundle(bundle_, policy_).has(bundle_check::kQuoteParse, 0));
}

TEST_F(RealQuoteBundle, AnEmptyMrtdAllowlistRefusesTheQuote) {
  policy_.allowed_mrtd.clear();
  const BundleVerification v = verify_bundle(bundle_, policy_);
  EXPECT_TRUE(v.has(bundle_check::kMrtd, 0));
  EXPECT_NE(v.report().find("allowlist is empty"), std::string::npos) << v.report();
}

TEST(KeyAgreement, BothSidesDeriveTheSameKeyAndItDependsOnEverything) {
  X25519KeyPair a = X25519KeyPair::generate(), b = X25519KeyPair::generate(),
                c = X25519KeyPair::generate();
  const ChannelKey ab = derive_pair_key(a, 0, b.public_key(), 5, "job");
  EXPECT_EQ(ab, derive_pair_key(b, 5, a.public_key(), 0, "job"));
  EXPECT_NE(ab, derive_pair_key(a, 0, b.public_key(), 5, "other-job"));
  EXPECT_NE(ab, derive_pair_key(a, 0, b.public_key(), 6, "job"));
  EXPECT_NE(ab, derive_pair_key(a, 0, c.public_key(), 5, "job"));
  // The key is not the raw X25519 output.
  std::array<uint8_t, 32> raw{};
  ASSERT_EQ(crypto_scalarmult(raw.data(), a.secret_key().data(), b.public_key().data()), 0);
  EXPECT_NE(ab, raw);
}

TEST(KeyAgreement, LowOrderPeerKeysAndSelfAreRefused) {
  X25519KeyPair a = X25519KeyPair::generate();
  EXPECT_THROW(derive_pair_key(a, 0, PublicKey{}, 1, "job"), Error);  // the zero point
  EXPECT_THROW(derive_pair_key(a, 1, a.public_key(), 1, "job"), Error);
}

TEST(KeyAgreement, DefaultPeerPolicyPinsTheOwnImage) {
  std::ifstream in(test::data_dir() + "/tdx-quote-v4.dat", std::ios::binary);
  std::string quote((std::istreambuf_iterator<char>(in)), {});
  pb::RankAttestation mine;
  mine.set_evidence_format(std::string(kEvidenceFormatTdxQuote));
  mine.set_tdx_quote(quote);
  const BundlePolicy p = default_peer_policy(mine, digest_of(3));
  ASSERT_EQ(p.allowed_mrtd.size(), 1u);
  EXPECT_EQ(to_hex(p.allowed_mrtd[0].data(), 4), "7357a10d");
  EXPECT_EQ(to_hex(p.allowed_rtmr[0][0].data(), 4), "251a7f3c");
  EXPECT_FALSE(p.accept_software_evidence);
  pb::RankAttestation software;
  software.set_evidence_format(std::string(kEvidenceFormatSoftwareEd25519));
  EXPECT_TRUE(default_peer_policy(software, digest_of(3)).accept_software_evidence);
  EXPECT_THROW(parse_interconnect_encryption("sometimes"), Error);
  EXPECT_EQ(parse_interconnect_encryption("always"), InterconnectEncryption::kAlways);
}

}  // namespace
}  // namespace alem::confidential
