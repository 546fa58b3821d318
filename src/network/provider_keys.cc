// The provider key file (format in provider_keys.h): load, create atomically with mode 0600,
// refuse anything short, corrupt or readable by others.
#include "network/provider_keys.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace alem::network {
namespace {

constexpr std::string_view kMagic = "alem-pk1";
constexpr size_t kBodyBytes = 8 + 32 + 32;
constexpr size_t kFileBytes = kBodyBytes + 32;

void ensure_sodium() {
  static const bool ready = sodium_init() >= 0;
  ALEM_CHECK(ready, "libsodium failed to initialise");
}

std::string errno_text() {
  return std::strerror(errno);
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

ProviderKeys::ProviderKeys(const uint8_t* seed, const uint8_t* x25519_secret)
    : sealing_(X25519KeyPair::from_secret(x25519_secret, kX25519KeyBytes)) {
  std::memcpy(identity_seed_.data(), seed, identity_seed_.size());
  ALEM_CHECK(crypto_sign_seed_keypair(identity_public_.data(), identity_secret_.data(),
                                      identity_seed_.data()) == 0,
             "libsodium: cannot derive the Ed25519 identity key");
}

ProviderKeys::ProviderKeys(const ProviderKeys& other)
    : identity_seed_(other.identity_seed_),
      identity_secret_(other.identity_secret_),
      identity_public_(other.identity_public_),
      sealing_(other.sealing_) {}

ProviderKeys& ProviderKeys::operator=(const ProviderKeys& other) {
  identity_seed_ = other.identity_seed_;
  identity_secret_ = other.identity_secret_;
  identity_public_ = other.identity_public_;
  sealing_ = other.sealing_;
  return *this;
}

ProviderKeys::~ProviderKeys() {
  sodium_memzero(identity_seed_.data(), identity_seed_.size());
  sodium_memzero(identity_secret_.data(), identity_secret_.size());
}

ProviderKeys ProviderKeys::generate() {
  ensure_sodium();
  uint8_t seed[32];
  uint8_t x_secret[32];
  randombytes_buf(seed, sizeof seed);
  randombytes_buf(x_secret, sizeof x_secret);
  ProviderKeys keys(seed, x_secret);
  sodium_memzero(seed, sizeof seed);
  sodium_memzero(x_secret, sizeof x_secret);
  return keys;
}

ProviderKeys ProviderKeys::load(const std::string& path) {
  ensure_sodium();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ALEM_CHECK(fd >= 0, "cannot open the provider key file " + path + ": " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    ALEM_FAIL("cannot stat the provider key file " + path + ": " + why);
  }
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    ALEM_FAIL("the provider key file " + path +
              " is readable by group or others; it holds secret keys: chmod 600 it");
  }
  std::vector<uint8_t> bytes(kFileBytes + 1);
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + got, bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  auto wipe = [&bytes] { sodium_memzero(bytes.data(), bytes.size()); };
  if (got != kFileBytes) {
    wipe();
    ALEM_FAIL("the provider key file " + path + " is " + std::to_string(got) + " bytes, expected " +
              std::to_string(kFileBytes) + " (truncated or not a key file)");
  }
  if (std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0) {
    wipe();
    ALEM_FAIL("the provider key file " + path + " does not start with \"alem-pk1\"");
  }
  uint8_t sum[32];
  crypto_generichash(sum, sizeof sum, bytes.data(), kBodyBytes, nullptr, 0);
  if (sodium_memcmp(sum, bytes.data() + kBodyBytes, sizeof sum) != 0) {
    wipe();
    ALEM_FAIL("the provider key file " + path + " is corrupt (checksum mismatch)");
  }
  ProviderKeys keys(bytes.data() + 8, bytes.data() + 40);
  wipe();
  return keys;
}

void ProviderKeys::save_new(const std::string& path) const {
  std::vector<uint8_t> bytes(kFileBytes);
  std::memcpy(bytes.data(), kMagic.data(), kMagic.size());
  std::memcpy(bytes.data() + 8, identity_seed_.data(), 32);
  std::memcpy(bytes.data() + 40, sealing_.secret_key().data(), 32);
  crypto_generichash(bytes.data() + kBodyBytes, 32, bytes.data(), kBodyBytes, nullptr, 0);
  auto wipe = [&bytes] { sodium_memzero(bytes.data(), bytes.size()); };

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    wipe();
    ALEM_FAIL("cannot create the provider key file " + tmp + ": " + errno_text());
  }
  size_t put = 0;
  bool ok = true;
  while (put < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + put, bytes.size() - put);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = false;
      break;
    }
    put += static_cast<size_t>(n);
  }
  wipe();
  ok = ok && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    ALEM_FAIL("cannot write the provider key file " + tmp + ": " + why);
  }
  // link() refuses to replace an existing file, so two starters never overwrite each other.
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    ALEM_FAIL("cannot create the provider key file " + path + ": " + why);
  }
  ::unlink(tmp.c_str());
  fsync_dir(parent_dir(path));
}

ProviderKeys ProviderKeys::load_or_create(const std::string& path, bool* created) {
  ensure_sodium();
  ALEM_CHECK(!path.empty(), "the provider key file path is empty");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (created) *created = false;
    return load(path);
  }
  ALEM_CHECK(errno == ENOENT, "cannot stat the provider key file " + path + ": " + errno_text());
  ProviderKeys keys = generate();
  try {
    keys.save_new(path);
  } catch (const Error&) {
    // Another process may have created it in between: use theirs when it is there.
    if (::stat(path.c_str(), &st) == 0) {
      if (created) *created = false;
      return load(path);
    }
    throw;
  }
  if (created) *created = true;
  return keys;
}

Ed25519Signature ProviderKeys::sign(std::string_view message) const {
  Ed25519Signature signature{};
  ALEM_CHECK(crypto_sign_detached(signature.data(), nullptr,
                                  reinterpret_cast<const uint8_t*>(message.data()), message.size(),
                                  identity_secret_.data()) == 0,
             "libsodium: Ed25519 signing failed");
  return signature;
}

bool verify_identity_signature(const Ed25519PublicKey& public_key, std::string_view message,
                               const Ed25519Signature& signature) {
  ensure_sodium();
  return crypto_sign_verify_detached(signature.data(),
                                     reinterpret_cast<const uint8_t*>(message.data()),
                                     message.size(), public_key.data()) == 0;
}

}  // namespace alem::network
