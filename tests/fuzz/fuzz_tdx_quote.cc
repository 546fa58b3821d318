// Fuzzes TDX quote parsing and offline verification (src/confidential/tdx_quote, quote_verifier,
// tdx_collateral): quotes arrive from other ranks and providers, collateral from Intel's PCS or
// a cache. The first byte picks what the rest is: 0 a quote (parsed, then verified without
// collateral), 1 the TCB info JSON and 2 the QE identity JSON (verified with the real quote of
// tests/data and the rest of its collateral). Verification must report findings, never crash.
#include <chrono>
#include <exception>
#include <optional>

#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "fuzz_util.h"

namespace {

using namespace alem::confidential;

VerifyOptions options_at_collateral_time() {
  VerifyOptions options;
  options.at_time = std::chrono::system_clock::from_time_t(1768435200);  // 2026-01-15
  return options;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  const std::span<const uint8_t> rest(data + 1, size - 1);
  try {
    if (mode == 0) {
      const TdxQuote quote = parse_tdx_quote(rest);
      (void)verify_tdx_quote(quote, options_at_collateral_time()).report();
      return 0;
    }
    static const std::string real_quote = alem::fuzz::read_data_file("tdx-quote-v4.dat");
    static const TdxQuote quote =
        parse_tdx_quote({reinterpret_cast<const uint8_t*>(real_quote.data()), real_quote.size()});
    static const TdxCollateral real_collateral{
        alem::fuzz::read_data_file("tdx-collateral/tcb-info-90c06f000000.json"),
        alem::fuzz::read_data_file("tdx-collateral/qe-identity-td.json"),
        alem::fuzz::read_data_file("tdx-collateral/tcb-signing-chain.pem")};
    TdxCollateral collateral = real_collateral;
    std::string text(reinterpret_cast<const char*>(rest.data()), rest.size());
    (mode == 1 ? collateral.tcb_info_json : collateral.qe_identity_json) = std::move(text);
    VerifyOptions options = options_at_collateral_time();
    options.collateral = std::move(collateral);
    (void)verify_tdx_quote(quote, options).report();
  } catch (const alem::Error& e) {
    alem::fuzz::note_error("tdx_quote", e);
  } catch (const std::exception& e) {
    alem::fuzz::unexpected("tdx_quote", e.what());
  }
  return 0;
}
