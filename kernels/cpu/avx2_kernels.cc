// AVX2/FMA/F16C fast paths. This file alone is compiled with -mavx2 -mfma -mf16c; the backend
// calls into it only when CpuHasAvx2Fma() is true, so the binary still runs on older CPUs.
#include <cpuid.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/quant.h"

namespace shardserve::cpu {
namespace {

inline float HorizontalSum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 shuf = _mm_movehdup_ps(lo);
  __m128 sums = _mm_add_ps(lo, shuf);
  shuf = _mm_movehl_ps(shuf, sums);
  sums = _mm_add_ss(sums, shuf);
  return _mm_cvtss_f32(sums);
}

template <DType T>
struct WeightLoader;

template <>
struct WeightLoader<DType::kF32> {
  using Elem = float;
  static __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
  static float Load1(const float* p) { return *p; }
};

template <>
struct WeightLoader<DType::kF16> {
  using Elem = uint16_t;
  static __m256 Load8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float Load1(const uint16_t* p) { return F16ToF32(*p); }
};

template <>
struct WeightLoader<DType::kBF16> {
  using Elem = uint16_t;
  static __m256 Load8(const uint16_t* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float Load1(const uint16_t* p) { return Bf16ToF32(*p); }
};

// Four weight rows against up to two inputs at a time: four independent memory streams per
// thread, and each weight vector loaded once per input pair (re-reads hit L1/L2).
template <DType T>
void GemvRowsT(const GemvArgs& a, int64_t j0, int64_t j1) {
  using L = WeightLoader<T>;
  using E = typename L::Elem;
  const E* w = static_cast<const E*>(a.w);
  const int64_t k = a.k;
  const int64_t k8 = k & ~int64_t{7};
  int64_t j = j0;
  if (a.n == 1) {
    // Decode: eight rows at once, eight memory streams per thread.
    const float* xa = a.x;
    for (; j + 8 <= j1; j += 8) {
      const E* r[8];
      for (int q = 0; q < 8; ++q) r[q] = w + (j + q) * k;
      __m256 acc[8];
      for (auto& v : acc) v = _mm256_setzero_ps();
      for (int64_t c = 0; c < k8; c += 8) {
        const __m256 va = _mm256_loadu_ps(xa + c);
        for (int q = 0; q < 8; ++q) acc[q] = _mm256_fmadd_ps(L::Load8(r[q] + c), va, acc[q]);
      }
      for (int q = 0; q < 8; ++q) {
        float s = HorizontalSum(acc[q]);
        for (int64_t c = k8; c < k; ++c) s += L::Load1(r[q] + c) * xa[c];
        a.out[j + q] = s + (a.bias != nullptr ? a.bias[j + q] : 0.0f);
      }
    }
  }
  for (; j + 4 <= j1; j += 4) {
    const E* w0 = w + (j + 0) * k;
    const E* w1 = w + (j + 1) * k;
    const E* w2 = w + (j + 2) * k;
    const E* w3 = w + (j + 3) * k;
    int64_t i = 0;
    for (; i + 2 <= a.n; i += 2) {
      const float* xa = a.x + i * a.x_stride;
      const float* xb = xa + a.x_stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
      __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(),
             b3 = _mm256_setzero_ps();
      for (int64_t c = 0; c < k8; c += 8) {
        const __m256 va = _mm256_loadu_ps(xa + c);
        const __m256 vb = _mm256_loadu_ps(xb + c);
        const __m256 r0 = L::Load8(w0 + c);
        const __m256 r1 = L::Load8(w1 + c);
        const __m256 r2 = L::Load8(w2 + c);
        const __m256 r3 = L::Load8(w3 + c);
        a0 = _mm256_fmadd_ps(r0, va, a0);
        a1 = _mm256_fmadd_ps(r1, va, a1);
        a2 = _mm256_fmadd_ps(r2, va, a2);
        a3 = _mm256_fmadd_ps(r3, va, a3);
        b0 = _mm256_fmadd_ps(r0, vb, b0);
        b1 = _mm256_fmadd_ps(r1, vb, b1);
        b2 = _mm256_fmadd_ps(r2, vb, b2);
        b3 = _mm256_fmadd_ps(r3, vb, b3);
      }
      float sa[4] = {HorizontalSum(a0), HorizontalSum(a1), HorizontalSum(a2), HorizontalSum(a3)};
      float sb[4] = {HorizontalSum(b0), HorizontalSum(b1), HorizontalSum(b2), HorizontalSum(b3)};
      const E* rows[4] = {w0, w1, w2, w3};
      for (int r = 0; r < 4; ++r) {
        for (int64_t c = k8; c < k; ++c) {
          const float wv = L::Load1(rows[r] + c);
          sa[r] += wv * xa[c];
          sb[r] += wv * xb[c];
        }
        const float bias = a.bias != nullptr ? a.bias[j + r] : 0.0f;
        a.out[i * a.out_stride + j + r] = sa[r] + bias;
        a.out[(i + 1) * a.out_stride + j + r] = sb[r] + bias;
      }
    }
    for (; i < a.n; ++i) {
      const float* xa = a.x + i * a.x_stride;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
      for (int64_t c = 0; c < k8; c += 8) {
        const __m256 va = _mm256_loadu_ps(xa + c);
        a0 = _mm256_fmadd_ps(L::Load8(w0 + c), va, a0);
        a1 = _mm256_fmadd_ps(L::Load8(w1 + c), va, a1);
        a2 = _mm256_fmadd_ps(L::Load8(w2 + c), va, a2);
        a3 = _mm256_fmadd_ps(L::Load8(w3 + c), va, a3);
      }
      float sa[4] = {HorizontalSum(a0), HorizontalSum(a1), HorizontalSum(a2), HorizontalSum(a3)};
      const E* rows[4] = {w0, w1, w2, w3};
      for (int r = 0; r < 4; ++r) {
        for (int64_t c = k8; c < k; ++c) sa[r] += L::Load1(rows[r] + c) * xa[c];
        a.out[i * a.out_stride + j + r] = sa[r] + (a.bias != nullptr ? a.bias[j + r] : 0.0f);
      }
    }
  }
  for (; j < j1; ++j) {
    const E* wr = w + j * k;
    for (int64_t i = 0; i < a.n; ++i) {
      const float* xa = a.x + i * a.x_stride;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < k8; c += 8) {
        acc = _mm256_fmadd_ps(L::Load8(wr + c), _mm256_loadu_ps(xa + c), acc);
      }
      float s = HorizontalSum(acc);
      for (int64_t c = k8; c < k; ++c) s += L::Load1(wr + c) * xa[c];
      a.out[i * a.out_stride + j] = s + (a.bias != nullptr ? a.bias[j] : 0.0f);
    }
  }
}

template <DType T>
void ConvertRowsT(const void* wv, int64_t k, int64_t r0, int64_t r1, float* dst) {
  using L = WeightLoader<T>;
  using E = typename L::Elem;
  const E* w = static_cast<const E*>(wv);
  const int64_t total = (r1 - r0) * k;
  const E* src = w + r0 * k;
  int64_t c = 0;
  for (; c + 8 <= total; c += 8) _mm256_storeu_ps(dst + c, L::Load8(src + c));
  for (; c < total; ++c) dst[c] = L::Load1(src + c);
}

inline float Dot(const float* a, const float* b, int64_t n) {
  int64_t d = 0;
  __m256 acc = _mm256_setzero_ps();
  for (; d + 8 <= n; d += 8)
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), acc);
  float s = HorizontalSum(acc);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

}  // namespace

void Avx2GemvRows(const GemvArgs& a, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::kF32:
      return GemvRowsT<DType::kF32>(a, j0, j1);
    case DType::kF16:
      return GemvRowsT<DType::kF16>(a, j0, j1);
    case DType::kBF16:
      return GemvRowsT<DType::kBF16>(a, j0, j1);
    default:
      return;
  }
}

void Avx2ConvertRows(const void* w, DType wt, int64_t k, int64_t r0, int64_t r1, float* dst) {
  switch (wt) {
    case DType::kF32:
      return ConvertRowsT<DType::kF32>(w, k, r0, r1, dst);
    case DType::kF16:
      return ConvertRowsT<DType::kF16>(w, k, r0, r1, dst);
    case DType::kBF16:
      return ConvertRowsT<DType::kBF16>(w, k, r0, r1, dst);
    default:
      return;
  }
}

namespace {

// exp(x) for x <= 0 (softmax inputs after subtracting the max): Cody-Waite range reduction and a
// degree-6 polynomial, relative error about 2e-7; x below -87 gives 0.
inline __m256 ExpNonPositive(__m256 x) {
  const __m256 min_x = _mm256_set1_ps(-87.0f);
  const __m256 underflow = _mm256_cmp_ps(x, min_x, _CMP_LT_OQ);
  x = _mm256_max_ps(x, min_x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// s[0, len) = exp(scale * (s[i] - max over s)); returns their sum (the softmax before
// normalising).
float ExpFromMax(float* s, int64_t len, float scale) {
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + i));
  float lanes[8];
  _mm256_storeu_ps(lanes, vmax);
  float max_score = -INFINITY;
  for (float v : lanes) max_score = std::max(max_score, v);
  for (; i < len; ++i) max_score = std::max(max_score, s[i]);
  const __m256 vs = _mm256_set1_ps(scale), vm = _mm256_set1_ps(scale * max_score);
  __m256 vsum = _mm256_setzero_ps();
  i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 e = ExpNonPositive(_mm256_fmsub_ps(_mm256_loadu_ps(s + i), vs, vm));
    _mm256_storeu_ps(s + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = HorizontalSum(vsum);
  for (; i < len; ++i) {
    s[i] = std::exp(scale * s[i] - scale * max_score);
    sum += s[i];
  }
  return sum;
}

}  // namespace

namespace {

// Calls fn(t0, n, first) for each block of the sequence's cache: positions [t0, t0 + n) live in
// consecutive slots starting at `first` (no division per position).
template <typename Fn>
inline void ForEachBlock(const AttentionArgs& a, const float* base, Fn fn) {
  for (int64_t b = 0, t0 = 0; t0 < a.len; ++b, t0 += a.block_size) {
    fn(t0, std::min(a.block_size, a.len - t0),
       base + a.block_table[b] * a.block_size * a.kv_stride);
  }
}

// out = sum_t p[t] * value(t), with the head_dim / 8 partial sums held in registers.
template <int kChunks>
void WeightedValues(const AttentionArgs& a, float inv) {
  __m256 acc[kChunks];
  for (auto& v : acc) v = _mm256_setzero_ps();
  ForEachBlock(a, a.v_base, [&](int64_t t0, int64_t n, const float* first) {
    for (int64_t i = 0; i < n; ++i) {
      const float* value = first + i * a.kv_stride;
      const __m256 vp = _mm256_set1_ps(a.scores[t0 + i]);
      for (int c = 0; c < kChunks; ++c) {
        acc[c] = _mm256_fmadd_ps(vp, _mm256_loadu_ps(value + 8 * c), acc[c]);
      }
    }
  });
  const __m256 vi = _mm256_set1_ps(inv);
  for (int c = 0; c < kChunks; ++c) _mm256_storeu_ps(a.out + 8 * c, _mm256_mul_ps(acc[c], vi));
}

}  // namespace

void Avx2SoftmaxRow(float* s, int64_t len, float scale) {
  const float sum = ExpFromMax(s, len, scale);
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) _mm256_storeu_ps(s + i, _mm256_mul_ps(_mm256_loadu_ps(s + i), inv));
  for (; i < len; ++i) s[i] *= 1.0f / sum;
}

void Avx2AttentionHead(const AttentionArgs& a) {
  const int64_t hd = a.head_dim;
  const int64_t hd8 = hd & ~int64_t{7};
  // Scores, four keys at a time so the four horizontal sums share one reduction.
  ForEachBlock(a, a.k_base, [&](int64_t t0, int64_t n, const float* first) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
      const float* k0 = first + i * a.kv_stride;
      const float* k1 = k0 + a.kv_stride;
      const float* k2 = k1 + a.kv_stride;
      const float* k3 = k2 + a.kv_stride;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
             s3 = _mm256_setzero_ps();
      for (int64_t d = 0; d < hd8; d += 8) {
        const __m256 qv = _mm256_loadu_ps(a.q + d);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(k0 + d), qv, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(k1 + d), qv, s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(k2 + d), qv, s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(k3 + d), qv, s3);
      }
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
      __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      float out[4];
      _mm_storeu_ps(out, sums);
      for (int64_t d = hd8; d < hd; ++d) {
        out[0] += a.q[d] * k0[d];
        out[1] += a.q[d] * k1[d];
        out[2] += a.q[d] * k2[d];
        out[3] += a.q[d] * k3[d];
      }
      std::memcpy(a.scores + t0 + i, out, sizeof(out));
    }
    for (; i < n; ++i) a.scores[t0 + i] = Dot(a.q, first + i * a.kv_stride, hd);
  });

  // The weights, normalised where the values are summed.
  const float sum = ExpFromMax(a.scores, a.len, 1.0f);

  const float inv = 1.0f / sum;
  switch (hd) {  // the common head sizes keep the output in registers
    case 64:
      return WeightedValues<8>(a, inv);
    case 128:
      return WeightedValues<16>(a, inv);
    default:
      break;
  }
  for (int64_t d = 0; d < hd; ++d) a.out[d] = 0.0f;
  ForEachBlock(a, a.v_base, [&](int64_t t0, int64_t n, const float* first) {
    for (int64_t j = 0; j < n; ++j) {
      const float* value = first + j * a.kv_stride;
      const float p = a.scores[t0 + j] * inv;
      const __m256 vp = _mm256_set1_ps(p);
      int64_t d = 0;
      for (; d < hd8; d += 8) {
        _mm256_storeu_ps(
            a.out + d, _mm256_fmadd_ps(vp, _mm256_loadu_ps(value + d), _mm256_loadu_ps(a.out + d)));
      }
      for (; d < hd; ++d) a.out[d] += p * value[d];
    }
  });
}

bool CpuHasAvx2Fma() {
  __builtin_cpu_init();
  // clang 14's __builtin_cpu_supports does not know "f16c": read CPUID leaf 1 instead.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
}

}  // namespace shardserve::cpu

// Quantized weights (Q8_0 / Q4_0 / IQ4_NL) against Q8 activation blocks: integer dot products per
// block (sign trick + maddubs, as llama.cpp does), four weight rows at a time.
namespace shardserve::cpu {
namespace {

inline __m256i LoadQuantBlock(DType dt, const uint8_t* block) {
  if (dt == DType::kQ8_0) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 2));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(packed, mask);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
  if (dt == DType::kIQ4_NL) {  // the nibbles index the format's signed levels
    const __m128i levels = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIq4NlValues));
    return _mm256_set_m128i(_mm_shuffle_epi8(levels, hi), _mm_shuffle_epi8(levels, lo));
  }
  return _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8));
}

inline __m256 BlockDot(__m256i w, __m256i x) {
  const __m256i ax = _mm256_sign_epi8(w, w);
  const __m256i sy = _mm256_sign_epi8(x, w);
  const __m256i dot16 = _mm256_maddubs_epi16(ax, sy);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(dot16, _mm256_set1_epi16(1)));
}

inline float HalfToFloat(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

}  // namespace

void Avx2QuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                       int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                       int64_t j0, int64_t j1) {
  const size_t bb = DTypeBlockBytes(dt);
  const int64_t nb = k / 32;
  const size_t row_bytes = nb * bb;
  const auto* base = static_cast<const uint8_t*>(w);
  int64_t j = j0;
  if (n == 1) {  // decode: eight rows, eight memory streams
    for (; j + 8 <= j1; j += 8) {
      const uint8_t* r[8];
      for (int q = 0; q < 8; ++q) r[q] = base + (j + q) * row_bytes;
      __m256 acc[8];
      for (auto& v : acc) v = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].q));
        const float xd = xq[b].d;
        for (int q = 0; q < 8; ++q) {
          const uint8_t* blk = r[q] + b * bb;
          _mm_prefetch(reinterpret_cast<const char*>(blk) + 640, _MM_HINT_T0);
          acc[q] = _mm256_fmadd_ps(_mm256_set1_ps(HalfToFloat(blk) * xd),
                                   BlockDot(LoadQuantBlock(dt, blk), xv), acc[q]);
        }
      }
      for (int q = 0; q < 8; ++q) out[j + q] = HorizontalSum(acc[q]) + (bias ? bias[j + q] : 0.0f);
    }
  }
  for (; j + 4 <= j1; j += 4) {
    const uint8_t* r[4];
    for (int q = 0; q < 4; ++q) r[q] = base + (j + q) * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const Q8Block* x = xq + i * xq_stride;
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                       _mm256_setzero_ps()};
      for (int64_t b = 0; b < nb; ++b) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
        for (int q = 0; q < 4; ++q) {
          const uint8_t* blk = r[q] + b * bb;
          const __m256 d = _mm256_set1_ps(HalfToFloat(blk) * x[b].d);
          acc[q] = _mm256_fmadd_ps(d, BlockDot(LoadQuantBlock(dt, blk), xv), acc[q]);
        }
      }
      for (int q = 0; q < 4; ++q) {
        out[i * out_stride + j + q] = HorizontalSum(acc[q]) + (bias ? bias[j + q] : 0.0f);
      }
    }
  }
  for (; j < j1; ++j) {
    const uint8_t* row = base + j * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const Q8Block* x = xq + i * xq_stride;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * bb;
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfToFloat(blk) * x[b].d),
                              BlockDot(LoadQuantBlock(dt, blk), xv), acc);
      }
      out[i * out_stride + j] = HorizontalSum(acc) + (bias ? bias[j] : 0.0f);
    }
  }
}

namespace {

// Byte v is 0xFF where bit v of `bits` is set: each byte takes the qh byte holding its bit, all
// other bits are set, and the byte is all ones exactly when its own bit was.
inline __m256i BitsToBytes(uint32_t bits) {
  const __m256i spread =
      _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                          _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101,
                                             0x0202020202020202, 0x0303030303030303));
  const __m256i others = _mm256_set1_epi64x(static_cast<long long>(0x7fbfdfeff7fbfdfeULL));
  return _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
}

}  // namespace

void Avx2Q5GemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                    int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                    int64_t j0, int64_t j1) {
  const bool q51 = dt == DType::kQ5_1;
  const size_t bb = DTypeBlockBytes(dt);
  const int64_t nb = k / 32;
  const auto* base = static_cast<const uint8_t*>(w);
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = base + j * nb * bb;
    for (int64_t i = 0; i < n; ++i) {
      const Q8Block* x = xq + i * xq_stride;
      __m256 acc = _mm256_setzero_ps();
      float mins = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = row + b * bb;
        uint32_t qh;
        std::memcpy(&qh, blk + Q5HighBitsAt(dt), 4);
        const __m128i packed =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + Q5QuantsAt(dt)));
        // Values 0-15 from the low nibbles, 16-31 from the high ones: bit v of qh is value v's.
        __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4),
                                     _mm_and_si128(packed, low4));
        q = _mm256_or_si256(q, _mm256_and_si256(BitsToBytes(qh), _mm256_set1_epi8(0x10)));
        if (!q51) q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[b].q));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfToFloat(blk) * x[b].d), BlockDot(q, xv), acc);
        if (q51) mins += HalfToFloat(blk + 2) * x[b].d * static_cast<float>(x[b].qsum);
      }
      out[i * out_stride + j] = HorizontalSum(acc) + mins + (bias ? bias[j] : 0.0f);
    }
  }
}

// K-quants against Q8 activation blocks. Each 32-value sub-block of a super-block meets exactly one
// activation block, so a sub-block's integer dot product is scaled once: Q4_K and Q5_K by
// d * scale (and less dmin * min * the activations' sum), Q6_K by d * the scale of each 16-value
// half.
namespace {

// The 6-bit scale and min of Q4_K sub-block j (ggml's get_scale_min_k4).
inline void ScaleMinK4(int j, const uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Unsigned 4-bit quants (0..15) . signed activations, as 8 int32 lane sums.
inline __m256i DotU8(__m256i w_unsigned, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w_unsigned, x), _mm256_set1_epi16(1));
}

// Q4_K, and Q5_K: Q4_K's nibbles with a fifth bit from qh (bit j of qh[l] for value l of
// sub-block j), stored between the scales and the nibbles.
template <DType T>
float KRowDot(const uint8_t* row, const Q8Block* x, int64_t supers) {
  constexpr bool kQ5 = T == DType::kQ5_K;
  constexpr int64_t bb = DTypeBlockBytes(T);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bit4 = _mm256_set1_epi8(0x10);
  __m256 acc = _mm256_setzero_ps();
  float mins = 0;
  for (int64_t s = 0; s < supers; ++s, row += bb, x += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + 4 * bb, _MM_HINT_T0);
    const float d = HalfToFloat(row), dmin = HalfToFloat(row + 2);
    const uint8_t* scales = row + 4;
    __m256i qh = kQ5 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16))
                     : _mm256_setzero_si256();
    const uint8_t* q = row + (kQ5 ? 48 : 16);
    for (int c = 0; c < 4; ++c, q += 32, qh = _mm256_srli_epi16(qh, 2)) {
      const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      __m256i lo = _mm256_and_si256(packed, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), low4);
      if constexpr (kQ5) {
        // qh shifted down by 2c: bits 0 and 1 of each byte (sub-blocks 2c and 2c + 1) moved to
        // bit 4. Shifts in 16-bit lanes bring the high byte's bits only into the low byte's top.
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(qh, 4), bit4));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(qh, 3), bit4));
      }
      for (int h = 0; h < 2; ++h) {
        const Q8Block& xb = x[2 * c + h];
        int sc, m;
        ScaleMinK4(2 * c + h, scales, &sc, &m);
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256i dot = DotU8(h == 0 ? lo : hi, xv);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * static_cast<float>(sc) * xb.d),
                              _mm256_cvtepi32_ps(dot), acc);
        mins += dmin * static_cast<float>(m) * xb.d * static_cast<float>(xb.qsum);
      }
    }
  }
  return HorizontalSum(acc) - mins;
}

float Q6KRowDot(const uint8_t* row, const Q8Block* x, int64_t supers) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i offset = _mm256_set1_epi8(32);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t s = 0; s < supers; ++s, row += 210, x += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + 840, _MM_HINT_T0);
    const float d = HalfToFloat(row + 208);
    const uint8_t* ql = row;
    const uint8_t* qh = row + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(row + 192);
    for (int h = 0; h < 2; ++h, ql += 64, qh += 32, sc += 8) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
      // The four 32-value groups of this half: low/high nibbles of ql, two high bits from qh.
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, low4),
                          _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(0x03)), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, low4),
                          _mm256_slli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(0x0C)), 2)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                          _mm256_and_si256(hb, _mm256_set1_epi8(0x30))),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                          _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8(-64)), 2)),
      };
      for (int g = 0; g < 4; ++g) {
        const Q8Block& xb = x[4 * h + g];
        const __m256i w = _mm256_sub_epi8(q[g], offset);  // -32..31
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.q));
        const __m256i dot =
            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w)),
                              _mm256_set1_epi16(1));
        // Lanes 0-3 hold the first 16 values (scale sc[2g]), lanes 4-7 the second (sc[2g+1]).
        const float dx = d * xb.d;
        const __m256 scale =
            _mm256_setr_m128(_mm_set1_ps(dx * sc[2 * g]), _mm_set1_ps(dx * sc[2 * g + 1]));
        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc);
      }
    }
  }
  return HorizontalSum(acc);
}

}  // namespace

void Avx2KQuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                        int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                        int64_t j0, int64_t j1) {
  const int64_t supers = k / 256;
  const size_t row_bytes = static_cast<size_t>(supers) * DTypeBlockBytes(dt);
  const auto* base = static_cast<const uint8_t*>(w);
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = base + j * row_bytes;
    for (int64_t i = 0; i < n; ++i) {
      const Q8Block* x = xq + i * xq_stride;
      const float dot = dt == DType::kQ4_K   ? KRowDot<DType::kQ4_K>(row, x, supers)
                        : dt == DType::kQ5_K ? KRowDot<DType::kQ5_K>(row, x, supers)
                                             : Q6KRowDot(row, x, supers);
      out[i * out_stride + j] = dot + (bias != nullptr ? bias[j] : 0.0f);
    }
  }
}

}  // namespace shardserve::cpu
