// Implements evaluate_tdx_collateral and the PCK certificate's SGX extension reader. Intel's
// rules followed here come from its DCAP quote verification library (TcbLevelCheck,
// TdxModuleCheck, QE identity checks); where a step is simplified, the comment says so.
#include "confidential/tdx_collateral.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "confidential/openssl_pki.h"
#include "core/error.h"
#include "core/json_input.h"

namespace alem::confidential {
namespace {

using nlohmann::json;

// ---- PCK certificate SGX extension (DER) ----------------------------------------------------

// OID 1.2.840.113741.1.13.1 (Intel SGX extensions), DER content bytes.
constexpr uint8_t kSgxExtensionOid[] = {0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01};

struct DerElement {
  uint8_t tag = 0;
  std::span<const uint8_t> value;
};

// A bounds-checked reader of DER type-length-value elements.
class DerReader {
 public:
  explicit DerReader(std::span<const uint8_t> bytes) : bytes_(bytes) {}
  bool done() const { return position_ == bytes_.size(); }

  DerElement next(const char* what) {
    ALEM_CHECK(bytes_.size() - position_ >= 2,
               std::string("PCK SGX extension truncated at ") + what);
    DerElement element;
    element.tag = bytes_[position_++];
    size_t length = bytes_[position_++];
    if (length & 0x80) {
      const size_t count = length & 0x7f;
      ALEM_CHECK(count >= 1 && count <= 3 && bytes_.size() - position_ >= count,
                 std::string("PCK SGX extension has a bad length at ") + what);
      length = 0;
      for (size_t i = 0; i < count; ++i) length = (length << 8) | bytes_[position_++];
    }
    ALEM_CHECK(length <= bytes_.size() - position_,
               std::string("PCK SGX extension length overruns its data at ") + what);
    element.value = bytes_.subspan(position_, length);
    position_ += length;
    return element;
  }

 private:
  std::span<const uint8_t> bytes_;
  size_t position_ = 0;
};

// True when `oid` is the SGX extension OID followed by exactly `suffix`.
bool is_sgx_oid(std::span<const uint8_t> oid, std::initializer_list<uint8_t> suffix) {
  const size_t base = sizeof(kSgxExtensionOid);
  if (oid.size() != base + suffix.size()) return false;
  if (!std::equal(kSgxExtensionOid, kSgxExtensionOid + base, oid.begin())) return false;
  return std::equal(suffix.begin(), suffix.end(), oid.begin() + base);
}

unsigned der_small_unsigned(const DerElement& element, const char* what) {
  ALEM_CHECK(element.tag == 0x02 && !element.value.empty() && element.value.size() <= 3 &&
                 !(element.value[0] & 0x80),
             std::string("PCK SGX extension: ") + what + " is not a small non-negative INTEGER");
  unsigned value = 0;
  for (uint8_t b : element.value) value = (value << 8) | b;
  return value;
}

template <size_t N>
std::array<uint8_t, N> der_octets(const DerElement& element, const char* what) {
  ALEM_CHECK(element.tag == 0x04 && element.value.size() == N,
             std::string("PCK SGX extension: ") + what + " is not a " + std::to_string(N) +
                 "-byte OCTET STRING");
  std::array<uint8_t, N> out{};
  std::memcpy(out.data(), element.value.data(), N);
  return out;
}

// ---- JSON helpers ----------------------------------------------------------------------------

size_t skip_json_whitespace(std::string_view text, size_t i) {
  while (i < text.size() &&
         (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n')) {
    ++i;
  }
  return i;
}

size_t skip_json_string(std::string_view text, size_t i) {  // i at the opening quote
  for (++i; i < text.size(); ++i) {
    if (text[i] == '\\') {
      ++i;
    } else if (text[i] == '"') {
      return i + 1;
    }
  }
  ALEM_FAIL("JSON text ends inside a string");
}

size_t skip_json_value(std::string_view text, size_t i) {
  ALEM_CHECK(i < text.size(), "JSON text ends where a value should be");
  if (text[i] == '"') return skip_json_string(text, i);
  if (text[i] == '{' || text[i] == '[') {
    int depth = 0;
    while (i < text.size()) {
      const char c = text[i];
      if (c == '"') {
        i = skip_json_string(text, i);
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if ((c == '}' || c == ']') && --depth == 0) return i + 1;
      ++i;
    }
    ALEM_FAIL("JSON text ends inside an object or array");
  }
  while (i < text.size() &&
         std::string_view(",}] \t\r\n").find(text[i]) == std::string_view::npos) {
    ++i;
  }
  return i;
}

int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::vector<uint8_t> decode_hex(std::string_view hex, const char* what) {
  ALEM_CHECK(hex.size() % 2 == 0, std::string(what) + " is not hex");
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int high = hex_nibble(hex[2 * i]);
    const int low = hex_nibble(hex[2 * i + 1]);
    ALEM_CHECK(high >= 0 && low >= 0, std::string(what) + " is not hex");
    out[i] = static_cast<uint8_t>(high << 4 | low);
  }
  return out;
}

template <size_t N>
std::array<uint8_t, N> hex_field(const json& object, const char* key) {
  const std::vector<uint8_t> bytes = decode_hex(object.at(key).get<std::string>(), key);
  ALEM_CHECK(bytes.size() == N, std::string(key) + " must be " + std::to_string(N) + " bytes");
  std::array<uint8_t, N> out{};
  std::copy(bytes.begin(), bytes.end(), out.begin());
  return out;
}

time_t parse_utc(const std::string& text, const char* what) {
  std::tm tm{};
  char zulu = 0;
  ALEM_CHECK(std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &tm.tm_year, &tm.tm_mon,
                         &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &zulu) == 7 &&
                 zulu == 'Z',
             std::string(what) + " \"" + text + "\" is not a UTC time");
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return timegm(&tm);
}

// A signed Intel document: the parsed inner object and whether its signature verified.
struct SignedDocument {
  json body;
  std::string problem;  // "" when parsed and verified
};

SignedDocument read_signed_document(const std::string& text, const char* member, EVP_PKEY* key) {
  SignedDocument document;
  try {
    const std::string_view raw = raw_json_member(text, member);
    const json outer = parse_json_bounded(text);
    const std::vector<uint8_t> signature =
        decode_hex(outer.at("signature").get<std::string>(), "signature");
    ALEM_CHECK(signature.size() == 64, "signature must be 64 bytes (r || s)");
    document.body = parse_json_bounded(raw);
    const std::string reason =
        pki::verify_ecdsa_p256_raw(key, {reinterpret_cast<const uint8_t*>(raw.data()), raw.size()},
                                   std::span<const uint8_t, 64>(signature.data(), 64));
    if (!reason.empty()) document.problem = std::string(member) + ": " + reason;
  } catch (const std::exception& e) {
    document.problem = std::string(member) + " document unreadable: " +
                       (dynamic_cast<const Error*>(&e) ? static_cast<const Error&>(e).message()
                                                       : std::string(e.what()));
  }
  return document;
}

// ---- TCB status rules (Intel QVL) ------------------------------------------------------------

// Intel's convergence: an out-of-date or revoked TDX module or QE lowers the platform status.
std::string converge_status(const std::string& platform, const std::string& component) {
  if (component == "Revoked") return "Revoked";
  if (component == "OutOfDate") {
    if (platform == "UpToDate" || platform == "SWHardeningNeeded") return "OutOfDate";
    if (platform == "ConfigurationNeeded" || platform == "ConfigurationAndSWHardeningNeeded") {
      return "OutOfDateConfigurationNeeded";
    }
  }
  return platform;
}

std::vector<unsigned> component_svns(const json& components, const char* what) {
  ALEM_CHECK(components.is_array() && components.size() == 16,
             std::string(what) + " must list 16 components");
  std::vector<unsigned> svns;
  for (const json& c : components) svns.push_back(c.at("svn").get<unsigned>());
  return svns;
}

void append_advisories(const json& level, std::vector<std::string>& out) {
  if (!level.contains("advisoryIDs")) return;
  for (const json& id : level.at("advisoryIDs")) {
    const std::string text = id.get<std::string>();
    if (std::find(out.begin(), out.end(), text) == out.end()) out.push_back(text);
  }
}

// First level of an identity's tcbLevels whose isvsvn is at or below `isv_svn`.
const json* first_level_at_or_below(const json& levels, unsigned isv_svn) {
  for (const json& level : levels) {
    if (level.at("tcb").at("isvsvn").get<unsigned>() <= isv_svn) return &level;
  }
  return nullptr;
}

bool masked_equal(std::span<const uint8_t> value, std::span<const uint8_t> mask,
                  std::span<const uint8_t> expected) {
  for (size_t i = 0; i < value.size(); ++i) {
    if ((value[i] & mask[i]) != expected[i]) return false;
  }
  return true;
}

class VerdictBuilder {
 public:
  void add(std::string_view name, bool passed, std::string detail, bool mandatory = true) {
    verdict.checks.push_back({std::string(name),
                              passed ? CheckOutcome::kPassed : CheckOutcome::kFailed, mandatory,
                              std::move(detail)});
  }
  void skip(std::string_view name, const std::string& why, bool mandatory = true) {
    verdict.checks.push_back({std::string(name), CheckOutcome::kNotChecked, mandatory, why});
  }
  CollateralVerdict verdict;
};

void check_qe_identity(const json& identity, const SgxReportBody& qe, VerdictBuilder& out,
                       std::string& qe_status) {
  ALEM_CHECK(identity.at("id").get<std::string>() == "TD_QE",
             "QE identity is for \"" + identity.at("id").get<std::string>() + "\", not TD_QE");
  const auto mrsigner = hex_field<32>(identity, "mrsigner");
  const auto misc = hex_field<4>(identity, "miscselect");
  const auto misc_mask = hex_field<4>(identity, "miscselectMask");
  const auto attributes = hex_field<16>(identity, "attributes");
  const auto attributes_mask = hex_field<16>(identity, "attributesMask");
  const unsigned prod_id = identity.at("isvprodid").get<unsigned>();
  std::array<uint8_t, 4> qe_misc{};
  std::memcpy(qe_misc.data(), &qe.misc_select, 4);  // little-endian as in the report
  if (qe.mrsigner != mrsigner) {
    out.add(
        quote_check::kQeIdentity, false,
        "QE MRSIGNER " + to_lower_hex(qe.mrsigner) + " is not Intel's " + to_lower_hex(mrsigner));
    return;
  }
  if (qe.isv_prod_id != prod_id) {
    out.add(quote_check::kQeIdentity, false,
            "QE ISVPRODID " + std::to_string(qe.isv_prod_id) + " != " + std::to_string(prod_id));
    return;
  }
  if (!masked_equal(qe_misc, misc_mask, misc) ||
      !masked_equal(qe.attributes, attributes_mask, attributes)) {
    out.add(quote_check::kQeIdentity, false, "QE MISCSELECT/ATTRIBUTES do not match the identity");
    return;
  }
  const json* level = first_level_at_or_below(identity.at("tcbLevels"), qe.isv_svn);
  qe_status = level ? level->at("tcbStatus").get<std::string>() : "Revoked";
  out.add(quote_check::kQeIdentity, level != nullptr,
          level ? "QE matches Intel's TD_QE identity; QE ISVSVN " + std::to_string(qe.isv_svn) +
                      " is " + qe_status
                : "QE ISVSVN " + std::to_string(qe.isv_svn) + " is below every TCB level");
}

void check_tdx_module(const json& tcb_info, const TdReportBody& body, VerdictBuilder& out,
                      std::string& module_status, std::vector<std::string>& advisories) {
  const unsigned module_isv_svn = body.tee_tcb_svn[0];
  const unsigned module_major = body.tee_tcb_svn[1];
  const json* identity = nullptr;
  std::string name = "tdxModule";
  if (module_major == 0) {
    identity = &tcb_info.at("tdxModule");
  } else {
    char id[16];
    std::snprintf(id, sizeof(id), "TDX_%02X", module_major);
    name = id;
    static const json kNoIdentities = json::array();
    const json& identities = tcb_info.contains("tdxModuleIdentities")
                                 ? tcb_info.at("tdxModuleIdentities")
                                 : kNoIdentities;
    for (const json& candidate : identities) {
      std::string candidate_id = candidate.at("id").get<std::string>();
      std::transform(candidate_id.begin(), candidate_id.end(), candidate_id.begin(), ::toupper);
      if (candidate_id == name) identity = &candidate;
    }
  }
  if (!identity) {
    out.add(quote_check::kTdxModule, false,
            "TCB info has no identity " + name + " for TDX module major version " +
                std::to_string(module_major));
    return;
  }
  const auto mrsigner = hex_field<48>(*identity, "mrsigner");
  const auto attributes = hex_field<8>(*identity, "attributes");
  const auto mask = hex_field<8>(*identity, "attributesMask");
  if (body.mrsignerseam != mrsigner || !masked_equal(body.seam_attributes, mask, attributes)) {
    out.add(quote_check::kTdxModule, false,
            "MRSIGNERSEAM/SEAMATTRIBUTES do not match Intel's TDX module identity " + name);
    return;
  }
  module_status = "UpToDate";  // major version 0: the TCB level's own components decide
  if (module_major != 0) {
    const json* level = first_level_at_or_below(identity->at("tcbLevels"), module_isv_svn);
    if (!level) {
      out.add(
          quote_check::kTdxModule, false,
          "TDX module SVN " + std::to_string(module_isv_svn) + " is below every level of " + name);
      return;
    }
    module_status = level->at("tcbStatus").get<std::string>();
    append_advisories(*level, advisories);
  }
  out.add(quote_check::kTdxModule, true,
          "TDX module matches identity " + name + "; module SVN " + std::to_string(module_isv_svn) +
              " is " + module_status);
}

// Intel's matchTcbLevels: the first level (highest first) whose SGX components and PCESVN the
// PCK certificate meets, and whose TDX components TEE_TCB_SVN meets (components 0 and 1 belong
// to the module identity when the module's major version, TEE_TCB_SVN[1], is not 0).
const json* match_tcb_level(const json& levels, const PckPlatformTcb& platform,
                            const TdReportBody& body, bool& sgx_level_found) {
  sgx_level_found = false;
  const size_t first_tdx_component = body.tee_tcb_svn[1] > 0 ? 2 : 0;
  for (const json& level : levels) {
    const json& tcb = level.at("tcb");
    const std::vector<unsigned> sgx =
        component_svns(tcb.at("sgxtcbcomponents"), "sgxtcbcomponents");
    bool sgx_ok = platform.pce_svn >= tcb.at("pcesvn").get<unsigned>();
    for (size_t i = 0; i < 16 && sgx_ok; ++i) sgx_ok = platform.cpu_svn_components[i] >= sgx[i];
    if (!sgx_ok) continue;
    sgx_level_found = true;
    const std::vector<unsigned> tdx =
        component_svns(tcb.at("tdxtcbcomponents"), "tdxtcbcomponents");
    bool tdx_ok = true;
    for (size_t i = first_tdx_component; i < 16 && tdx_ok; ++i)
      tdx_ok = body.tee_tcb_svn[i] >= tdx[i];
    if (tdx_ok) return &level;
  }
  return nullptr;
}

}  // namespace

PckPlatformTcb read_pck_platform_tcb(X509* pck_certificate) {
  ASN1_OBJECT* oid = OBJ_txt2obj("1.2.840.113741.1.13.1", 1);
  ALEM_CHECK(oid, "OpenSSL: cannot build the SGX extension OID");
  const int index = X509_get_ext_by_OBJ(pck_certificate, oid, -1);
  ASN1_OBJECT_free(oid);
  ALEM_CHECK(index >= 0, "PCK certificate has no Intel SGX extension");
  const ASN1_OCTET_STRING* data = X509_EXTENSION_get_data(X509_get_ext(pck_certificate, index));
  DerReader outer({ASN1_STRING_get0_data(data), static_cast<size_t>(ASN1_STRING_length(data))});
  const DerElement sequence = outer.next("the extension sequence");
  ALEM_CHECK(sequence.tag == 0x30 && outer.done(), "PCK SGX extension is not one SEQUENCE");

  PckPlatformTcb platform;
  bool have_fmspc = false, have_pce_id = false, have_pce_svn = false;
  unsigned components_seen = 0;
  DerReader items(sequence.value);
  while (!items.done()) {
    const DerElement item = items.next("an extension entry");
    ALEM_CHECK(item.tag == 0x30, "PCK SGX extension entry is not a SEQUENCE");
    DerReader pair(item.value);
    const DerElement name = pair.next("an entry OID");
    const DerElement value = pair.next("an entry value");
    ALEM_CHECK(name.tag == 0x06, "PCK SGX extension entry does not start with an OID");
    if (is_sgx_oid(name.value, {0x04})) {
      platform.fmspc = der_octets<6>(value, "FMSPC");
      have_fmspc = true;
    } else if (is_sgx_oid(name.value, {0x03})) {
      platform.pce_id = der_octets<2>(value, "PCE-ID");
      have_pce_id = true;
    } else if (is_sgx_oid(name.value, {0x02})) {
      ALEM_CHECK(value.tag == 0x30, "PCK SGX extension TCB is not a SEQUENCE");
      DerReader tcb(value.value);
      while (!tcb.done()) {
        const DerElement tcb_item = tcb.next("a TCB entry");
        DerReader tcb_pair(tcb_item.value);
        const DerElement tcb_name = tcb_pair.next("a TCB entry OID");
        const DerElement tcb_value = tcb_pair.next("a TCB entry value");
        for (uint8_t n = 1; n <= 16; ++n) {
          if (is_sgx_oid(tcb_name.value, {0x02, n})) {
            const unsigned svn = der_small_unsigned(tcb_value, "a CPU SVN component");
            ALEM_CHECK(svn <= 255, "PCK SGX extension CPU SVN component exceeds 255");
            platform.cpu_svn_components[n - 1] = static_cast<uint8_t>(svn);
            components_seen |= 1u << (n - 1);
          }
        }
        if (is_sgx_oid(tcb_name.value, {0x02, 0x11})) {
          const unsigned svn = der_small_unsigned(tcb_value, "PCESVN");
          ALEM_CHECK(svn <= 0xffff, "PCK SGX extension PCESVN exceeds 65535");
          platform.pce_svn = static_cast<uint16_t>(svn);
          have_pce_svn = true;
        }
      }
    }
  }
  ALEM_CHECK(have_fmspc && have_pce_id && have_pce_svn && components_seen == 0xffff,
             "PCK SGX extension lacks FMSPC, PCE-ID, PCESVN or a CPU SVN component");
  return platform;
}

std::string_view raw_json_member(std::string_view text, std::string_view key) {
  size_t i = skip_json_whitespace(text, 0);
  ALEM_CHECK(i < text.size() && text[i] == '{', "JSON text is not an object");
  i = skip_json_whitespace(text, i + 1);
  while (i < text.size() && text[i] != '}') {
    ALEM_CHECK(text[i] == '"', "JSON object member does not start with a string key");
    const size_t key_end = skip_json_string(text, i);
    const std::string_view member = text.substr(i + 1, key_end - i - 2);
    i = skip_json_whitespace(text, key_end);
    ALEM_CHECK(i < text.size() && text[i] == ':', "JSON object member has no ':'");
    const size_t value_start = skip_json_whitespace(text, i + 1);
    const size_t value_end = skip_json_value(text, value_start);
    if (member == key) return text.substr(value_start, value_end - value_start);
    i = skip_json_whitespace(text, value_end);
    if (i < text.size() && text[i] == ',') i = skip_json_whitespace(text, i + 1);
  }
  ALEM_FAIL("JSON object has no member \"" + std::string(key) + "\"");
}

CollateralVerdict evaluate_tdx_collateral(const TdxCollateral& collateral,
                                          const CollateralContext& context) {
  VerdictBuilder out;
  const std::string skipped = "not checked: the collateral signatures did not verify";
  auto skip_rest = [&](bool signatures_checked) {
    if (!signatures_checked) out.skip(quote_check::kCollateralSignatures, skipped);
    out.skip(quote_check::kCollateralValidity, skipped, context.enforce_validity_periods);
    out.skip(quote_check::kQeIdentity, skipped);
    out.skip(quote_check::kTdxModule, skipped);
    out.skip(quote_check::kTcbStatus, skipped);
    return std::move(out.verdict);
  };

  // 1. Signing chain and signatures.
  std::string reason;
  std::vector<pki::X509Ptr> chain = pki::read_pem_certificates(collateral.issuer_chain_pem, reason);
  if (reason.empty() && chain.empty()) reason = "no certificate";
  if (reason.empty() && pki::common_name(chain[0].get()) != "Intel SGX TCB Signing") {
    reason = "first certificate is \"" + pki::common_name(chain[0].get()) +
             "\", not \"Intel SGX TCB Signing\"";
  }
  if (reason.empty()) {
    std::vector<X509*> rest;
    for (size_t i = 1; i < chain.size(); ++i) rest.push_back(chain[i].get());
    reason = pki::verify_chain_to_root(chain[0].get(), rest, context.pinned_root);
  }
  if (!reason.empty()) {
    out.add(quote_check::kCollateralSignatures, false, "TCB signing chain: " + reason);
    return skip_rest(true);
  }
  EVP_PKEY* signing_key = X509_get0_pubkey(chain[0].get());
  const SignedDocument tcb_doc =
      read_signed_document(collateral.tcb_info_json, "tcbInfo", signing_key);
  const SignedDocument qe_doc =
      read_signed_document(collateral.qe_identity_json, "enclaveIdentity", signing_key);
  if (!tcb_doc.problem.empty() || !qe_doc.problem.empty()) {
    out.add(quote_check::kCollateralSignatures, false,
            tcb_doc.problem.empty() ? qe_doc.problem : tcb_doc.problem);
    return skip_rest(true);
  }
  out.add(quote_check::kCollateralSignatures, true,
          "tcbInfo and enclaveIdentity are signed by Intel SGX TCB Signing <- pinned root");

  try {
    const json& tcb_info = tcb_doc.body;
    const json& qe_identity = qe_doc.body;
    // 2. Freshness.
    std::string stale = pki::validity_problem(chain[0].get(), context.at);
    if (!stale.empty()) stale = "TCB signing certificate " + stale;
    for (const auto& [doc, what] :
         {std::pair{&tcb_info, "tcbInfo"}, {&qe_identity, "QE identity"}}) {
      const time_t issued = parse_utc(doc->at("issueDate").get<std::string>(), "issueDate");
      const time_t next = parse_utc(doc->at("nextUpdate").get<std::string>(), "nextUpdate");
      if (stale.empty() && (context.at < issued || context.at >= next)) {
        stale = std::string(what) + " is valid " + pki::format_utc(issued) + " .. " +
                pki::format_utc(next) + ", not at " + pki::format_utc(context.at);
      }
    }
    out.add(quote_check::kCollateralValidity, stale.empty(),
            stale.empty() ? "collateral current at " + pki::format_utc(context.at) : stale,
            context.enforce_validity_periods);

    // 3. QE identity and TDX module identity.
    std::string qe_status, module_status;
    std::vector<std::string> advisories;
    check_qe_identity(qe_identity, context.quote.qe_report, out, qe_status);
    check_tdx_module(tcb_info, context.quote.body, out, module_status, advisories);

    // 4. Platform TCB level.
    ALEM_CHECK(
        tcb_info.at("id").get<std::string>() == "TDX" && tcb_info.at("version").get<int>() == 3,
        "tcbInfo is not TDX TCB info version 3");
    const auto fmspc = hex_field<6>(tcb_info, "fmspc");
    const auto pce_id = hex_field<2>(tcb_info, "pceId");
    if (fmspc != context.platform.fmspc || pce_id != context.platform.pce_id) {
      out.add(quote_check::kTcbStatus, false,
              "tcbInfo is for FMSPC " + to_lower_hex(fmspc) + ", the PCK certificate's is " +
                  to_lower_hex(context.platform.fmspc) + " (or the PCE id differs)");
      return std::move(out.verdict);
    }
    bool sgx_found = false;
    const json* level =
        match_tcb_level(tcb_info.at("tcbLevels"), context.platform, context.quote.body, sgx_found);
    if (!level) {
      out.add(quote_check::kTcbStatus, false,
              std::string("no TCB level matches the platform's ") +
                  (sgx_found ? "TEE_TCB_SVN " + to_lower_hex(context.quote.body.tee_tcb_svn)
                             : "PCK CPU SVN " + to_lower_hex(context.platform.cpu_svn_components) +
                                   " / PCESVN " + std::to_string(context.platform.pce_svn)) +
                  ": TCB not supported");
      return std::move(out.verdict);
    }
    append_advisories(*level, advisories);
    const std::string platform_status = level->at("tcbStatus").get<std::string>();
    std::string status = platform_status;
    if (!module_status.empty()) status = converge_status(status, module_status);
    if (!qe_status.empty()) status = converge_status(status, qe_status);
    out.verdict.tcb_status = status;
    out.verdict.advisory_ids = advisories;
    const auto& accepted = context.accepted_tcb_statuses;
    const bool acceptable = std::find(accepted.begin(), accepted.end(), status) != accepted.end();
    std::string detail = "TCB status " + status + " (platform level of " +
                         level->at("tcbDate").get<std::string>() + ": " + platform_status +
                         ", TDX module: " + (module_status.empty() ? "?" : module_status) +
                         ", QE: " + (qe_status.empty() ? "?" : qe_status) + ")";
    if (!advisories.empty()) {
      detail += "; advisories:";
      for (const std::string& id : advisories) detail += " " + id;
    }
    if (!acceptable) detail += "; not an accepted status";
    out.add(quote_check::kTcbStatus, acceptable, detail);
  } catch (const std::exception& e) {
    const std::string why = dynamic_cast<const Error*>(&e) ? static_cast<const Error&>(e).message()
                                                           : std::string(e.what());
    out.add(quote_check::kTcbStatus, false, "collateral is malformed: " + why);
  }
  return std::move(out.verdict);
}

}  // namespace alem::confidential
