// `alem attest verify QUOTE [--collateral DIR] [--json]`: for the network's operators and
// auditors, who hold a TDX quote (from a worker, or from this cluster's bundle) and want to know
// what it measures and whether it is genuine. Prints the parsed measurements (MRTD, RTMR0..3,
// REPORTDATA, MRCONFIGID, MROWNER, MROWNERCONFIG, TD attributes) and COCOON's image hash, then
// each check of confidential/quote_verifier.h with its verdict. With Intel's collateral (the TCB
// info, QE identity and their signing chain, as files in DIR) the TCB status is evaluated too.
// Exit status: 0 when every mandatory check passed, 1 otherwise (or when the quote is unreadable).
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "confidential/cluster_bundle.h"
#include "confidential/image_hash.h"
#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "core/log.h"

namespace alem::cli {
namespace {

namespace cc = confidential;
namespace fs = std::filesystem;

struct AttestVerifyArgs {
  std::string quote;
  std::string collateral_dir;
  std::string at;
  std::string report_data;
  std::vector<std::string> accept_tcb = {"UpToDate"};
  bool enforce_validity = false;
  bool json = false;
};

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  ALEM_CHECK(in, std::string("cannot read the ") + what + " '" + path + "'");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// "2026-01-15" or "2026-01-15T12:00:00Z" (UTC).
std::chrono::system_clock::time_point parse_utc(const std::string& text) {
  std::tm tm{};
  std::istringstream in(text);
  if (text.size() == 10) {
    in >> std::get_time(&tm, "%Y-%m-%d");
  } else {
    in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
  }
  ALEM_CHECK(!in.fail(),
             "--at takes a UTC time like 2026-01-15 or 2026-01-15T12:00:00Z, got '" + text + "'");
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

// Intel's collateral from DIR: tcb-info-<FMSPC>.json (or the only tcb-info*.json),
// qe-identity*.json and the TCB signing chain (*.pem), as tests/data/tdx-collateral holds them.
cc::TdxCollateral read_collateral(const std::string& dir, const std::string& fmspc_hex) {
  ALEM_CHECK(fs::is_directory(dir), "--collateral: '" + dir + "' is not a folder");
  std::vector<fs::path> tcb, qe, pem;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.starts_with("tcb-info") && name.ends_with(".json")) tcb.push_back(e.path());
    if (name.starts_with("qe-identity") && name.ends_with(".json")) qe.push_back(e.path());
    if (name.ends_with(".pem")) pem.push_back(e.path());
  }
  fs::path tcb_file = fs::path(dir) / ("tcb-info-" + fmspc_hex + ".json");
  if (fmspc_hex.empty() || !fs::exists(tcb_file)) {
    ALEM_CHECK(tcb.size() == 1, "--collateral: expected tcb-info-" + fmspc_hex +
                                    ".json (or exactly one tcb-info*.json) in " + dir);
    tcb_file = tcb.front();
  }
  ALEM_CHECK(qe.size() == 1, "--collateral: expected exactly one qe-identity*.json in " + dir);
  ALEM_CHECK(pem.size() == 1,
             "--collateral: expected exactly one .pem file (the TCB signing chain) in " + dir);
  cc::TdxCollateral c;
  c.tcb_info_json = read_file(tcb_file.string(), "TCB info");
  c.qe_identity_json = read_file(qe.front().string(), "QE identity");
  c.issuer_chain_pem = read_file(pem.front().string(), "TCB signing chain");
  return c;
}

uint64_t little_endian_u64(const std::array<uint8_t, 8>& bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | bytes[static_cast<size_t>(i)];
  return v;
}

// The named bits of TDATTRIBUTES (Intel TDX module spec, TD_ATTRIBUTES).
std::vector<std::string> td_attribute_names(uint64_t a) {
  std::vector<std::string> out;
  if (a & (1ull << 0)) out.push_back("DEBUG");
  if (a & (1ull << 28)) out.push_back("SEPT_VE_DISABLE");
  if (a & (1ull << 29)) out.push_back("MIGRATABLE");
  if (a & (1ull << 30)) out.push_back("PKS");
  if (a & (1ull << 31)) out.push_back("KL");
  if (a & (1ull << 63)) out.push_back("PERFMON");
  return out;
}

const char* outcome_word(cc::CheckOutcome o) {
  switch (o) {
    case cc::CheckOutcome::kPassed:
      return "pass";
    case cc::CheckOutcome::kFailed:
      return "fail";
    case cc::CheckOutcome::kNotChecked:
      return "not_checked";
  }
  return "?";
}

nlohmann::json to_json(const std::string& path, const cc::TdxQuote& q,
                       const cc::QuoteVerification& v) {
  const cc::TdReportBody& b = q.body;
  auto hex = [](auto& bytes) { return cc::to_lower_hex(bytes); };
  nlohmann::json m = {{"mrtd", hex(b.mrtd)},
                      {"rtmr0", hex(b.rtmr[0])},
                      {"rtmr1", hex(b.rtmr[1])},
                      {"rtmr2", hex(b.rtmr[2])},
                      {"rtmr3", hex(b.rtmr[3])},
                      {"mrconfigid", hex(b.mrconfigid)},
                      {"mrowner", hex(b.mrowner)},
                      {"mrownerconfig", hex(b.mrownerconfig)},
                      {"report_data", hex(b.report_data)},
                      {"td_attributes", hex(b.td_attributes)},
                      {"td_attributes_set", td_attribute_names(little_endian_u64(b.td_attributes))},
                      {"xfam", hex(b.xfam)},
                      {"tee_tcb_svn", hex(b.tee_tcb_svn)},
                      {"mrseam", hex(b.mrseam)},
                      {"mrsignerseam", hex(b.mrsignerseam)}};
  nlohmann::json checks = nlohmann::json::array();
  for (const cc::VerificationCheck& c : v.checks) {
    checks.push_back({{"name", c.name},
                      {"outcome", outcome_word(c.outcome)},
                      {"mandatory", c.mandatory},
                      {"detail", c.detail}});
  }
  return {{"quote", path},
          {"quote_version", q.header.version},
          {"quote_size", q.raw.size()},
          {"measurements", m},
          {"image_hash", cc::cocoon_image_hash_hex(q)},
          {"checks", checks},
          {"failed_checks", v.failed_checks()},
          {"tcb_status", v.tcb_status},
          {"advisory_ids", v.advisory_ids},
          {"fmspc", v.pck_fmspc_hex},
          {"ok", v.ok()}};
}

void print_text(const std::string& path, const cc::TdxQuote& q, const cc::QuoteVerification& v) {
  const cc::TdReportBody& b = q.body;
  auto line = [](const char* name, const std::string& value) {
    std::printf("%-14s %s\n", name, value.c_str());
  };
  line("quote", path + " (" + std::to_string(q.raw.size()) + " bytes, TDX quote v" +
                    std::to_string(q.header.version) + ")");
  line("MRTD", cc::to_lower_hex(b.mrtd));
  for (int i = 0; i < 4; ++i) {
    line(("RTMR" + std::to_string(i)).c_str(), cc::to_lower_hex(b.rtmr[static_cast<size_t>(i)]));
  }
  line("MRCONFIGID", cc::to_lower_hex(b.mrconfigid));
  line("MROWNER", cc::to_lower_hex(b.mrowner));
  line("MROWNERCONFIG", cc::to_lower_hex(b.mrownerconfig));
  line("REPORTDATA", cc::to_lower_hex(b.report_data));
  std::string attrs = cc::to_lower_hex(b.td_attributes);
  const std::vector<std::string> names = td_attribute_names(little_endian_u64(b.td_attributes));
  if (!names.empty()) {
    attrs += " (";
    for (size_t i = 0; i < names.size(); ++i) attrs += (i ? " " : "") + names[i];
    attrs += ")";
  }
  line("TDATTRIBUTES", attrs);
  line("XFAM", cc::to_lower_hex(b.xfam));
  line("TEE_TCB_SVN", cc::to_lower_hex(b.tee_tcb_svn));
  line("image hash", cc::cocoon_image_hash_hex(q));
  std::printf("\nchecks\n");
  for (const cc::VerificationCheck& c : v.checks) {
    std::printf("  %-4s %s%s: %s\n", cc::to_string(c.outcome), c.name.c_str(),
                c.mandatory ? "" : " (advisory)", c.detail.c_str());
  }
  if (!v.pck_fmspc_hex.empty()) std::printf("\nplatform FMSPC %s\n", v.pck_fmspc_hex.c_str());
  if (v.ok()) {
    std::printf("verdict: genuine Intel TDX quote%s\n",
                v.tcb_status.empty() ? " (offline checks; TCB status not checked: no collateral)"
                                     : (", TCB status " + v.tcb_status).c_str());
  } else {
    std::string failed;
    for (const std::string& n : v.failed_checks()) failed += (failed.empty() ? "" : ", ") + n;
    std::printf("verdict: NOT verified (failed: %s)\n", failed.c_str());
  }
}

int run_attest_verify(const AttestVerifyArgs& a) {
  const std::string bytes = read_file(a.quote, "quote");
  const cc::TdxQuote quote =
      cc::parse_tdx_quote({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  cc::VerifyOptions options;
  if (!a.at.empty()) options.at_time = parse_utc(a.at);
  options.enforce_validity_periods = a.enforce_validity;
  options.accepted_tcb_statuses = a.accept_tcb;
  if (!a.report_data.empty()) {
    const std::vector<uint8_t> rd = cc::from_hex(a.report_data);
    ALEM_CHECK(rd.size() == 64, "--report-data must be 64 bytes (128 hex digits), got " +
                                    std::to_string(rd.size()) + " bytes");
    cc::ReportData expected{};
    std::copy(rd.begin(), rd.end(), expected.begin());
    options.expected_report_data = expected;
  }
  if (!a.collateral_dir.empty()) {
    // The FMSPC (which TCB info applies) comes from the quote's PCK certificate.
    const std::string fmspc = cc::verify_tdx_quote(quote, options).pck_fmspc_hex;
    options.collateral = read_collateral(a.collateral_dir, fmspc);
  }
  const cc::QuoteVerification v = cc::verify_tdx_quote(quote, options);
  log_debug("attest verify", {{"ok", v.ok() ? "true" : "false"}, {"tcb_status", v.tcb_status}});
  if (a.json) {
    std::printf("%s\n", to_json(a.quote, quote, v).dump(2).c_str());
  } else {
    print_text(a.quote, quote, v);
  }
  return v.ok() ? 0 : 1;
}

}  // namespace

void add_attest_command(CLI::App& app) {
  CLI::App* attest = app.add_subcommand("attest", "TDX attestation: inspect and verify quotes");
  attest->require_subcommand(1);
  auto a = std::make_shared<AttestVerifyArgs>();
  CLI::App* verify = attest->add_subcommand(
      "verify", "Print a TDX quote's measurements and image hash, and verify it offline");
  verify->add_option("quote", a->quote, "TDX quote file (binary, version 4 or 5)")->required();
  verify->add_option("--collateral", a->collateral_dir,
                     "Folder with Intel's collateral: tcb-info-<FMSPC>.json, "
                     "qe-identity*.json and the TCB signing chain (.pem)");
  verify->add_option("--at", a->at,
                     "Judge validity periods at this UTC time (2026-01-15 or "
                     "2026-01-15T12:00:00Z) instead of now");
  verify->add_flag("--enforce-validity", a->enforce_validity,
                   "Fail on expired certificates or stale collateral (default: advisory)");
  verify->add_option("--report-data", a->report_data, "Require this REPORTDATA (128 hex digits)");
  verify
      ->add_option("--accept-tcb", a->accept_tcb,
                   "TCB statuses accepted with collateral (repeatable)")
      ->capture_default_str();
  verify->add_flag("--json", a->json, "Machine-readable output");
  verify->callback([a] {
    const int code = run_attest_verify(*a);
    if (code != 0) throw CommandExit(code);
  });
}

}  // namespace alem::cli
