// Element types of weights and activations, and scalar conversions between them.
//
// F16 is IEEE binary16, BF16 is the upper half of an IEEE binary32. The scalar conversions here
// are the reference; kernels use hardware conversions (F16C, AVX-512 BF16) where available and
// are tested against these.
#ifndef SHARDSERVE_COMMON_DTYPE_H_
#define SHARDSERVE_COMMON_DTYPE_H_

#include <cstdint>
#include <cstring>
#include <optional>
#include "absl/strings/string_view.h"

namespace shardserve {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2, kI32 = 3 };

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
  }
  return 0;
}

inline absl::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

// Accepts safetensors names (F32, F16, BF16, I32) and lower-case flag spellings
// (f32, float32, f16, float16, bf16, bfloat16).
std::optional<DType> ParseDType(absl::string_view name);

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_DTYPE_H_
