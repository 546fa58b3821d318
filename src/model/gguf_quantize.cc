// Quantisation into the ggml block formats alem keeps unexpanded (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// IQ4_NL, IQ4_XS; the K-quants in gguf_quantize_k.cc), and the
// mapping between those ggml type ids and alem's DType. The quantisers mirror ggml's reference
// quantize_row_*_ref (ggml-quants.c) so a matrix made here holds the blocks llama.cpp would
// write; tests build quantised weights with them, and `alem convert --dtype q8_0` uses them.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "model/gguf_quant.h"

namespace alem {
namespace {

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// The value of largest magnitude among x[0 .. 32) (the first of equals), and that magnitude.
float largest_magnitude(const float* x, float* amax) {
  float max = 0.f;
  *amax = 0.f;
  for (int j = 0; j < 32; ++j) {
    if (*amax < std::fabs(x[j])) {
      *amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void quantize_q4_0(const float* x, uint8_t* block) {
  float amax;
  const float max = largest_magnitude(x, &amax);
  const float d = max / -8.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(block, d);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
    const int q1 = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
    block[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q4_1 / Q5_1's scale and minimum: d = (max - min) / levels and min, stored as the block's two
// f16; returns 1 / d (0 for a constant block) and the minimum.
float store_scale_and_minimum(const float* x, float levels, uint8_t* block, float* min) {
  float max = x[0];
  *min = x[0];
  for (int j = 1; j < 32; ++j) {
    *min = std::min(*min, x[j]);
    max = std::max(max, x[j]);
  }
  const float d = (max - *min) / levels;
  store_f16(block, d);
  store_f16(block + 2, *min);
  return d != 0.f ? 1.f / d : 0.f;
}

void quantize_q4_1(const float* x, uint8_t* block) {
  float min;
  const float id = store_scale_and_minimum(x, 15.f, block, &min);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, static_cast<int>(static_cast<int8_t>((x[j] - min) * id + 0.5f)));
    const int q1 =
        std::min(15, static_cast<int>(static_cast<int8_t>((x[j + 16] - min) * id + 0.5f)));
    block[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

// Q5_0 and Q5_1 as ggml's quantize_row_q5_0_ref / q5_1_ref: Q4_0's and Q4_1's rules with 32
// levels, the fifth bit of value j in bit j of the 32-bit word after the scale (and minimum).
void store_five_bits(const int* q, uint8_t* qh_then_qs) {
  uint32_t qh = 0;
  for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh_then_qs, &qh, 4);
  for (int j = 0; j < 16; ++j) {
    qh_then_qs[4 + j] = static_cast<uint8_t>((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
  }
}

void quantize_q5_0(const float* x, uint8_t* block) {
  float amax;
  const float max = largest_magnitude(x, &amax);
  const float d = max / -16.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(block, d);
  int q[32];
  for (int j = 0; j < 32; ++j) {
    q[j] = std::min(31,
                    static_cast<int>(static_cast<uint8_t>(static_cast<int8_t>(x[j] * id + 16.5f))));
  }
  store_five_bits(q, block + 2);
}

void quantize_q5_1(const float* x, uint8_t* block) {
  float min;
  const float id = store_scale_and_minimum(x, 31.f, block, &min);
  int q[32];
  for (int j = 0; j < 32; ++j) {
    q[j] = std::min(
        31, static_cast<int>(static_cast<uint8_t>(static_cast<int8_t>((x[j] - min) * id + 0.5f))));
  }
  store_five_bits(q, block + 4);
}

void quantize_q8_0(const float* x, uint8_t* block) {
  float amax = 0.f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f;
  const float id = d != 0.f ? 1.f / d : 0.f;
  store_f16(block, d);
  for (int j = 0; j < 32; ++j) {
    block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * id)));
  }
}

// The index of kIq4Values nearest to x (ggml's best_index_int8: ties go up).
int nearest_iq4_index(float x) {
  if (x <= kIq4Values[0]) return 0;
  if (x >= kIq4Values[15]) return 15;
  int low = 0, high = 15;
  while (high - low > 1) {
    const int mid = (low + high) / 2;
    (x < kIq4Values[mid] ? high : low) = mid;
  }
  return x - kIq4Values[high - 1] < kIq4Values[high] - x ? high - 1 : high;
}

// The table indices of x[0 .. 32) against the inverse scale id, and the sums ggml's IQ4
// quantisers fit a scale with (weights x^2): sum(w q x) and sum(w q^2).
void fit_iq4(const float* x, float id, uint8_t* index, float* sum_qx, float* sum_q2) {
  *sum_qx = *sum_q2 = 0.f;
  for (int j = 0; j < 32; ++j) {
    index[j] = static_cast<uint8_t>(nearest_iq4_index(id * x[j]));
    const float q = kIq4Values[index[j]];
    const float w = x[j] * x[j];
    *sum_qx += w * q * x[j];
    *sum_q2 += w * q * q;
  }
}

// ggml's quantize_row_iq4_nl_ref: d = the value of largest magnitude over -127 picks each
// value's table index, then d becomes the least-squares scale of those indices with weights x^2.
void quantize_iq4_nl(const float* x, uint8_t* block) {
  float amax;
  const float max = largest_magnitude(x, &amax);
  std::memset(block, 0, 18);
  if (amax < 1e-15f) return;  // ggml's GROUP_MAX_EPS: an all-zero block
  uint8_t index[32];
  float sum_qx, sum_q2;
  fit_iq4(x, 1.f / (max / kIq4Values[0]), index, &sum_qx, &sum_q2);
  store_f16(block, sum_q2 > 0.f ? sum_qx / sum_q2 : 0.f);
  for (int j = 0; j < 16; ++j) block[2 + j] = static_cast<uint8_t>(index[j] | (index[j + 16] << 4));
}

// ggml's nearest_int: round to nearest, ties to even (through the f32 mantissa).
int nearest_int(float v) {
  return static_cast<int>(std::nearbyint(v));
}

// ggml's quantize_row_iq4_xs_ref (quantize_row_iq4_nl_impl with ntry = 7, no importance weights):
// each run of 32 gets its least-squares scale over 15 trial scales; the super-block's d is the
// largest of them over -32, and each run's scale becomes a 6-bit multiple of d, against which its
// values pick their indices again.
void quantize_iq4_xs(const float* x, uint8_t* block) {
  constexpr int kRuns = 8;
  float scales[kRuns];
  float max_scale = 0.f, amax_scale = 0.f;
  for (int ib = 0; ib < kRuns; ++ib) {
    const float* xb = x + 32 * ib;
    float amax;
    const float max = largest_magnitude(xb, &amax);
    if (amax < 1e-15f) {
      scales[ib] = 0.f;
      continue;
    }
    uint8_t index[32];
    float sum_qx, sum_q2;
    fit_iq4(xb, 1.f / (-max / kIq4Values[0]), index, &sum_qx, &sum_q2);
    float d = sum_q2 > 0.f ? sum_qx / sum_q2 : 0.f;
    float best = d * sum_qx;
    for (int trial = -7; trial <= 7; ++trial) {
      fit_iq4(xb, (trial + kIq4Values[0]) / max, index, &sum_qx, &sum_q2);
      if (sum_q2 > 0.f && sum_qx * sum_qx > best * sum_q2) {
        d = sum_qx / sum_q2;
        best = d * sum_qx;
      }
    }
    scales[ib] = d;
    if (std::fabs(d) > amax_scale) {
      amax_scale = std::fabs(d);
      max_scale = d;
    }
  }
  std::memset(block, 0, 136);
  const float d = -max_scale / 32.f;
  store_f16(block, d);
  const float id = d != 0.f ? 1.f / d : 0.f;
  uint16_t scales_high = 0;
  for (int ib = 0; ib < kRuns; ++ib) {
    const int l = std::clamp(nearest_int(id * scales[ib]), -32, 31);
    const float dl = d * static_cast<float>(l);
    const float idl = dl != 0.f ? 1.f / dl : 0.f;
    const float* xb = x + 32 * ib;
    uint8_t* qs = block + 8 + 16 * ib;
    for (int j = 0; j < 16; ++j) {
      qs[j] = static_cast<uint8_t>(nearest_iq4_index(idl * xb[j]) |
                                   (nearest_iq4_index(idl * xb[j + 16]) << 4));
    }
    const int stored = l + 32;
    block[4 + ib / 2] =
        static_cast<uint8_t>(block[4 + ib / 2] | ((stored & 0x0F) << (4 * (ib % 2))));
    scales_high = static_cast<uint16_t>(scales_high | ((stored >> 4) << (2 * ib)));
  }
  std::memcpy(block + 2, &scales_high, 2);
}

}  // namespace

bool ggml_type_as_dtype(uint32_t type_id, DType* dtype) {
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q4_0:
      *dtype = DType::Q4_0;
      return true;
    case GgmlType::Q4_1:
      *dtype = DType::Q4_1;
      return true;
    case GgmlType::Q5_0:
      *dtype = DType::Q5_0;
      return true;
    case GgmlType::Q5_1:
      *dtype = DType::Q5_1;
      return true;
    case GgmlType::Q8_0:
      *dtype = DType::Q8_0;
      return true;
    case GgmlType::Q3_K:
      *dtype = DType::Q3_K;
      return true;
    case GgmlType::Q4_K:
      *dtype = DType::Q4_K;
      return true;
    case GgmlType::Q5_K:
      *dtype = DType::Q5_K;
      return true;
    case GgmlType::Q6_K:
      *dtype = DType::Q6_K;
      return true;
    case GgmlType::IQ4_NL:
      *dtype = DType::IQ4_NL;
      return true;
    case GgmlType::IQ4_XS:
      *dtype = DType::IQ4_XS;
      return true;
    default:
      return false;
  }
}

uint32_t ggml_type_of(DType dtype) {
  switch (dtype) {
    case DType::Q4_0:
      return static_cast<uint32_t>(GgmlType::Q4_0);
    case DType::Q4_1:
      return static_cast<uint32_t>(GgmlType::Q4_1);
    case DType::Q5_0:
      return static_cast<uint32_t>(GgmlType::Q5_0);
    case DType::Q5_1:
      return static_cast<uint32_t>(GgmlType::Q5_1);
    case DType::Q8_0:
      return static_cast<uint32_t>(GgmlType::Q8_0);
    case DType::Q3_K:
      return static_cast<uint32_t>(GgmlType::Q3_K);
    case DType::Q4_K:
      return static_cast<uint32_t>(GgmlType::Q4_K);
    case DType::Q5_K:
      return static_cast<uint32_t>(GgmlType::Q5_K);
    case DType::Q6_K:
      return static_cast<uint32_t>(GgmlType::Q6_K);
    case DType::IQ4_NL:
      return static_cast<uint32_t>(GgmlType::IQ4_NL);
    case DType::IQ4_XS:
      return static_cast<uint32_t>(GgmlType::IQ4_XS);
    default:
      ALEM_FAIL("dtype " + dtype_name(dtype) + " is not a ggml block type");
  }
}

void quantize_ggml(uint32_t type_id, const float* src, int64_t elements, uint8_t* dst) {
  void (*quantize_block)(const float*, uint8_t*) = nullptr;
  switch (static_cast<GgmlType>(type_id)) {
    case GgmlType::Q4_0:
      quantize_block = quantize_q4_0;
      break;
    case GgmlType::Q4_1:
      quantize_block = quantize_q4_1;
      break;
    case GgmlType::Q5_0:
      quantize_block = quantize_q5_0;
      break;
    case GgmlType::Q5_1:
      quantize_block = quantize_q5_1;
      break;
    case GgmlType::Q8_0:
      quantize_block = quantize_q8_0;
      break;
    case GgmlType::Q3_K:
      quantize_block = [](const float* x, uint8_t* b) { quantize_k_block(DType::Q3_K, x, b); };
      break;
    case GgmlType::Q4_K:
      quantize_block = [](const float* x, uint8_t* b) { quantize_k_block(DType::Q4_K, x, b); };
      break;
    case GgmlType::Q5_K:
      quantize_block = [](const float* x, uint8_t* b) { quantize_k_block(DType::Q5_K, x, b); };
      break;
    case GgmlType::Q6_K:
      quantize_block = [](const float* x, uint8_t* b) { quantize_k_block(DType::Q6_K, x, b); };
      break;
    case GgmlType::IQ4_NL:
      quantize_block = quantize_iq4_nl;
      break;
    case GgmlType::IQ4_XS:
      quantize_block = quantize_iq4_xs;
      break;
    default:
      ALEM_FAIL("alem cannot quantise to ggml type " + ggml_type_name(type_id) +
                " (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, "
                "IQ4_XS)");
  }
  const GgmlBlockGeometry g = ggml_block_geometry(type_id);
  ALEM_CHECK(elements >= 0 && elements % g.elements_per_block == 0,
             std::to_string(elements) + " values are not a whole number of " +
                 ggml_type_name(type_id) + " blocks");
  for (int64_t b = 0; b < elements / g.elements_per_block; ++b) {
    quantize_block(src + b * g.elements_per_block, dst + b * g.bytes_per_block);
  }
}

}  // namespace alem
