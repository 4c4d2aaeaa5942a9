// AVX-512 fast paths: decode GEMVs (one activation row, and 2 to 11), and the prefill GEMM for
// F32 and 16-bit weights.
// Compiled alone with -mavx512f -mavx512bw and called only when the CPU reports AVX-512
// (CpuHasAvx512()); every other shape uses the AVX2 kernels. In the GEMV, sixteen lanes per
// instruction halve the instruction count of the weight stream, which matters most for 16-bit
// weights, where widening costs as much as the multiply-add.
// GCC 12's _mm512_reduce_add_ps and _mm512_cvtph_ps start from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports inside the intrinsic headers (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernels/cpu/avx512_gemm.h"
#include "kernels/cpu/kernels.h"

namespace shardserve::cpu {
namespace {

template <DType T>
inline __m512 Load16(const void* p, int64_t c);

template <>
inline __m512 Load16<DType::kF32>(const void* p, int64_t c) {
  return _mm512_loadu_ps(static_cast<const float*>(p) + c);
}
template <>
inline __m512 Load16<DType::kF16>(const void* p, int64_t c) {
  return _mm512_cvtph_ps(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + c)));
}
template <>
inline __m512 Load16<DType::kBF16>(const void* p, int64_t c) {
  const __m256i h =
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + c));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <DType T>
inline float Load1(const void* p, int64_t c) {
  if constexpr (T == DType::kF32) return static_cast<const float*>(p)[c];
  if constexpr (T == DType::kF16) return F16ToF32(static_cast<const uint16_t*>(p)[c]);
  return Bf16ToF32(static_cast<const uint16_t*>(p)[c]);
}

// One row after the other, so each thread reads its weights as one sequential stream: on the
// AMD EPYC (Zen 4) this was tuned on, one core reads one stream at 28 GB/s but eight interleaved
// rows at 12 GB/s. Four accumulators keep the multiply-adds independent.
template <DType T>
void Gemv1(const GemvArgs& a, int64_t j0, int64_t j1) {
  const size_t es = DTypeSize(T);
  const auto* w = static_cast<const uint8_t*>(a.w);
  const int64_t k = a.k, k64 = k & ~int64_t{63}, k16 = k & ~int64_t{15};
  const float* x = a.x;
  for (int64_t j = j0; j < j1; ++j) {
    const void* row = w + j * k * es;
    __m512 acc[4];
    for (auto& v : acc) v = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c < k64; c += 64) {
      for (int u = 0; u < 4; ++u) {
        acc[u] =
            _mm512_fmadd_ps(Load16<T>(row, c + 16 * u), _mm512_loadu_ps(x + c + 16 * u), acc[u]);
      }
    }
    for (; c < k16; c += 16) {
      acc[0] = _mm512_fmadd_ps(Load16<T>(row, c), _mm512_loadu_ps(x + c), acc[0]);
    }
    float s = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    for (; c < k; ++c) s += Load1<T>(row, c) * x[c];
    a.out[j] = s + (a.bias != nullptr ? a.bias[j] : 0.0f);
  }
}

// N activation rows (2 to 11: a decode micro-batch) against R weight rows at a time (R = 2 from
// 6 activation rows up, where one activation load per multiply-add would leave the loads the
// limit; the two rows are adjacent, so the weights still stream as one region per thread), each
// weight vector meeting all N rows. With fewer than 4 rows each keeps two accumulators, so at
// least 4 chains of multiply-adds are in flight. From 6 rows up the loop is slow enough per
// weight byte that the hardware prefetcher fell behind (8-12 GB/s from memory against 40 from
// L2): each weight row prefetches 8 KiB ahead (docs/BENCHMARKS.md); below 6 rows it did not help.
template <DType T, int N, int R>
void GemvNR(const GemvArgs& a, int64_t j) {
  constexpr int kU = N < 4 ? 2 : 1;
  constexpr int kPrefetch = N >= 6 ? 8192 : 0;
  const size_t es = DTypeSize(T);
  const auto* w = static_cast<const uint8_t*>(a.w);
  const int64_t k = a.k, step = 16 * kU, kstep = k / step * step, k16 = k & ~int64_t{15};
  const void* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w + (j + r) * k * es;
  __m512 acc[R][N][kU];
  for (auto& by_row : acc) {
    for (auto& by_x : by_row) {
      for (auto& v : by_x) v = _mm512_setzero_ps();
    }
  }
  int64_t c = 0;
  for (; c < kstep; c += step) {
    for (int u = 0; u < kU; ++u) {
      __m512 wv[R];
      for (int r = 0; r < R; ++r) {
        if constexpr (kPrefetch > 0) {
          _mm_prefetch(static_cast<const char*>(rows[r]) + (c + 16 * u) * es + kPrefetch,
                       _MM_HINT_T0);
        }
        wv[r] = Load16<T>(rows[r], c + 16 * u);
      }
      for (int i = 0; i < N; ++i) {
        const __m512 xv = _mm512_loadu_ps(a.x + i * a.x_stride + c + 16 * u);
        for (int r = 0; r < R; ++r) acc[r][i][u] = _mm512_fmadd_ps(wv[r], xv, acc[r][i][u]);
      }
    }
  }
  for (; c < k16; c += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = Load16<T>(rows[r], c);
    for (int i = 0; i < N; ++i) {
      const __m512 xv = _mm512_loadu_ps(a.x + i * a.x_stride + c);
      for (int r = 0; r < R; ++r) acc[r][i][0] = _mm512_fmadd_ps(wv[r], xv, acc[r][i][0]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float bias = a.bias != nullptr ? a.bias[j + r] : 0.0f;
    for (int i = 0; i < N; ++i) {
      __m512 sum = acc[r][i][0];
      if constexpr (kU == 2) sum = _mm512_add_ps(sum, acc[r][i][1]);
      float v = _mm512_reduce_add_ps(sum);
      for (int64_t e = c; e < k; ++e) v += Load1<T>(rows[r], e) * a.x[i * a.x_stride + e];
      a.out[i * a.out_stride + j + r] = v + bias;
    }
  }
}

template <DType T, int N>
void GemvN(const GemvArgs& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  if constexpr (N >= 6) {
    for (; j + 2 <= j1; j += 2) GemvNR<T, N, 2>(a, j);
  }
  for (; j < j1; ++j) GemvNR<T, N, 1>(a, j);
}

template <DType T>
void GemvSmallN(const GemvArgs& a, int64_t j0, int64_t j1) {
  using Fn = void (*)(const GemvArgs&, int64_t, int64_t);
  static constexpr Fn kByN[12] = {nullptr,      nullptr,      &GemvN<T, 2>,  &GemvN<T, 3>,
                                  &GemvN<T, 4>, &GemvN<T, 5>, &GemvN<T, 6>,  &GemvN<T, 7>,
                                  &GemvN<T, 8>, &GemvN<T, 9>, &GemvN<T, 10>, &GemvN<T, 11>};
  kByN[a.n](a, j0, j1);
}

// fn(std::integral_constant<DType, T>{}) for the weight type T of a GEMV (F32, F16 or BF16).
template <typename Fn>
void ForWeightType(DType t, Fn fn) {
  switch (t) {
    case DType::kF32:
      return fn(std::integral_constant<DType, DType::kF32>{});
    case DType::kF16:
      return fn(std::integral_constant<DType, DType::kF16>{});
    case DType::kBF16:
      return fn(std::integral_constant<DType, DType::kBF16>{});
    default:
      return;
  }
}

}  // namespace

void Avx512GemvRowsSmallN(const GemvArgs& a, int64_t j0, int64_t j1) {
  ForWeightType(a.wt, [&](auto t) { GemvSmallN<decltype(t)::value>(a, j0, j1); });
}

void Avx512GemvRows1(const GemvArgs& a, int64_t j0, int64_t j1) {
  ForWeightType(a.wt, [&](auto t) { Gemv1<decltype(t)::value>(a, j0, j1); });
}

namespace {

// Prefill: a GEMM blocked for the caches, as BLIS and OpenBLAS block theirs, for F32, F16 and
// BF16 weights.
//
// - The activations are packed once per call, before the threads split the weight rows, into
//   blocks of kMr rows laid out k-major (xp[block][c][kMr]), zero past n.
// - Weight rows go in panels of kNr = 48, kGroup panels at a time. For each kKc-long slice of
//   k, each panel of the group is widened (16-bit weights) and transposed into wt[c][48]
//   (48 KiB per panel).
// - A tile of kMr activation rows x 48 weight rows keeps its 8 x 3 accumulators in registers
//   over the slice: each step loads three weight vectors, broadcasts kMr activations, and issues
//   24 multiply-adds. The tile adds into the output, which stays in L2 while the slices go by;
//   the group's panels share each activation slice while it is in L1.
// So no dot product is reduced across lanes, each weight is widened once per call, and each
// activation is read from beyond L2 once per group. Single-threaded, on the AMD EPYC (Zen 4) this
// was tuned on, it runs at about 100 GFLOP/s (bench/f16_gemm) where register-only FMAs reach 115;
// the row-dot tiles it replaced ran at 67. The shape was chosen from 8 x 3, 6 x 4, 12 x 2
// tiles and slices of 96 to 512.
constexpr int64_t kKc = 256;  // values of k per slice

// Activation rows [r0, r1) into xp[block][c][kMr] (block b holds rows kMr b ..), zero past n.
// Squares of 16 rows x 16 values go through registers; the ragged edges go one value at a time.
void PackActivations(const GemvArgs& a, int64_t r0, int64_t r1, float* xp) {
  static_assert(kMr == 8, "two blocks per 16-row square");
  const int64_t k = a.k, k16 = k & ~int64_t{15};
  for (int64_t i0 = r0; i0 < r1; i0 += 16) {
    const int64_t valid = std::min<int64_t>(16, a.n - i0);
    float* lo = xp + i0 * k;  // block i0 / 8
    float* hi = lo + 8 * k;   // block i0 / 8 + 1 (absent when the n rows end first)
    const bool two = valid > 8;
    int64_t c = 0;
    for (; c < k16; c += 16) {
      __m512 r[16];
      for (int m = 0; m < 16; ++m) {
        r[m] = m < valid ? _mm512_loadu_ps(a.x + (i0 + m) * a.x_stride + c) : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int e = 0; e < 16; ++e) {
        _mm256_storeu_ps(lo + (c + e) * 8, _mm512_castps512_ps256(r[e]));
        if (two) {
          _mm256_storeu_ps(hi + (c + e) * 8,
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r[e]), 1)));
        }
      }
    }
    for (; c < k; ++c) {
      for (int64_t m = 0; m < (two ? 16 : 8); ++m) {
        (m < 8 ? lo : hi)[c * 8 + m % 8] = m < valid ? a.x[(i0 + m) * a.x_stride + c] : 0.0f;
      }
    }
  }
}

// Weight rows [p, p + valid) (the rest zero), values [c0, c0 + kc), widened into wt[c][kNr].
template <DType T>
void PackWeights(const GemvArgs& a, int64_t p, int valid, int64_t c0, int64_t kc, float* wt) {
  const auto* base = static_cast<const uint8_t*>(a.w);
  const size_t row_bytes = DTypeSize(T) * static_cast<size_t>(a.k);
  for (int g = 0; g < kNr / 16; ++g) {
    int64_t c = 0;
    for (; c + 16 <= kc; c += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const int row = 16 * g + i;
        r[i] = row < valid ? Load16<T>(base + (p + row) * row_bytes, c0 + c) : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(wt + (c + i) * kNr + 16 * g, r[i]);
    }
    for (; c < kc; ++c) {
      for (int i = 0; i < 16; ++i) {
        const int row = 16 * g + i;
        wt[c * kNr + 16 * g + i] =
            row < valid ? Load1<T>(base + (p + row) * row_bytes, c0 + c) : 0.0f;
      }
    }
  }
}

// out[m][0, 16 NV) (+)= xp[c][m] * wt[c][0, 16 NV) over c < kc, for m < rows; `first` starts
// from the bias (or zero) instead of out. keep[v] masks the real columns of vector v. A panel's
// last rows may need fewer than kNv vectors.
template <int NV>
void Tile(const float* wt, const float* xp, int64_t kc, float* out, int64_t out_stride, int rows,
          const __mmask16 keep[kNv], bool first, const float* bias) {
  __m512 acc[kMr][NV];
  LoadTile<NV>(acc, out, out_stride, rows, keep, first, bias);
  for (int64_t c = 0; c < kc; ++c) {
    __m512 w[NV];
    for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_ps(wt + c * kNr + 16 * v);
    for (int m = 0; m < kMr; ++m) {
      const __m512 x = _mm512_set1_ps(xp[c * kMr + m]);
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(w[v], x, acc[m][v]);
    }
  }
  StoreTile<NV>(acc, out, out_stride, rows, keep);
}

template <DType T>
void Gemm(const GemvArgs& a, const float* xp, int64_t j0, int64_t j1) {
  BlockedGemm<float>(
      a, xp, a.k, kKc, j0, j1,
      [&a](int64_t p, int valid, int64_t c0, int64_t kc, float* wt) {
        PackWeights<T>(a, p, valid, c0, kc, wt);
      },
      [&a](auto nv, const float* wt, const float* x, int64_t kc, float* out, int rows,
           const __mmask16* keep, bool first, const float* bias) {
        Tile<decltype(nv)::value>(wt, x, kc, out, a.out_stride, rows, keep, first, bias);
      });
}

}  // namespace

int64_t Avx512GemmPackedFloats(const GemvArgs& a) { return (a.n + kMr - 1) / kMr * kMr * a.k; }

void Avx512PackGemmActivations(const GemvArgs& a, int64_t i0, int64_t i1, float* xp) {
  PackActivations(a, i0, i1, xp);
}

void Avx512GemmRows(const GemvArgs& a, const float* xp, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::kF32:
      return Gemm<DType::kF32>(a, xp, j0, j1);
    case DType::kF16:
      return Gemm<DType::kF16>(a, xp, j0, j1);
    case DType::kBF16:
      return Gemm<DType::kBF16>(a, xp, j0, j1);
    default:
      return;
  }
}

bool CpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

}  // namespace shardserve::cpu
