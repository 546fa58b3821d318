// Byte-level helpers shared by the tokenizer and its streaming decoder: GPT-2's reversible map
// between the 256 byte values and printable code points (so every byte string has a vocabulary
// spelling such as "Ġthe"), and UTF-8 scanning that tells a complete character from one that a
// later token may still finish, and from bytes that can never be valid. No locale, no ICU.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace alem {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') map to
// themselves, the other 68 bytes to U+0100.. in byte order. Returns the code point for `byte`.
char32_t byte_to_unicode(unsigned char byte);

// The byte-level spelling of raw bytes: each byte becomes its code point, UTF-8 encoded.
std::string bytes_to_byte_level(std::string_view bytes);

// The inverse: decodes a byte-level spelling back to raw bytes. Returns false (leaving `out`
// unspecified) when `text` is not valid UTF-8 or holds a code point outside the 256-entry
// alphabet, as special tokens such as "<|im_start|>" may.
bool byte_level_to_bytes(std::string_view text, std::string& out);

// Appends the UTF-8 encoding of a Unicode scalar value (surrogates and values above U+10FFFF
// are replaced by U+FFFD).
void append_utf8(std::string& out, char32_t code_point);

// What sits at the front of a byte string, judged by the Unicode well-formed UTF-8 table.
enum class Utf8Status {
  Complete,    // a whole character of `length` bytes
  Incomplete,  // a valid start of a character that needs more bytes than the string has
  Invalid,     // `length` bytes (the maximal subpart, at least 1) that no continuation can fix
};
struct Utf8Sequence {
  Utf8Status status;
  size_t length;
};
// Examines the character that starts at `bytes[0]`. `bytes` must not be empty.
Utf8Sequence scan_utf8(std::string_view bytes);

// True when every byte of `bytes` belongs to a complete, well-formed UTF-8 character.
bool is_valid_utf8(std::string_view bytes);

// Replaces each ill-formed part (an invalid maximal subpart, or a truncated character at the
// end) with U+FFFD, exactly as Rust's String::from_utf8_lossy and Python's
// bytes.decode("utf-8", "replace") do. Valid text comes back unchanged.
std::string sanitize_utf8(std::string_view bytes);

}  // namespace alem
