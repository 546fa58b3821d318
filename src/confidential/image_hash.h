// The COCOON "image hash": the one number that names a TD image on the network. The root
// contract lists allowed image hashes; a worker (or this cluster's provider) is admitted only
// when the hash of its quote's measurements is on that list. Computing it here, from a parsed
// quote, keeps every caller hashing the same bytes in the same order.
//
//   image hash = SHA-256( MRTD || MRCONFIGID || MROWNER || MROWNERCONFIG
//                         || RTMR0 || RTMR1 || RTMR2 || RTMR3 || 64 zero bytes )
//
// (48 bytes per register, 8 x 48 + 64 = 448 bytes hashed; the trailing zeros stand where
// REPORTDATA sits in the TD report, so the hash names the image, not the session.)
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "confidential/tdx_quote.h"

namespace alem::confidential {

using ImageHash = std::array<uint8_t, 32>;

// The image hash of a TD report body (quote v4 or v5; TDX 1.5 extra fields are not included).
ImageHash cocoon_image_hash(const TdReportBody& body);
ImageHash cocoon_image_hash(const TdxQuote& quote);

// Lower-case hex of cocoon_image_hash(quote), 64 characters.
std::string cocoon_image_hash_hex(const TdxQuote& quote);

}  // namespace alem::confidential
