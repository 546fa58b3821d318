// Tests the `alem` command as a user meets it, by running the real binary (ALEM_BINARY):
// plain messages and exit codes (2 usage, 1 runtime, no source locations unless debug logging),
// --log-level and ALEM_LOG_LEVEL, `alem attest verify` on the real TDX quote (and on one with a
// flipped byte), and `alem bench generate --threads 1` really running on one thread.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "test_env.h"

extern char** environ;

namespace alem {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int status = -1;
  std::string out, err;
  int max_threads = 0;  // most entries seen in /proc/<pid>/task (after `marker`, when given)
};

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

std::string alem_binary() {
  return test::env_or("ALEM_BINARY", "build/alem");
}

// Runs alem with `args`; `env` sets (value) or removes (nullopt) variables of this environment.
// With `marker`, threads are counted only once stderr holds it.
RunResult run_alem(const std::vector<std::string>& args,
                   const std::map<std::string, std::optional<std::string>>& env = {},
                   const std::string& marker = "") {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) vars[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  vars.erase("ALEM_LOG_LEVEL");  // each test says what it wants
  for (const auto& [k, v] : env) {
    if (v) {
      vars[k] = *v;
    } else {
      vars.erase(k);
    }
  }
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : vars) env_strings.push_back(k + "=" + v);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_strings = {alem_binary()};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  const std::string base = ::testing::TempDir() + "/alem_cli_" + std::to_string(getpid());
  const std::string out_path = base + ".out", err_path = base + ".err";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  pid_t pid = 0;
  RunResult r;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    r.err = "cannot start " + argv_strings[0];
    return r;
  }
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  int raw = 0;
  bool counting = marker.empty();
  while (true) {
    const pid_t done = waitpid(pid, &raw, WNOHANG);
    if (done == pid) break;
    if (!counting) {
      counting = read_all(err_path).find(marker) != std::string::npos;
      if (!counting) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        continue;
      }
    }
    std::error_code ec;
    int n = 0;
    for (auto it = fs::directory_iterator(tasks, ec); !ec && it != fs::directory_iterator();
         it.increment(ec)) {
      ++n;
    }
    r.max_threads = std::max(r.max_threads, n);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  r.out = read_all(out_path);
  r.err = read_all(err_path);
  fs::remove(out_path);
  fs::remove(err_path);
  return r;
}

bool has_debug_line(const std::string& err) {
  return err.find(" debug [") != std::string::npos;
}

// ---- messages and exit codes ----------------------------------------------------------------

TEST(CliMessages, UnknownCommandIsNamedWithExitTwo) {
  const RunResult r = run_alem({"foo"});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "alem: unknown command 'foo'; see alem --help\n");
}

TEST(CliMessages, UnknownNestedCommandNamesItsParent) {
  const RunResult r = run_alem({"bench", "foo"});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "alem: unknown command 'bench foo'; see alem bench --help\n");
}

TEST(CliMessages, MissingCommandAndBadOptionsAreUsageErrors) {
  RunResult r = run_alem({});
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.err, "alem: a command is required; see alem --help\n");
  r = run_alem({"info", "--no-such-flag", "x.h5"});
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_EQ(r.err.rfind("alem: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find("see alem info --help"), std::string::npos) << r.err;
  r = run_alem({"attest", "verify"});  // its QUOTE argument is required
  EXPECT_EQ(r.status, 2) << r.err;
}

TEST(CliMessages, HelpAndVersionSucceed) {
  EXPECT_EQ(run_alem({"--help"}).status, 0);
  EXPECT_EQ(run_alem({"--version"}).status, 0);
  EXPECT_EQ(run_alem({"attest", "verify", "--help"}).status, 0);
}

TEST(CliMessages, RuntimeErrorIsPlainWithExitOne) {
  const RunResult r = run_alem({"info", "/nonexistent/model.h5"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.rfind("alem: error: ", 0), 0u) << r.err;
  EXPECT_EQ(r.err.find(".cc:"), std::string::npos) << r.err;  // no source location
  EXPECT_EQ(r.err.find('['), std::string::npos) << r.err;     // no [host rank file:line]
  EXPECT_FALSE(has_debug_line(r.err));
}

TEST(CliMessages, DebugLogCarriesTheSourceLocation) {
  const RunResult r = run_alem({"--log-level", "debug", "info", "/nonexistent/model.h5"});
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("command failed where="), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(".cc:"), std::string::npos) << r.err;
}

// ---- log level ------------------------------------------------------------------------------

TEST(CliLogLevel, EnvironmentDebugEmitsDebugLines) {
  const RunResult r = run_alem({"info", "/nonexistent/model.h5"}, {{"ALEM_LOG_LEVEL", "debug"}});
  EXPECT_TRUE(has_debug_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("alem command command=info"), std::string::npos) << r.err;
}

TEST(CliLogLevel, FlagWorksBeforeAndAfterTheCommandAndOverridesTheEnvironment) {
  EXPECT_TRUE(has_debug_line(run_alem({"info", "/nonexistent.h5", "--log-level=debug"}).err));
  EXPECT_TRUE(has_debug_line(run_alem({"--log-level", "trace", "info", "/nonexistent.h5"}).err));
  const RunResult quiet =
      run_alem({"--log-level", "error", "info", "/nonexistent.h5"}, {{"ALEM_LOG_LEVEL", "debug"}});
  EXPECT_FALSE(has_debug_line(quiet.err)) << quiet.err;
  EXPECT_FALSE(has_debug_line(run_alem({"info", "/nonexistent.h5"}).err));  // default: info
}

TEST(CliLogLevel, UnknownLevelIsAUsageError) {
  const RunResult r = run_alem({"--log-level", "loud", "info", "x.h5"});
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("'loud' is not one of trace, debug, info, warn, error"), std::string::npos)
      << r.err;
}

// ---- attest verify ----------------------------------------------------------------------------

std::string quote_path() {
  return test::env_or("ALEM_SHARED_TESTDATA", "../shared/testdata") + "/tdx-quote-v4.dat";
}

// Lower-case hex of bytes [offset, offset+size) of the file, read directly (not via alem).
std::string file_hex(const std::string& bytes, size_t offset, size_t size) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = offset; i < offset + size; ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

class AttestVerify : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(quote_path())) GTEST_SKIP() << "no test quote at " << quote_path();
    bytes_ = read_all(quote_path());
    ASSERT_EQ(bytes_.size(), 5010u);
  }
  std::string collateral() const { return test::data_dir() + "/tdx-collateral"; }
  std::string bytes_;
};

TEST_F(AttestVerify, RealQuoteWithCollateralVerifiesAndPrintsItsMeasurements) {
  // The committed collateral is valid 2026-01-03 .. 2026-02-02: judge it inside that window.
  const RunResult r = run_alem(
      {"attest", "verify", quote_path(), "--collateral", collateral(), "--at", "2026-01-15"});
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  // Offsets from ../shared/testdata/README.md: MRTD at 184 (48 bytes), REPORTDATA at 568 (64).
  const std::string mrtd = file_hex(bytes_, 184, 48);
  EXPECT_EQ(mrtd.substr(0, 16), "7357a10d2e2724df");
  EXPECT_NE(r.out.find("MRTD           " + mrtd + "\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("REPORTDATA     " + file_hex(bytes_, 568, 64) + "\n"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("RTMR0          " + file_hex(bytes_, 376, 48) + "\n"), std::string::npos);
  EXPECT_NE(r.out.find("TDATTRIBUTES   0000001000000000 (SEPT_VE_DISABLE)"), std::string::npos);
  EXPECT_NE(r.out.find("PASS quote_signature"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PASS qe_report_signature"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PASS tcb_status"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verdict: genuine Intel TDX quote, TCB status UpToDate"), std::string::npos)
      << r.out;
}

TEST_F(AttestVerify, JsonOutputListsEveryCheck) {
  const RunResult r = run_alem({"attest", "verify", quote_path(), "--collateral", collateral(),
                                "--at", "2026-01-15", "--json"});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_TRUE(j.at("ok").get<bool>());
  EXPECT_EQ(j.at("tcb_status"), "UpToDate");
  EXPECT_EQ(j.at("measurements").at("mrtd"), file_hex(bytes_, 184, 48));
  EXPECT_EQ(j.at("measurements").at("report_data"), file_hex(bytes_, 568, 64));
  EXPECT_EQ(j.at("measurements").at("mrconfigid"), std::string(96, '0'));
  EXPECT_EQ(j.at("image_hash").get<std::string>().size(), 64u);
  std::map<std::string, std::string> outcomes;
  for (const auto& c : j.at("checks")) outcomes[c.at("name")] = c.at("outcome");
  for (const char* name :
       {"quote_signature", "pck_chain", "qe_report_signature", "qe_report_binding",
        "collateral_signatures", "qe_identity", "tdx_module", "tcb_status"}) {
    EXPECT_EQ(outcomes[name], "pass") << name;
  }
}

TEST_F(AttestVerify, WithoutCollateralTheTcbStatusIsNotChecked) {
  const RunResult r = run_alem({"attest", "verify", quote_path(), "--json"});
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  for (const auto& c : j.at("checks")) {
    if (c.at("name") == "tcb_status") {
      EXPECT_EQ(c.at("outcome"), "not_checked");
    }
  }
}

TEST_F(AttestVerify, FlippedByteInTheSignedBodyFailsAndNamesTheCheck) {
  std::string tampered = bytes_;
  tampered[400] = static_cast<char>(tampered[400] ^ 0x01);  // inside RTMR0, signed by the AK
  const std::string path = ::testing::TempDir() + "/tampered-quote.dat";
  std::ofstream(path, std::ios::binary) << tampered;
  const RunResult r =
      run_alem({"attest", "verify", path, "--collateral", collateral(), "--at", "2026-01-15"});
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("FAIL quote_signature"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("verdict: NOT verified (failed: quote_signature)"), std::string::npos)
      << r.out;
  const RunResult j = run_alem({"attest", "verify", path, "--json"});
  EXPECT_NE(j.status, 0);
  EXPECT_EQ(nlohmann::json::parse(j.out).at("failed_checks"),
            nlohmann::json::array({"quote_signature"}));
  fs::remove(path);
}

TEST_F(AttestVerify, TruncatedQuoteIsARuntimeError) {
  const std::string path = ::testing::TempDir() + "/short-quote.dat";
  std::ofstream(path, std::ios::binary) << bytes_.substr(0, 100);
  const RunResult r = run_alem({"attest", "verify", path});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err.rfind("alem: error: ", 0), 0u) << r.err;
  fs::remove(path);
}

// ---- bench threads ----------------------------------------------------------------------------

TEST(CliBench, OneThreadRowRunsOnOneThread) {
  if (!fs::exists(test::model_path())) GTEST_SKIP() << "no model store " << test::model_path();
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one CPU: nothing to tell apart";
  // Without OMP_NUM_THREADS the backend would default to every core. Threads are counted from
  // the row's start (its debug line): loading the store may hash it on several threads.
  const std::string csv = ::testing::TempDir() + "/bench-row.csv";
  const RunResult r = run_alem(
      {"--log-level", "debug", "bench", "generate", "-m", test::model_path(), "--threads", "1",
       "--prompt-tokens", "16", "--decode-tokens", "4", "--repeats", "1", "--csv", csv},
      {{"OMP_NUM_THREADS", std::nullopt}}, "bench row threads=1");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.max_threads, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("\n1        "), std::string::npos) << r.out;  // the row's thread count

  // The CSV row: every column named in the header is a number, and the plain read of the
  // step's bytes (rd step) was measured and relates the decode rate to it.
  std::ifstream in(csv);
  std::string header, row;
  ASSERT_TRUE(std::getline(in, header) && std::getline(in, row)) << read_all(csv);
  std::map<std::string, std::string> cells;
  std::stringstream names(header), values(row.substr(row.rfind('"') + 2));
  std::string name, value;
  std::getline(names, name, ',');  // layout, quoted (it holds commas)
  while (std::getline(names, name, ',') && std::getline(values, value, ',')) cells[name] = value;
  ASSERT_TRUE(cells.count("step_read_gb_s") && cells.count("decode_step_read_fraction")) << header;
  const double step_read = std::stod(cells["step_read_gb_s"]);
  const double decode = std::stod(cells["decode_tok_s"]);
  const double fraction = std::stod(cells["decode_step_read_fraction"]);
  EXPECT_GT(step_read, 0.1) << row;
  EXPECT_GT(decode, 0) << row;
  // fraction = decode x bytes per step / step read: the same bytes per step as bw frac uses.
  const double bytes_per_step =
      std::stod(cells["decode_bw_fraction"]) * std::stod(cells["mem_bw_gb_s"]) / decode;
  EXPECT_NEAR(fraction, decode * bytes_per_step / step_read, 1e-3 * fraction + 1e-6) << row;
  fs::remove(csv);
}

// `alem bench batch` splits rank 0's run into the kinds of kernel and what is outside them: the
// shares are fractions of the run that add up to one, and the matmuls take some of it.
TEST(CliBench, BatchSplitsTheRunIntoKernelKinds) {
  if (!fs::exists(test::model_path())) GTEST_SKIP() << "no model store " << test::model_path();
  const std::string json = ::testing::TempDir() + "/bench-batch.json";
  const RunResult r =
      run_alem({"bench", "batch", "-m", test::model_path(), "--batch", "4", "--concurrency", "4",
                "--requests", "4", "--prompt-tokens", "8", "--max-tokens", "4", "-o", json},
               {{"OMP_NUM_THREADS", "1"}}, "bench batch");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("# rank 0's run: matmul "), std::string::npos) << r.out;
  const nlohmann::json doc = nlohmann::json::parse(read_all(json));
  const nlohmann::json& shares = doc.at("rank0_time_shares");
  double sum = 0;
  for (const auto& [kind, share] : shares.items()) {
    EXPECT_GE(share.get<double>(), 0.0) << kind;
    sum += share.get<double>();
  }
  EXPECT_NEAR(sum, 1.0, 1e-6) << shares.dump();
  EXPECT_GT(shares.at("matmul").get<double>(), 0.0) << shares.dump();
  EXPECT_GT(shares.at("attention").get<double>(), 0.0) << shares.dump();
  fs::remove(json);
}

}  // namespace
}  // namespace alem
