#include "kernels/quant_format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace shardserve {
namespace {

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

inline void GetScaleMinK4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

}  // namespace

void QuantizeRow(DType dt, const float* x, int64_t n, void* dst) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    if (dt == DType::kQ8_0) {
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float d = amax / 127.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const uint16_t h = F32ToF16(d);
      std::memcpy(out + 34 * b, &h, 2);
      for (int i = 0; i < 32; ++i) {
        out[34 * b + 2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::nearbyint(v[i] * id)));
      }
    } else {  // Q4_0: the value of largest magnitude maps to -8.
      float amax = 0, max = 0;
      for (int i = 0; i < 32; ++i) {
        if (amax < std::fabs(v[i])) {
          amax = std::fabs(v[i]);
          max = v[i];
        }
      }
      const float d = max / -8.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      const uint16_t h = F32ToF16(d);
      std::memcpy(out + 18 * b, &h, 2);
      for (int i = 0; i < 16; ++i) {
        const uint8_t lo = std::min<int>(15, static_cast<int8_t>(v[i] * id + 8.5f));
        const uint8_t hi = std::min<int>(15, static_cast<int8_t>(v[i + 16] * id + 8.5f));
        out[18 * b + 2 + i] = lo | static_cast<uint8_t>(hi << 4);
      }
    }
  }
}

void DequantizeRow(DType dt, const void* src, int64_t n, float* y) {
  const auto* p = static_cast<const uint8_t*>(src);
  switch (dt) {
    case DType::kF32:
      std::memcpy(y, p, n * sizeof(float));
      return;
    case DType::kF16:
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        y[i] = dt == DType::kF16 ? F16ToF32(h) : Bf16ToF32(h);
      }
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < n / 32; ++b, p += 34) {
        const float d = Half(p);
        for (int i = 0; i < 32; ++i) y[32 * b + i] = d * static_cast<int8_t>(p[2 + i]);
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < n / 32; ++b, p += 18) {
        const float d = Half(p);
        for (int i = 0; i < 16; ++i) {
          y[32 * b + i] = d * ((p[2 + i] & 0xF) - 8);
          y[32 * b + i + 16] = d * ((p[2 + i] >> 4) - 8);
        }
      }
      return;
    case DType::kIQ4_NL:
      for (int64_t b = 0; b < n / 32; ++b, p += 18) {
        const float d = Half(p);
        for (int i = 0; i < 16; ++i) {
          y[32 * b + i] = d * kIq4NlValues[p[2 + i] & 0xF];
          y[32 * b + i + 16] = d * kIq4NlValues[p[2 + i] >> 4];
        }
      }
      return;
    case DType::kQ5_0:
    case DType::kQ5_1: {  // Q4_0's nibbles with bit v of qh as bit 4 of value v; Q5_1 adds m
      const bool q51 = dt == DType::kQ5_1;
      const int64_t bb = static_cast<int64_t>(DTypeBlockBytes(dt));
      for (int64_t b = 0; b < n / 32; ++b, p += bb) {
        const float d = Half(p), m = q51 ? Half(p + 2) : 0.0f;
        const int off = q51 ? 0 : 16;
        uint32_t qh;
        std::memcpy(&qh, p + Q5HighBitsAt(dt), 4);
        const uint8_t* qs = p + Q5QuantsAt(dt);
        for (int i = 0; i < 16; ++i) {
          const int lo = static_cast<int>((qs[i] & 0xF) | (((qh >> i) & 1) << 4));
          const int hi = static_cast<int>((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4));
          y[32 * b + i] = d * static_cast<float>(lo - off) + m;
          y[32 * b + i + 16] = d * static_cast<float>(hi - off) + m;
        }
      }
      return;
    }
    case DType::kQ4_K:
      for (int64_t b = 0; b < n / 256; ++b, p += 144) {
        const float d = Half(p), min = Half(p + 2);
        const uint8_t* scales = p + 4;
        const uint8_t* q = p + 16;
        float* out = y + 256 * b;
        int is = 0;
        for (int j = 0; j < 256; j += 64) {
          uint8_t sc, m;
          GetScaleMinK4(is + 0, scales, &sc, &m);
          const float d1 = d * sc, m1 = min * m;
          GetScaleMinK4(is + 1, scales, &sc, &m);
          const float d2 = d * sc, m2 = min * m;
          for (int l = 0; l < 32; ++l) *out++ = d1 * (q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *out++ = d2 * (q[l] >> 4) - m2;
          q += 32;
          is += 2;
        }
      }
      return;
    case DType::kQ5_K:  // Q4_K's scales and mins, plus bit j of qh[l] as bit 4 of sub-block j
      for (int64_t b = 0; b < n / 256; ++b, p += 176) {
        const float d = Half(p), min = Half(p + 2);
        const uint8_t* scales = p + 4;
        const uint8_t* qh = p + 16;
        const uint8_t* q = p + 48;
        float* out = y + 256 * b;
        for (int j = 0; j < 8; j += 2, q += 32) {
          uint8_t sc, m;
          GetScaleMinK4(j, scales, &sc, &m);
          const float d1 = d * sc, m1 = min * m;
          GetScaleMinK4(j + 1, scales, &sc, &m);
          const float d2 = d * sc, m2 = min * m;
          for (int l = 0; l < 32; ++l)
            *out++ = d1 * ((q[l] & 0xF) | (((qh[l] >> j) & 1) << 4)) - m1;
          for (int l = 0; l < 32; ++l) {
            *out++ = d2 * ((q[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4)) - m2;
          }
        }
      }
      return;
    case DType::kQ6_K:
      for (int64_t b = 0; b < n / 256; ++b, p += 210) {
        const uint8_t* ql = p;
        const uint8_t* qh = p + 128;
        const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
        const float d = Half(p + 208);
        float* out = y + 256 * b;
        for (int h = 0; h < 256; h += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = static_cast<int8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = static_cast<int8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            out[l] = d * sc[is] * q1;
            out[l + 32] = d * sc[is + 2] * q2;
            out[l + 64] = d * sc[is + 4] * q3;
            out[l + 96] = d * sc[is + 6] * q4;
          }
          out += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      return;
    default:
      return;
  }
}

}  // namespace shardserve
