// Shared rules of the provider protocol (provider.proto) that both ends must apply the same
// way: the protocol version, the message size limit, and how a Register message is signed with
// the provider's Ed25519 identity key and checked by the network.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "network/provider.pb.h"
#include "network/provider_keys.h"

namespace alem::network {

inline constexpr uint32_t kProtocolVersion = 1;
// Largest protobuf message either side accepts on the stream (gRPC max receive size). A bigger
// Lease is refused by gRPC before it reaches the provider's code.
inline constexpr int kMaxMessageBytes = 4 * 1024 * 1024;
// Largest sealed request the provider opens (the envelope inside a Lease).
inline constexpr size_t kMaxSealedRequestBytes = 1024 * 1024;

// The bytes the identity signature covers: the Register message with identity_signature
// cleared, serialized deterministically.
std::string register_signing_bytes(const v1::Register& message);
// Fills identity_public_key and identity_signature of `message` with `keys`.
void sign_register(const ProviderKeys& keys, v1::Register& message);
// True when identity_signature is a valid Ed25519 signature of register_signing_bytes() under
// identity_public_key.
bool verify_register(const v1::Register& message);

// A request id as lowercase hex (for logs; request ids carry no user data).
std::string hex(const std::string& bytes);

}  // namespace alem::network
