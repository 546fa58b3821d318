// Implements the attestation providers: the configfs-tsm client for TDX and the Ed25519
// software signer for sandbox/off. The configfs-tsm protocol (Documentation/ABI/testing/
// configfs-tsm in the kernel): mkdir an entry under the report folder, write up to 64 bytes
// to `inblob`, read `outblob` (the kernel asks the TDX module and the quoting service for a
// quote), then rmdir the entry. `generation` counts writes to the entry, so a reader can tell
// whether someone else wrote between its write and its read.
#include "confidential/attestation.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/error.h"

namespace alem::confidential {
namespace {

constexpr std::string_view kSoftwareEvidenceLabel = "alem-software-attestation-v1";
constexpr size_t kMaxOutblobSize = 1 << 20;  // quotes are ~5-10 KB; refuse anything absurd

std::string errno_text(int error) {
  return std::strerror(error);
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }
  // Closes now and reports the error (configfs may report a failed write only at close).
  int close_checked() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

// Reads a whole attribute file. Returns false when it does not exist; throws on other errors.
bool read_attribute(const std::string& path, std::vector<uint8_t>& out, size_t limit) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return false;
    ALEM_FAIL("configfs-tsm: cannot open " + path + ": " + errno_text(errno));
  }
  out.clear();
  std::array<uint8_t, 4096> chunk{};
  for (;;) {
    ssize_t got = ::read(fd.get(), chunk.data(), chunk.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      ALEM_FAIL("configfs-tsm: cannot read " + path + ": " + errno_text(errno));
    }
    if (got == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + got);
    ALEM_CHECK(out.size() <= limit,
               "configfs-tsm: " + path + " is larger than " + std::to_string(limit) + " bytes");
  }
  return true;
}

std::string read_text_attribute(const std::string& path, bool& present) {
  std::vector<uint8_t> bytes;
  present = read_attribute(path, bytes, 4096);
  std::string text(bytes.begin(), bytes.end());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

uint64_t read_generation(const std::string& entry) {
  bool present = false;
  const std::string path = entry + "/generation";
  const std::string text = read_text_attribute(path, present);
  ALEM_CHECK(present, "configfs-tsm: " + path +
                          " does not exist; is this folder a configfs-tsm report entry?");
  ALEM_CHECK(!text.empty() && text.find_first_not_of("0123456789") == std::string::npos &&
                 text.size() <= 19,
             "configfs-tsm: " + path + " holds \"" + text + "\", not a generation number");
  return std::stoull(text);
}

void write_inblob(const std::string& entry, const ReportData& report_data) {
  const std::string path = entry + "/inblob";
  FileDescriptor fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ALEM_CHECK(fd.get() >= 0, "configfs-tsm: cannot open " + path + ": " + errno_text(errno));
  size_t written = 0;
  while (written < report_data.size()) {
    ssize_t rc = ::write(fd.get(), report_data.data() + written, report_data.size() - written);
    if (rc < 0 && errno == EINTR) continue;
    ALEM_CHECK(rc > 0, "configfs-tsm: cannot write " + path + ": " + errno_text(errno));
    written += static_cast<size_t>(rc);
  }
  int close_error = fd.close_checked();
  ALEM_CHECK(close_error == 0,
             "configfs-tsm: writing " + path + " failed at close: " + errno_text(close_error));
}

// Removes the configfs entry on every path out of attest(). A failed rmdir is not an error
// for the caller (the quote is already in hand); the kernel frees the entry's memory when it
// is removed, so a leaked entry costs a little kernel memory, nothing more.
class TsmEntry {
 public:
  explicit TsmEntry(std::string path) : path_(std::move(path)) {}
  ~TsmEntry() { ::rmdir(path_.c_str()); }
  TsmEntry(const TsmEntry&) = delete;
  TsmEntry& operator=(const TsmEntry&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string fresh_entry_name() {
  static std::atomic<uint64_t> counter{0};
  std::random_device random;
  char name[64];
  std::snprintf(name, sizeof(name), "alem-%d-%llu-%08x", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)),
                static_cast<unsigned>(random()));
  return name;
}

class TdxConfigfsProvider final : public AttestationProvider {
 public:
  explicit TdxConfigfsProvider(AttestationOptions options) : options_(std::move(options)) {}

  std::string mode() const override { return "tdx"; }

  Evidence attest(const ReportData& report_data) override {
    const std::string& root = options_.tsm_report_root;
    struct stat root_stat {};
    if (::stat(root.c_str(), &root_stat) != 0 || !S_ISDIR(root_stat.st_mode)) {
      ALEM_FAIL("configfs-tsm report folder " + root +
                " not found: attestation mode \"tdx\" needs a TDX guest running Linux >= 6.7 "
                "with configfs mounted at /sys/kernel/config");
    }
    const std::string path = root + "/" + fresh_entry_name();
    if (::mkdir(path.c_str(), 0700) != 0) {
      ALEM_FAIL("configfs-tsm: cannot create report entry " + path + ": " + errno_text(errno));
    }
    TsmEntry entry(path);
    if (options_.on_tsm_entry_created) options_.on_tsm_entry_created(path);

    bool provider_present = false;
    const std::string provider = read_text_attribute(path + "/provider", provider_present);
    if (provider_present && provider != "tdx_guest") {
      ALEM_FAIL("configfs-tsm provider is \"" + provider +
                "\", not \"tdx_guest\": this machine is not a TDX guest");
    }

    const uint64_t generation_before = read_generation(path);
    write_inblob(path, report_data);
    std::vector<uint8_t> outblob;
    ALEM_CHECK(read_attribute(path + "/outblob", outblob, kMaxOutblobSize),
               "configfs-tsm: " + path + "/outblob does not exist");
    const uint64_t generation_after = read_generation(path);
    // Exactly one write (ours) may lie between the two reads. More means another writer
    // changed inblob, and the quote we read may bind their data instead of ours.
    if (generation_after != generation_before + 1) {
      ALEM_FAIL("configfs-tsm: entry generation went from " + std::to_string(generation_before) +
                " to " + std::to_string(generation_after) + " around our single inblob write" +
                (generation_after > generation_before + 1
                     ? ": another writer raced us, refusing the quote"
                     : ": our write was not applied"));
    }
    ALEM_CHECK(!outblob.empty(), "configfs-tsm: " + path + "/outblob is empty");

    TdxQuote quote;
    try {
      quote = parse_tdx_quote(outblob);
    } catch (const Error& e) {
      ALEM_FAIL("configfs-tsm outblob is not a TDX quote: " + e.message());
    }
    ALEM_CHECK(quote.body.report_data == report_data,
               "configfs-tsm returned a quote whose REPORTDATA " +
                   to_lower_hex(quote.body.report_data) + " is not the requested " +
                   to_lower_hex(report_data));

    Evidence evidence;
    evidence.mode = mode();
    evidence.format = std::string(kEvidenceFormatTdxQuote);
    evidence.hardware_backed = true;
    evidence.report_data = report_data;
    evidence.quote = std::move(outblob);
    evidence.tsm_provider = provider;
    evidence.statement =
        "Intel TDX quote from configfs-tsm: binds REPORTDATA to this TD's measurements; "
        "verify it with verify_tdx_quote and check its image hash against the allowed list";
    return evidence;
  }

 private:
  AttestationOptions options_;
};

// The per-process Ed25519 key: made once, kept in guarded memory, never written anywhere.
struct SoftwareSigningKey {
  std::array<uint8_t, crypto_sign_PUBLICKEYBYTES> public_key{};
  unsigned char* secret_key = nullptr;  // sodium_malloc'd, read-only after creation
};

const SoftwareSigningKey& process_signing_key() {
  static const SoftwareSigningKey key = [] {
    ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
    SoftwareSigningKey made;
    made.secret_key = static_cast<unsigned char*>(sodium_malloc(crypto_sign_SECRETKEYBYTES));
    ALEM_CHECK(made.secret_key, "libsodium: cannot allocate guarded memory for a signing key");
    ALEM_CHECK(crypto_sign_keypair(made.public_key.data(), made.secret_key) == 0,
               "libsodium: cannot create an Ed25519 key pair");
    sodium_mprotect_readonly(made.secret_key);
    return made;
  }();
  return key;
}

class SoftwareProvider final : public AttestationProvider {
 public:
  explicit SoftwareProvider(std::string mode) : mode_(std::move(mode)) {}

  std::string mode() const override { return mode_; }

  Evidence attest(const ReportData& report_data) override {
    const SoftwareSigningKey& key = process_signing_key();
    const std::vector<uint8_t> message = software_evidence_message(mode_, report_data);
    Evidence evidence;
    evidence.mode = mode_;
    evidence.format = std::string(kEvidenceFormatSoftwareEd25519);
    evidence.hardware_backed = false;
    evidence.report_data = report_data;
    evidence.public_key = key.public_key;
    ALEM_CHECK(crypto_sign_detached(evidence.signature.data(), nullptr, message.data(),
                                    message.size(), key.secret_key) == 0,
               "libsodium: Ed25519 signing failed");
    evidence.statement =
        mode_ == "off"
            ? "NOT hardware backed: confidential computing is off. A per-process software key "
              "signed the report data; prompts are not protected from this cluster's operators."
            : "NOT hardware backed: sandbox mode. A per-process software key signed the report "
              "data; this proves nothing about the machine or who can read its memory.";
    return evidence;
  }

 private:
  std::string mode_;
};

}  // namespace

std::vector<uint8_t> software_evidence_message(std::string_view mode,
                                               const ReportData& report_data) {
  std::vector<uint8_t> message(kSoftwareEvidenceLabel.begin(), kSoftwareEvidenceLabel.end());
  message.push_back(0);
  message.insert(message.end(), mode.begin(), mode.end());
  message.push_back(0);
  message.insert(message.end(), report_data.begin(), report_data.end());
  return message;
}

bool verify_software_evidence(const Evidence& evidence) {
  if (evidence.format != kEvidenceFormatSoftwareEd25519 || evidence.hardware_backed) return false;
  ALEM_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  const std::vector<uint8_t> message =
      software_evidence_message(evidence.mode, evidence.report_data);
  return crypto_sign_verify_detached(evidence.signature.data(), message.data(), message.size(),
                                     evidence.public_key.data()) == 0;
}

std::unique_ptr<AttestationProvider> make_attestation_provider(std::string_view mode,
                                                               const AttestationOptions& options) {
  if (mode == "tdx") return std::make_unique<TdxConfigfsProvider>(options);
  if (mode == "sandbox" || mode == "off") {
    return std::make_unique<SoftwareProvider>(std::string(mode));
  }
  ALEM_FAIL("unknown attestation mode \"" + std::string(mode) +
            "\" (expected \"tdx\", \"sandbox\" or \"off\")");
}

}  // namespace alem::confidential
