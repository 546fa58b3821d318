// Tests that the JSON alem reads from outside in the confidential and command-line parts (CVM
// specs, Intel collateral, a gateway's /v1/status) goes through core/json_input.h: nesting past
// kMaxJsonDepth is refused with a message that says so and never quotes the input.
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "confidential/cvm_launch.h"
#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "test_env.h"

namespace alem {
namespace {

std::string nested_arrays(int depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

TEST(JsonDepth, CvmNodeSpecRefusesDeepNesting) {
  const std::string text = "{\"image\": " + nested_arrays(5000) + "}";
  try {
    confidential::parse_cvm_node_spec(text);
    FAIL() << "a 5000-deep spec was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("nesting deeper than"), std::string::npos) << e.message();
  }
}

TEST(JsonDepth, CollateralRefusesDeepNesting) {
  const std::string quote_file =
      test::env_or("ALEM_SHARED_TESTDATA", "../shared/testdata") + "/tdx-quote-v4.dat";
  if (!std::filesystem::exists(quote_file)) GTEST_SKIP() << "no test quote";
  const std::string bytes = read_all(quote_file);
  const confidential::TdxQuote quote =
      confidential::parse_tdx_quote({reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
  const std::string dir = test::data_dir() + "/tdx-collateral/";
  confidential::TdxCollateral collateral;
  collateral.tcb_info_json =
      "{\"tcbInfo\":" + nested_arrays(3000) + ",\"signature\":\"" + std::string(128, '0') + "\"}";
  collateral.qe_identity_json = read_all(dir + "qe-identity-td.json");
  collateral.issuer_chain_pem = read_all(dir + "tcb-signing-chain.pem");
  confidential::VerifyOptions options;
  options.collateral = collateral;
  const confidential::QuoteVerification v = confidential::verify_tdx_quote(quote, options);
  EXPECT_FALSE(v.ok());
  EXPECT_NE(v.report().find("nesting deeper than"), std::string::npos) << v.report();
}

TEST(JsonDepth, StatusRefusesADeeplyNestedGatewayAnswer) {
  httplib::Server server;
  server.Get("/v1/status", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(nested_arrays(100000), "application/json");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread t([&] { server.listen_after_bind(); });
  const std::string cmd = test::env_or("ALEM_BINARY", "build/alem") +
                          " status --url http://127.0.0.1:" + std::to_string(port) + " 2>&1";
  std::string output;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output.append(buf, n);
  const int raw = pclose(p);
  server.stop();
  t.join();
  EXPECT_EQ(WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, 1) << output;
  EXPECT_NE(output.find("nesting deeper than"), std::string::npos) << output;
  EXPECT_LT(output.size(), 1000u);  // the body is not echoed
}

}  // namespace
}  // namespace alem
