// Register signing and small protocol helpers shared by the provider and the network simulator.
#include "network/protocol.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cstring>

#include "core/error.h"

namespace alem::network {

std::string register_signing_bytes(const v1::Register& message) {
  v1::Register copy = message;
  copy.clear_identity_signature();
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    ALEM_CHECK(copy.SerializeToCodedStream(&coded), "cannot serialize a Register message");
  }
  return out;
}

void sign_register(const ProviderKeys& keys, v1::Register& message) {
  const auto& pub = keys.identity_public_key();
  message.set_identity_public_key(pub.data(), pub.size());
  message.clear_identity_signature();
  const Ed25519Signature signature = keys.sign(register_signing_bytes(message));
  message.set_identity_signature(signature.data(), signature.size());
}

bool verify_register(const v1::Register& message) {
  if (message.identity_public_key().size() != kEd25519PublicKeyBytes ||
      message.identity_signature().size() != kEd25519SignatureBytes) {
    return false;
  }
  Ed25519PublicKey pub{};
  Ed25519Signature signature{};
  std::memcpy(pub.data(), message.identity_public_key().data(), pub.size());
  std::memcpy(signature.data(), message.identity_signature().data(), signature.size());
  return verify_identity_signature(pub, register_signing_bytes(message), signature);
}

std::string hex(const std::string& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

}  // namespace alem::network
