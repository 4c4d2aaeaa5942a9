#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace shardserve::cpu {
namespace {

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// Calls put(group, r, b, blk) for block b (a block of `dt`, as the file holds it at blk) of row r
// of each group of 16 rows; `group` is where the group's repacked bytes start.
template <typename Put>
void RepackRows(const void* w, DType dt, int64_t rows, int64_t k, size_t group_bytes, uint8_t* out,
                Put put) {
  const auto* src = static_cast<const uint8_t*>(w);
  const int64_t blocks = k / DTypeBlockElems(dt);
  const size_t row_bytes = RowBytes(dt, k), block_bytes = DTypeBlockBytes(dt);
  for (int64_t g = 0; g < rows / 16; ++g) {
    for (int r = 0; r < 16; ++r) {
      const uint8_t* row = src + (g * 16 + r) * row_bytes;
      for (int64_t b = 0; b < blocks; ++b) put(out + g * group_bytes, r, b, row + b * block_bytes);
    }
  }
}

}  // namespace

void RepackQ4_0x16(const void* w, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t nb = k / 32;
  RepackRows(w, DType::kQ4_0, rows, k, Q4_0x16GroupBytes(k), out,
             [&](uint8_t* group, int r, int64_t b, const uint8_t* blk) {
               // blk: f16 d, then 16 bytes of nibbles
               std::memcpy(group + Q4_0x16ScalesAt(b) + r * 2, blk, 2);
               uint8_t* quants = group + Q4_0x16QuantsAt(nb, b);
               for (int c = 0; c < 4; ++c) std::memcpy(quants + c * 64 + r * 4, blk + 2 + 4 * c, 4);
             });
}

void RepackQ4_Kx16(const void* w, int64_t rows, int64_t k, uint8_t* out) {
  RepackRows(w, DType::kQ4_K, rows, k, Q4_Kx16GroupBytes(k), out,
             [](uint8_t* group, int r, int64_t s, const uint8_t* blk) {
               // blk: f16 d, f16 dmin, 12 scale bytes, 128 quant bytes
               uint8_t* dst = group + s * kQ4_Kx16SuperBytes;
               std::memcpy(dst + r * 2, blk, 2);
               std::memcpy(dst + 32 + r * 2, blk + 2, 2);
               for (int v = 0; v < 3; ++v) {
                 std::memcpy(dst + 64 + 64 * v + r * 4, blk + 4 + 4 * v, 4);
               }
               for (int v = 0; v < 32; ++v) {
                 std::memcpy(dst + 256 + 64 * v + r * 4, blk + 16 + 4 * v, 4);
               }
             });
}

void RepackQ6_Kx16(const void* w, int64_t rows, int64_t k, uint8_t* out) {
  RepackRows(w, DType::kQ6_K, rows, k, Q6_Kx16GroupBytes(k), out,
             [](uint8_t* group, int r, int64_t s, const uint8_t* blk) {
               // blk: ql[128], qh[64], int8 scales[16], f16 d
               uint8_t* dst = group + s * kQ6_Kx16SuperBytes;
               std::memcpy(dst + r * 2, blk + 208, 2);
               for (int u = 0; u < 4; ++u) {
                 std::memcpy(dst + 32 + 64 * u + r * 4, blk + 192 + 4 * u, 4);
               }
               for (int n = 0; n < 2; ++n) {
                 for (int v = 0; v < 8; ++v) {
                   uint8_t* step = dst + 288 + 1536 * n + 192 * v + r * 4;
                   std::memcpy(step, blk + 64 * n + 4 * v, 4);
                   std::memcpy(step + 64, blk + 64 * n + 32 + 4 * v, 4);
                   std::memcpy(step + 128, blk + 128 + 32 * n + 4 * v, 4);
                 }
               }
             });
}

const Repacked* RepackedFormat(DType dt, int64_t k) {
  static constexpr Repacked kQ4_0{Q4_0x16GroupBytes, RepackQ4_0x16, Avx512VnniQ4_0x16Rows};
  static constexpr Repacked kIQ4_NL{Q4_0x16GroupBytes, RepackQ4_0x16, Avx512VnniIQ4_NLx16Rows};
  static constexpr Repacked kQ4_K{Q4_Kx16GroupBytes, RepackQ4_Kx16, Avx512VnniQ4_Kx16Rows};
  static constexpr Repacked kQ6_K{Q6_Kx16GroupBytes, RepackQ6_Kx16, Avx512VnniQ6_Kx16Rows};
  if (dt == DType::kQ4_0 && k % 32 == 0) return &kQ4_0;
  if (dt == DType::kIQ4_NL && k % 32 == 0) return &kIQ4_NL;
  if (dt == DType::kQ4_K && k % 256 == 0) return &kQ4_K;
  if (dt == DType::kQ6_K && k % 256 == 0) return &kQ6_K;
  return nullptr;
}

void QuantizeActivations(const float* x, int64_t n, Q8Block* out) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float d = amax / 127.0f;
    const float id = d != 0 ? 1.0f / d : 0.0f;
    out[b].d = d;
    out[b].qsum = 0;
    for (int i = 0; i < 32; ++i) {
      out[b].q[i] = static_cast<int8_t>(std::nearbyint(v[i] * id));
      out[b].qsum += out[b].q[i];
    }
  }
}

float RefQuantDot(DType dt, const void* w_row, const Q8Block* x, int64_t k) {
  const auto* p = static_cast<const uint8_t*>(w_row);
  float sum = 0;
  if (dt == DType::kQ4_K || dt == DType::kQ5_K || dt == DType::kQ6_K) {
    // The weights as the format decodes them, against each activation block's values.
    float w[256];
    const size_t block_bytes = DTypeBlockBytes(dt);
    for (int64_t s = 0; s < k / 256; ++s) {
      DequantizeRow(dt, p + s * block_bytes, 256, w);
      for (int b = 0; b < 8; ++b) {
        const Q8Block& xb = x[s * 8 + b];
        float acc = 0;
        for (int i = 0; i < 32; ++i) acc += w[32 * b + i] * xb.q[i];
        sum += xb.d * acc;
      }
    }
    return sum;
  }
  if (dt == DType::kQ5_0 || dt == DType::kQ5_1) {
    // Integer sums of the 5-bit values, then Q5_0's offset or Q5_1's min times the activations.
    const bool q51 = dt == DType::kQ5_1;
    const size_t bb = DTypeBlockBytes(dt);
    for (int64_t b = 0; b < k / 32; ++b) {
      const uint8_t* blk = p + b * bb;
      uint32_t qh;
      std::memcpy(&qh, blk + Q5HighBitsAt(dt), 4);
      const uint8_t* qs = blk + Q5QuantsAt(dt);
      int32_t acc = 0;
      for (int i = 0; i < 16; ++i) {
        const int lo = static_cast<int>((qs[i] & 0xF) | (((qh >> i) & 1) << 4));
        const int hi = static_cast<int>((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4));
        acc += lo * x[b].q[i] + hi * x[b].q[i + 16];
      }
      if (!q51) acc -= 16 * x[b].qsum;
      sum += Half(blk) * x[b].d * static_cast<float>(acc);
      if (q51) sum += Half(blk + 2) * x[b].d * static_cast<float>(x[b].qsum);
    }
    return sum;
  }
  for (int64_t b = 0; b < k / 32; ++b) {
    int32_t acc = 0;
    float dw;
    if (dt == DType::kQ8_0) {
      dw = Half(p + 34 * b);
      for (int i = 0; i < 32; ++i) acc += static_cast<int8_t>(p[34 * b + 2 + i]) * x[b].q[i];
    } else {  // Q4_0 (nibble - 8) or IQ4_NL (the nibble's level)
      const bool nl = dt == DType::kIQ4_NL;
      auto value = [nl](int nibble) { return nl ? int{kIq4NlValues[nibble]} : nibble - 8; };
      dw = Half(p + 18 * b);
      for (int i = 0; i < 16; ++i) {
        acc += value(p[18 * b + 2 + i] & 0xF) * x[b].q[i];
        acc += value(p[18 * b + 2 + i] >> 4) * x[b].q[i + 16];
      }
    }
    sum += dw * x[b].d * static_cast<float>(acc);
  }
  return sum;
}

}  // namespace shardserve::cpu
