// GPT-2 byte <-> code point alphabet and UTF-8 scanning (see unicode_bytes.h). The UTF-8 rules
// follow Unicode's table of well-formed byte sequences (chapter 3, table 3-7), which is also
// what decides where from_utf8_lossy puts each U+FFFD.
#include "model/unicode_bytes.h"

#include <array>

namespace alem {
namespace {

struct ByteAlphabet {
  std::array<char32_t, 256> code_point_of_byte{};
  std::array<int16_t, 324> byte_of_code_point{};  // -1 when the code point is not in the alphabet

  ByteAlphabet() {
    byte_of_code_point.fill(-1);
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    char32_t next_extra = 256;
    for (int b = 0; b < 256; ++b) {
      char32_t cp = printable(b) ? static_cast<char32_t>(b) : next_extra++;
      code_point_of_byte[b] = cp;
      byte_of_code_point[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet table;
  return table;
}

bool in_range(unsigned char c, unsigned char lo, unsigned char hi) {
  return c >= lo && c <= hi;
}

}  // namespace

char32_t byte_to_unicode(unsigned char byte) {
  return alphabet().code_point_of_byte[byte];
}

void append_utf8(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = 0xFFFD;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, byte_to_unicode(b));
  return out;
}

Utf8Sequence scan_utf8(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  const unsigned char lead = p[0];
  if (lead < 0x80) return {Utf8Status::Complete, 1};
  // Allowed range of the second byte, and total length, per lead byte (table 3-7).
  unsigned char second_lo = 0x80, second_hi = 0xBF;
  size_t length = 0;
  if (in_range(lead, 0xC2, 0xDF)) {
    length = 2;
  } else if (lead == 0xE0) {
    length = 3, second_lo = 0xA0;
  } else if (in_range(lead, 0xE1, 0xEC) || in_range(lead, 0xEE, 0xEF)) {
    length = 3;
  } else if (lead == 0xED) {
    length = 3, second_hi = 0x9F;  // no surrogates
  } else if (lead == 0xF0) {
    length = 4, second_lo = 0x90;
  } else if (in_range(lead, 0xF1, 0xF3)) {
    length = 4;
  } else if (lead == 0xF4) {
    length = 4, second_hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {Utf8Status::Invalid, 1};  // stray continuation byte, C0/C1 or F5..FF
  }
  for (size_t i = 1; i < length; ++i) {
    if (i >= n) return {Utf8Status::Incomplete, n};
    const unsigned char lo = i == 1 ? second_lo : 0x80;
    const unsigned char hi = i == 1 ? second_hi : 0xBF;
    if (!in_range(p[i], lo, hi)) return {Utf8Status::Invalid, i};
  }
  return {Utf8Status::Complete, length};
}

bool is_valid_utf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Sequence seq = scan_utf8(bytes.substr(pos));
    if (seq.status != Utf8Status::Complete) return false;
    pos += seq.length;
  }
  return true;
}

std::string sanitize_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Sequence seq = scan_utf8(bytes.substr(pos));
    if (seq.status == Utf8Status::Complete) {
      out.append(bytes.substr(pos, seq.length));
    } else {
      append_utf8(out, 0xFFFD);
    }
    pos += seq.length;
  }
  return out;
}

bool byte_level_to_bytes(std::string_view text, std::string& out) {
  out.clear();
  out.reserve(text.size());
  const ByteAlphabet& table = alphabet();
  size_t pos = 0;
  while (pos < text.size()) {
    const Utf8Sequence seq = scan_utf8(text.substr(pos));
    if (seq.status != Utf8Status::Complete) return false;
    const auto* p = reinterpret_cast<const unsigned char*>(text.data() + pos);
    char32_t cp = 0;
    switch (seq.length) {
      case 1:
        cp = p[0];
        break;
      case 2:
        cp = (char32_t(p[0] & 0x1F) << 6) | (p[1] & 0x3F);
        break;
      default:
        return false;  // the alphabet ends at U+0143: never 3 or 4 bytes
    }
    if (cp >= table.byte_of_code_point.size() || table.byte_of_code_point[cp] < 0) return false;
    out.push_back(static_cast<char>(table.byte_of_code_point[cp]));
    pos += seq.length;
  }
  return true;
}

}  // namespace alem
