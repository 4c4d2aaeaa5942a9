#include "common/dtype.h"

#include <cmath>

namespace shardserve {

std::optional<DType> ParseDType(absl::string_view name) {
  if (name == "F32" || name == "f32" || name == "float32") return DType::kF32;
  if (name == "F16" || name == "f16" || name == "float16") return DType::kF16;
  if (name == "BF16" || name == "bf16" || name == "bfloat16") return DType::kBF16;
  if (name == "I32" || name == "i32" || name == "int32") return DType::kI32;
  if (name == "Q8_0" || name == "q8_0") return DType::kQ8_0;
  if (name == "Q4_0" || name == "q4_0") return DType::kQ4_0;
  if (name == "Q4_K" || name == "q4_k") return DType::kQ4_K;
  if (name == "Q5_0" || name == "q5_0") return DType::kQ5_0;
  if (name == "Q5_1" || name == "q5_1") return DType::kQ5_1;
  if (name == "IQ4_NL" || name == "iq4_nl") return DType::kIQ4_NL;
  if (name == "Q5_K" || name == "q5_k") return DType::kQ5_K;
  if (name == "Q6_K" || name == "q6_k") return DType::kQ6_K;
  return std::nullopt;
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow (incl. rounding up) -> inf
  if (abs < 0x38800000u) {                        // subnormal or zero in f16
    if (abs < 0x33000000u) return sign;           // below half the smallest subnormal
    const uint32_t exp = abs >> 23;
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14 + (113 - exp) ... shift of the 24-bit mantissa
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half & 1u))) ++half;
    return sign | static_cast<uint16_t>(half);
  }
  uint32_t h = ((abs >> 23) - 112) << 10 | (abs >> 13 & 0x3ffu);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

}  // namespace shardserve
