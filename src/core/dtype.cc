// Conversions for half-precision types and dtype names.
#include "core/dtype.h"

#include "core/error.h"

namespace alem {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::I8:
      return 1;
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q8_0:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K:
    case DType::IQ4_NL:
    case DType::IQ4_XS:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q3_K:
      ALEM_FAIL("dtype " + dtype_name(t) + " is a block type with no per-element size");
  }
  return 0;
}

bool dtype_is_block(DType t) {
  return t == DType::Q4_0 || t == DType::Q4_1 || t == DType::Q5_0 || t == DType::Q5_1 ||
         t == DType::Q8_0 || t == DType::IQ4_NL || dtype_is_super_block(t);
}

bool dtype_is_k_quant(DType t) {
  return t == DType::Q3_K || t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K;
}

bool dtype_is_super_block(DType t) {
  return dtype_is_k_quant(t) || t == DType::IQ4_XS;
}

int64_t dtype_block_elements(DType t) {
  return dtype_is_super_block(t) ? 256 : (dtype_is_block(t) ? 32 : 1);
}

int64_t dtype_block_bytes(DType t) {
  switch (t) {
    case DType::Q4_0:
    case DType::IQ4_NL:
      return 18;
    case DType::Q4_1:
      return 20;
    case DType::Q5_0:
      return 22;
    case DType::Q5_1:
      return 24;
    case DType::Q8_0:
      return 34;
    case DType::Q4_K:
      return 144;
    case DType::Q5_K:
      return 176;
    case DType::Q6_K:
      return 210;
    case DType::IQ4_XS:
      return 136;
    case DType::Q3_K:
      return 110;
    default:
      return static_cast<int64_t>(dtype_size(t));
  }
}

size_t dtype_row_bytes(DType t, int64_t cols) {
  const int64_t block = dtype_block_elements(t);
  ALEM_CHECK(cols >= 0 && cols % block == 0,
             "a row of " + std::to_string(cols) + " " + dtype_name(t) +
                 " elements is not a whole number of " + std::to_string(block) + "-element blocks");
  return static_cast<size_t>(cols / block * dtype_block_bytes(t));
}

std::string dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::BF16:
      return "bf16";
    case DType::F16:
      return "f16";
    case DType::I8:
      return "int8";
    case DType::Q4_0:
      return "q4_0";
    case DType::Q4_1:
      return "q4_1";
    case DType::Q8_0:
      return "q8_0";
    case DType::Q4_K:
      return "q4_k";
    case DType::Q5_K:
      return "q5_k";
    case DType::Q6_K:
      return "q6_k";
    case DType::IQ4_NL:
      return "iq4_nl";
    case DType::IQ4_XS:
      return "iq4_xs";
    case DType::Q5_0:
      return "q5_0";
    case DType::Q5_1:
      return "q5_1";
    case DType::Q3_K:
      return "q3_k";
  }
  return "?";
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::F32;
  if (name == "bf16" || name == "bfloat16") return DType::BF16;
  if (name == "f16" || name == "float16") return DType::F16;
  if (name == "int8" || name == "i8") return DType::I8;
  if (name == "q4_0" || name == "Q4_0") return DType::Q4_0;
  if (name == "q4_1" || name == "Q4_1") return DType::Q4_1;
  if (name == "q8_0" || name == "Q8_0") return DType::Q8_0;
  if (name == "q4_k" || name == "Q4_K") return DType::Q4_K;
  if (name == "q5_k" || name == "Q5_K") return DType::Q5_K;
  if (name == "q6_k" || name == "Q6_K") return DType::Q6_K;
  if (name == "iq4_nl" || name == "IQ4_NL") return DType::IQ4_NL;
  if (name == "iq4_xs" || name == "IQ4_XS") return DType::IQ4_XS;
  if (name == "q5_0" || name == "Q5_0") return DType::Q5_0;
  if (name == "q5_1" || name == "Q5_1") return DType::Q5_1;
  if (name == "q3_k" || name == "Q3_K") return DType::Q3_K;
  ALEM_FAIL("unknown dtype '" + name +
            "' (expected f32, bf16, f16, int8, q4_0, q4_1, q5_0, q5_1, q8_0, q3_k, q4_k, q5_k, "
            "q6_k, iq4_nl or iq4_xs)");
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {                                               // subnormal or zero in f16
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23;
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;  // with the implicit leading one
    const uint32_t shift = 126 - e;  // f16 subnormal mantissa = m * 2^(e - 150 + 24)
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    uint32_t result = m >> shift;
    if (rem > halfway || (rem == halfway && (result & 1u))) ++result;
    return static_cast<uint16_t>(sign | result);
  }
  uint32_t bits = abs - 0x38000000u;  // rebias exponent 127 -> 15
  const uint32_t rem = bits & 0x1fffu;
  uint32_t result = bits >> 13;
  if (rem > 0x1000u || (rem == 0x1000u && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

}  // namespace alem
