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

// Q8_0, Q4_0, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K and Q6_K are llama.cpp's block formats, byte for
// byte: a row of n values is n / DTypeBlockElems() blocks of DTypeBlockBytes() bytes.
enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kI32 = 3,
  kQ8_0 = 4,
  kQ4_0 = 5,
  kQ4_K = 6,
  kQ6_K = 7,
  kQ5_K = 8,
  kQ5_0 = 9,
  kQ5_1 = 10,
  kIQ4_NL = 11,
};

constexpr bool IsQuantized(DType t) {
  return static_cast<int>(t) >= static_cast<int>(DType::kQ8_0);
}

// Values per block: 1 for the plain types.
constexpr int64_t DTypeBlockElems(DType t) {
  switch (t) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kIQ4_NL:
      return 32;
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return 256;
    default:
      return 1;
  }
}

// Bytes per block.
constexpr size_t DTypeBlockBytes(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
      return 2;
    case DType::kQ8_0:
      return 34;
    case DType::kQ4_0:
    case DType::kIQ4_NL:
      return 18;
    case DType::kQ5_0:
      return 22;
    case DType::kQ5_1:
      return 24;
    case DType::kQ4_K:
      return 144;
    case DType::kQ5_K:
      return 176;
    case DType::kQ6_K:
      return 210;
  }
  return 0;
}

// Bytes per element of the plain types; 0 for block types (use RowBytes).
constexpr size_t DTypeSize(DType t) { return IsQuantized(t) ? 0 : DTypeBlockBytes(t); }

// Bytes of n consecutive values; n must be a multiple of the block size.
constexpr size_t RowBytes(DType t, int64_t n) {
  return static_cast<size_t>(n / DTypeBlockElems(t)) * DTypeBlockBytes(t);
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
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_K:
      return "Q4_K";
    case DType::kQ5_K:
      return "Q5_K";
    case DType::kQ5_0:
      return "Q5_0";
    case DType::kQ5_1:
      return "Q5_1";
    case DType::kIQ4_NL:
      return "IQ4_NL";
    case DType::kQ6_K:
      return "Q6_K";
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
