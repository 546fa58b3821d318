// Implements the COCOON image hash with OpenSSL's SHA-256 (see image_hash.h for the layout).
#include "confidential/image_hash.h"

#include <openssl/evp.h>

#include <memory>

#include "core/error.h"

namespace alem::confidential {

ImageHash cocoon_image_hash(const TdReportBody& body) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  ALEM_CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1,
             "OpenSSL: cannot start SHA-256");
  const Measurement* registers[] = {&body.mrtd,          &body.mrconfigid, &body.mrowner,
                                    &body.mrownerconfig, &body.rtmr[0],    &body.rtmr[1],
                                    &body.rtmr[2],       &body.rtmr[3]};
  for (const Measurement* reg : registers) {
    ALEM_CHECK(EVP_DigestUpdate(ctx.get(), reg->data(), reg->size()) == 1,
               "OpenSSL: SHA-256 update failed");
  }
  const std::array<uint8_t, 64> zero_report_data{};
  ALEM_CHECK(EVP_DigestUpdate(ctx.get(), zero_report_data.data(), zero_report_data.size()) == 1,
             "OpenSSL: SHA-256 update failed");
  ImageHash out{};
  unsigned int size = 0;
  ALEM_CHECK(EVP_DigestFinal_ex(ctx.get(), out.data(), &size) == 1 && size == out.size(),
             "OpenSSL: SHA-256 final failed");
  return out;
}

ImageHash cocoon_image_hash(const TdxQuote& quote) {
  return cocoon_image_hash(quote.body);
}

std::string cocoon_image_hash_hex(const TdxQuote& quote) {
  const ImageHash hash = cocoon_image_hash(quote);
  return to_lower_hex(hash);
}

}  // namespace alem::confidential
