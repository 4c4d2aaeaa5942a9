// What the AVX-512 prefill GEMMs share (avx512_kernels.cc for F32 and 16-bit weights with F32
// activations, avx512_bf16_kernels.cc for BF16 pairs): the 16 x 16 transpose of 32-bit lanes
// their panels are packed with, and the blocked loop over weight panels, k slices and
// activation blocks around their register tiles. Include only from translation units compiled
// with -mavx512f; each instantiates the templates with its own element type and kernels.
#ifndef SHARDSERVE_KERNELS_CPU_AVX512_GEMM_H_
#define SHARDSERVE_KERNELS_CPU_AVX512_GEMM_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace shardserve::cpu {
// Internal linkage: the including files are compiled for different instruction sets, so each
// keeps its own copies rather than the linker merging them into one.
namespace {  // NOLINT(build/namespaces)

constexpr int kNv = 3;         // vectors of a packed weight slice per panel (tiles of up to 3)
constexpr int kNr = 16 * kNv;  // weight rows per panel
constexpr int kMr = 8;         // activation rows per tile
constexpr int kGroup = 4;      // panels that share each activation slice

// In-place transpose of 16 rows of 16 floats.
inline void Transpose16(__m512 r[16]) {
  __m512 a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // b[4j + q], 128-bit lane L: column 4L + q of rows 4j .. 4j + 3.
  for (int j = 0; j < 4; ++j) {
    const __m512d a0 = _mm512_castps_pd(a[4 * j]), a1 = _mm512_castps_pd(a[4 * j + 1]);
    const __m512d a2 = _mm512_castps_pd(a[4 * j + 2]), a3 = _mm512_castps_pd(a[4 * j + 3]);
    b[4 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
    b[4 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
    b[4 * j + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
    b[4 * j + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
  }
  // Column 4L + q gathers lane L of b[q], b[4 + q], b[8 + q], b[12 + q].
  for (int q = 0; q < 4; ++q) {
    const __m512 c0 = _mm512_shuffle_f32x4(b[q], b[4 + q], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 c1 = _mm512_shuffle_f32x4(b[q], b[4 + q], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 c2 = _mm512_shuffle_f32x4(b[8 + q], b[12 + q], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 c3 = _mm512_shuffle_f32x4(b[8 + q], b[12 + q], _MM_SHUFFLE(3, 2, 3, 2));
    r[q] = _mm512_shuffle_f32x4(c0, c2, _MM_SHUFFLE(2, 0, 2, 0));
    r[4 + q] = _mm512_shuffle_f32x4(c0, c2, _MM_SHUFFLE(3, 1, 3, 1));
    r[8 + q] = _mm512_shuffle_f32x4(c1, c3, _MM_SHUFFLE(2, 0, 2, 0));
    r[12 + q] = _mm512_shuffle_f32x4(c1, c3, _MM_SHUFFLE(3, 1, 3, 1));
  }
}

// The tile's accumulators: the bias (or zero) when `first`, else the output so far; keep[v]
// masks the real columns of vector v.
template <int NV>
inline void LoadTile(__m512 (&acc)[kMr][NV], const float* out, int64_t out_stride, int rows,
                     const __mmask16 keep[kNv], bool first, const float* bias) {
  for (int m = 0; m < kMr; ++m) {
    for (int v = 0; v < NV; ++v) {
      if (first) {
        acc[m][v] =
            bias != nullptr ? _mm512_maskz_loadu_ps(keep[v], bias + 16 * v) : _mm512_setzero_ps();
      } else {
        acc[m][v] = m < rows ? _mm512_maskz_loadu_ps(keep[v], out + m * out_stride + 16 * v)
                             : _mm512_setzero_ps();
      }
    }
  }
}

template <int NV>
inline void StoreTile(const __m512 (&acc)[kMr][NV], float* out, int64_t out_stride, int rows,
                      const __mmask16 keep[kNv]) {
  for (int m = 0; m < rows; ++m) {
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(out + m * out_stride + 16 * v, keep[v], acc[m][v]);
  }
}

// Rows [j0, j1) of out = x w^T (+ bias), blocked for the caches. The activations `xp` are packed
// k-major in blocks of kMr rows, `units` elements of type E per row (values, or pairs of
// values); weights go kGroup panels of kNr rows at a time, in slices of `slice` units that
// pack(row, valid, u0, count, wt) lays out as wt[unit][kNr]. tile(nv, wt, x, count, out, rows,
// keep, first, bias), nv a std::integral_constant of 1 to kNv, adds a slice into a tile.
template <typename E, typename Pack, typename TileFn>
void BlockedGemm(const GemvArgs& a, const E* xp, int64_t units, int64_t slice, int64_t j0,
                 int64_t j1, Pack pack, TileFn tile) {
  const int64_t blocks = (a.n + kMr - 1) / kMr;
  thread_local std::vector<E> wt;
  wt.resize(static_cast<size_t>(kGroup * slice * kNr));
  // kGroup panels at a time share each activation slice, read once per group.
  for (int64_t g = j0; g < j1; g += kGroup * kNr) {
    const int panels = static_cast<int>(std::min<int64_t>(kGroup, (j1 - g + kNr - 1) / kNr));
    int valid[kGroup];
    __mmask16 keep[kGroup][kNv];
    for (int q = 0; q < panels; ++q) {
      valid[q] = static_cast<int>(std::min<int64_t>(kNr, j1 - g - q * kNr));
      for (int v = 0; v < kNv; ++v) {
        const int bits = std::clamp(valid[q] - 16 * v, 0, 16);
        keep[q][v] = static_cast<__mmask16>((1u << bits) - 1);
      }
    }
    for (int64_t u0 = 0; u0 < units; u0 += slice) {
      const int64_t count = std::min(slice, units - u0);
      for (int q = 0; q < panels; ++q) {
        pack(g + q * kNr, valid[q], u0, count, wt.data() + q * slice * kNr);
      }
      for (int64_t b = 0; b < blocks; ++b) {
        const E* x = xp + (b * units + u0) * kMr;
        const int rows = static_cast<int>(std::min<int64_t>(kMr, a.n - b * kMr));
        for (int q = 0; q < panels; ++q) {
          const int64_t p = g + q * kNr;
          const E* w = wt.data() + q * slice * kNr;
          float* out = a.out + b * kMr * a.out_stride + p;
          const float* bias = a.bias != nullptr ? a.bias + p : nullptr;
          const bool first = u0 == 0;
          if (valid[q] > 32) {
            tile(std::integral_constant<int, 3>(), w, x, count, out, rows, keep[q], first, bias);
          } else if (valid[q] > 16) {
            tile(std::integral_constant<int, 2>(), w, x, count, out, rows, keep[q], first, bias);
          } else {
            tile(std::integral_constant<int, 1>(), w, x, count, out, rows, keep[q], first, bias);
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace shardserve::cpu

#endif  // SHARDSERVE_KERNELS_CPU_AVX512_GEMM_H_
