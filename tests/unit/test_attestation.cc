// Tests the attestation providers. Software evidence ("sandbox", "off") is checked end to end
// with libsodium. The "tdx" provider runs against a fake configfs-tsm tree in a temp folder:
// a FakeTsmKernel stands in for the kernel, populating each entry the provider creates and
// answering its outblob read with the real test quote.
//
// Limits of the fake, on purpose and in plain words: it emulates the configfs-tsm file protocol
// only (entry folder, inblob, outblob, generation, provider). There is no TDX module and no
// quoting service, so the quote served is the fixed test quote and the tests must ask for its
// REPORTDATA; the generation counter is whatever the fake writes; outblob is a FIFO, so the
// fake can bump generation exactly between the provider's inblob write and its outblob read;
// and, unlike configfs, a plain folder holding files cannot be removed with rmdir, so entries
// stay behind in the temp folder (the provider ignores a failed rmdir by design). Real
// configfs behaviour is exercised only on a TDX guest (`alem attest` there).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include "confidential/attestation.h"
#include "confidential/quote_verifier.h"
#include "confidential/tdx_quote.h"
#include "core/error.h"
#include "tests/test_env.h"

namespace alem::confidential {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> load_test_quote() {
  std::ifstream in(test::data_dir() + "/tdx-quote-v4.dat", std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_file(const fs::path& path, std::string_view text) {
  const fs::path temp = path.string() + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary);
    out << text;
  }
  fs::rename(temp, path);  // readers never see a half-written value
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& e) {
    return e.message();
  }
  return "";
}

// Plays the kernel's part for each entry the provider creates under `root`.
class FakeTsmKernel {
 public:
  struct Behaviour {
    std::vector<uint8_t> outblob;
    uint64_t generation_bump = 1;  // 1 = only the provider wrote; 2 = a racing writer too
    std::string provider = "tdx_guest";
  };

  explicit FakeTsmKernel(Behaviour behaviour) : behaviour_(std::move(behaviour)) {
    root_ = fs::temp_directory_path() /
            ("alem-fake-tsm-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(root_);
  }
  ~FakeTsmKernel() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  AttestationOptions options() {
    AttestationOptions options;
    options.tsm_report_root = root_.string();
    options.on_tsm_entry_created = [this](const std::string& entry) { populate(entry); };
    return options;
  }

  std::vector<std::string> entries() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_;
  }
  std::vector<uint8_t> inblob_received() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return inblob_;
  }

 private:
  void populate(const std::string& entry) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      entries_.push_back(entry);
    }
    write_file(entry + "/generation", "0\n");
    if (!behaviour_.provider.empty()) write_file(entry + "/provider", behaviour_.provider + "\n");
    write_file(entry + "/inblob", "");
    ASSERT_EQ(::mkfifo((entry + "/outblob").c_str(), 0600), 0);
    threads_.emplace_back([this, entry] { serve_outblob(entry); });
  }

  // Waits for the provider to open outblob (it has then written and closed inblob), bumps
  // generation as the kernel would for the inblob write, and streams the quote.
  void serve_outblob(const std::string& entry) {
    const std::string fifo = entry + "/outblob";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    int fd = -1;
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (fd >= 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // ENXIO: no reader yet
    }
    if (fd < 0) return;
    ::fcntl(fd, F_SETFL, 0);
    {
      std::ifstream in(entry + "/inblob", std::ios::binary);
      std::lock_guard<std::mutex> lock(mutex_);
      inblob_.assign(std::istreambuf_iterator<char>(in), {});
    }
    write_file(entry + "/generation", std::to_string(behaviour_.generation_bump) + "\n");
    size_t written = 0;
    while (written < behaviour_.outblob.size()) {
      ssize_t rc =
          ::write(fd, behaviour_.outblob.data() + written, behaviour_.outblob.size() - written);
      if (rc <= 0) break;
      written += static_cast<size_t>(rc);
    }
    ::close(fd);
  }

  static inline std::atomic<int> counter_{0};
  Behaviour behaviour_;
  fs::path root_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
  mutable std::mutex mutex_;
  std::vector<std::string> entries_;
  std::vector<uint8_t> inblob_;
};

ReportData test_quote_report_data() {
  return parse_tdx_quote(load_test_quote()).body.report_data;
}

TEST(SoftwareAttestation, SandboxAndOffSignTheReportDataAndSayTheyAreNotHardware) {
  for (std::string mode : {"sandbox", "off"}) {
    std::unique_ptr<AttestationProvider> provider = make_attestation_provider(mode);
    EXPECT_EQ(provider->mode(), mode);
    ReportData report_data{};
    for (size_t i = 0; i < report_data.size(); ++i) report_data[i] = static_cast<uint8_t>(i * 7);
    const Evidence evidence = provider->attest(report_data);
    EXPECT_EQ(evidence.mode, mode);
    EXPECT_EQ(evidence.format, kEvidenceFormatSoftwareEd25519);
    EXPECT_FALSE(evidence.hardware_backed);
    EXPECT_EQ(evidence.report_data, report_data);
    EXPECT_NE(evidence.statement.find("NOT hardware backed"), std::string::npos);
    EXPECT_TRUE(evidence.quote.empty());
    EXPECT_TRUE(verify_software_evidence(evidence));

    // Checked again with libsodium directly, over the documented message.
    std::vector<uint8_t> message = {'a', 'l', 'e', 'm', '-', 's', 'o', 'f', 't', 'w',
                                    'a', 'r', 'e', '-', 'a', 't', 't', 'e', 's', 't',
                                    'a', 't', 'i', 'o', 'n', '-', 'v', '1', 0};
    message.insert(message.end(), mode.begin(), mode.end());
    message.push_back(0);
    message.insert(message.end(), report_data.begin(), report_data.end());
    EXPECT_EQ(message, software_evidence_message(mode, report_data));
    ASSERT_GE(sodium_init(), 0);
    EXPECT_EQ(crypto_sign_verify_detached(evidence.signature.data(), message.data(), message.size(),
                                          evidence.public_key.data()),
              0);
  }
}

TEST(SoftwareAttestation, TamperedEvidenceDoesNotVerify) {
  const Evidence evidence = make_attestation_provider("sandbox")->attest(ReportData{});
  Evidence changed = evidence;
  changed.report_data[5] ^= 1;
  EXPECT_FALSE(verify_software_evidence(changed));
  changed = evidence;
  changed.mode = "off";  // the mode is signed: sandbox evidence cannot pass as another mode
  EXPECT_FALSE(verify_software_evidence(changed));
  changed = evidence;
  changed.signature[0] ^= 1;
  EXPECT_FALSE(verify_software_evidence(changed));
  changed = evidence;
  changed.hardware_backed = true;
  EXPECT_FALSE(verify_software_evidence(changed));
}

TEST(SoftwareAttestation, OneKeyPerProcess) {
  const Evidence a = make_attestation_provider("sandbox")->attest(ReportData{});
  const Evidence b = make_attestation_provider("off")->attest(ReportData{});
  EXPECT_EQ(a.public_key, b.public_key);
  EXPECT_NE(a.signature, b.signature);
}

TEST(AttestationProviderFactory, UnknownModeIsRefused) {
  EXPECT_NE(error_of([] { make_attestation_provider("sev"); }).find("unknown attestation mode"),
            std::string::npos);
}

TEST(TdxConfigfsAttestation, ReadsTheQuoteForItsReportData) {
  const std::vector<uint8_t> quote_bytes = load_test_quote();
  FakeTsmKernel kernel({quote_bytes});
  std::unique_ptr<AttestationProvider> provider =
      make_attestation_provider("tdx", kernel.options());
  EXPECT_EQ(provider->mode(), "tdx");
  const ReportData report_data = test_quote_report_data();
  const Evidence evidence = provider->attest(report_data);

  EXPECT_EQ(evidence.format, kEvidenceFormatTdxQuote);
  EXPECT_TRUE(evidence.hardware_backed);
  EXPECT_EQ(evidence.tsm_provider, "tdx_guest");
  EXPECT_EQ(evidence.quote, quote_bytes);
  EXPECT_EQ(kernel.inblob_received(), std::vector<uint8_t>(report_data.begin(), report_data.end()));
  ASSERT_EQ(kernel.entries().size(), 1u);
  EXPECT_EQ(fs::path(kernel.entries()[0]).filename().string().rfind("alem-", 0), 0u);

  VerifyOptions options;
  options.expected_report_data = report_data;
  const QuoteVerification verification = verify_tdx_quote(parse_tdx_quote(evidence.quote), options);
  EXPECT_TRUE(verification.ok()) << verification.report();
}

TEST(TdxConfigfsAttestation, EachCallUsesAFreshEntry) {
  FakeTsmKernel kernel({load_test_quote()});
  std::unique_ptr<AttestationProvider> provider =
      make_attestation_provider("tdx", kernel.options());
  provider->attest(test_quote_report_data());
  provider->attest(test_quote_report_data());
  const std::vector<std::string> entries = kernel.entries();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_NE(entries[0], entries[1]);
}

TEST(TdxConfigfsAttestation, ARacingWriterIsDetected) {
  FakeTsmKernel kernel({load_test_quote(), /*generation_bump=*/2});
  const std::string error = error_of([&] {
    make_attestation_provider("tdx", kernel.options())->attest(test_quote_report_data());
  });
  EXPECT_NE(error.find("generation went from 0 to 2"), std::string::npos) << error;
  EXPECT_NE(error.find("another writer raced us"), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AWriteThatDidNotLandIsDetected) {
  FakeTsmKernel kernel({load_test_quote(), /*generation_bump=*/0});
  const std::string error = error_of([&] {
    make_attestation_provider("tdx", kernel.options())->attest(test_quote_report_data());
  });
  EXPECT_NE(error.find("our write was not applied"), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AQuoteForOtherReportDataIsRefused) {
  FakeTsmKernel kernel({load_test_quote()});
  ReportData other = test_quote_report_data();
  other[0] ^= 0xff;
  const std::string error =
      error_of([&] { make_attestation_provider("tdx", kernel.options())->attest(other); });
  EXPECT_NE(error.find("is not the requested"), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AnOutblobThatIsNotAQuoteIsRefused) {
  FakeTsmKernel kernel({std::vector<uint8_t>(100, 0x42)});
  const std::string error = error_of([&] {
    make_attestation_provider("tdx", kernel.options())->attest(test_quote_report_data());
  });
  EXPECT_NE(error.find("outblob is not a TDX quote"), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AnotherTeeProviderIsRefused) {
  FakeTsmKernel kernel({load_test_quote(), 1, "sev_guest"});
  const std::string error = error_of([&] {
    make_attestation_provider("tdx", kernel.options())->attest(test_quote_report_data());
  });
  EXPECT_NE(error.find("\"sev_guest\", not \"tdx_guest\""), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AMissingProviderAttributeIsAccepted) {
  FakeTsmKernel kernel({load_test_quote(), 1, ""});
  const Evidence evidence =
      make_attestation_provider("tdx", kernel.options())->attest(test_quote_report_data());
  EXPECT_EQ(evidence.tsm_provider, "");
  EXPECT_TRUE(evidence.hardware_backed);
}

TEST(TdxConfigfsAttestation, NoConfigfsMeansAClearError) {
  AttestationOptions options;
  options.tsm_report_root = "/nonexistent/alem/tsm/report";
  const std::string error =
      error_of([&] { make_attestation_provider("tdx", options)->attest(ReportData{}); });
  EXPECT_NE(error.find("not found"), std::string::npos) << error;
  EXPECT_NE(error.find("TDX guest"), std::string::npos) << error;
}

TEST(TdxConfigfsAttestation, AFolderThatIsNotConfigfsIsRefused) {
  // A plain folder: mkdir works but the entry has no attributes (no hook stands in for them).
  const fs::path root = fs::temp_directory_path() / ("alem-plain-" + std::to_string(::getpid()));
  fs::create_directories(root);
  AttestationOptions options;
  options.tsm_report_root = root.string();
  const std::string error =
      error_of([&] { make_attestation_provider("tdx", options)->attest(ReportData{}); });
  EXPECT_NE(error.find("generation does not exist"), std::string::npos) << error;
  // The entry was empty, so the provider's rmdir cleaned it up.
  EXPECT_TRUE(fs::is_empty(root));
  fs::remove_all(root);
}

}  // namespace
}  // namespace alem::confidential
