// AVX-512 fast path for single-row decode GEMV. Compiled alone with -mavx512f -mavx512bw and
// called only when the CPU reports AVX-512 (CpuHasAvx512()); every other shape uses the AVX2
// kernels. Sixteen lanes per instruction halve the instruction count of the weight stream, which
// matters most for 16-bit weights, where widening costs as much as the multiply-add.
// GCC 12's _mm512_reduce_add_ps and _mm512_cvtph_ps start from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports inside the intrinsic headers (a false positive).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <vector>

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

}  // namespace

void Avx512GemvRows1(const GemvArgs& a, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::kF32:
      return Gemv1<DType::kF32>(a, j0, j1);
    case DType::kF16:
      return Gemv1<DType::kF16>(a, j0, j1);
    case DType::kBF16:
      return Gemv1<DType::kBF16>(a, j0, j1);
    default:
      return;
  }
}

namespace {

// Prefill from 16-bit weights: panels of kPanel rows widened to F32 once, then tiles of kR weight
// rows x kM activation rows as dot products along k (kR x kM accumulators), so neither operand
// is packed again per tile.
constexpr int64_t kPanel = 32;
constexpr int kR = 4;
constexpr int kM = 6;

template <int R, int M>
void DotTile(const float* w, int64_t k, const float* const* x, const float* bias, float* out,
             int64_t out_stride, int64_t j, int64_t i) {
  const int64_t k16 = k & ~int64_t{15};
  __m512 acc[R][M];
  for (auto& row : acc) {
    for (auto& v : row) v = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < k16; c += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w + r * k + c);
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_loadu_ps(x[m] + c);
      for (int r = 0; r < R; ++r) acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int m = 0; m < M; ++m) {
      float s = _mm512_reduce_add_ps(acc[r][m]);
      for (int64_t c = k16; c < k; ++c) s += w[r * k + c] * x[m][c];
      out[(i + m) * out_stride + j + r] = s + (bias != nullptr ? bias[j + r] : 0.0f);
    }
  }
}

template <DType T>
void Gemm(const GemvArgs& a, int64_t j0, int64_t j1) {
  const int64_t k = a.k;
  thread_local std::vector<float> panel;
  panel.resize(static_cast<size_t>(kPanel * k));
  for (int64_t p = j0; p < j1; p += kPanel) {
    const int64_t rows = std::min(kPanel, j1 - p);
    Avx2ConvertRows(a.w, T, k, p, p + rows, panel.data());
    for (int64_t i = 0; i < a.n; i += kM) {
      const int m = static_cast<int>(std::min<int64_t>(kM, a.n - i));
      const float* x[kM];
      for (int q = 0; q < m; ++q) x[q] = a.x + (i + q) * a.x_stride;
      int64_t r = 0;
      if (m == kM) {
        for (; r + kR <= rows; r += kR) {
          DotTile<kR, kM>(panel.data() + r * k, k, x, a.bias, a.out, a.out_stride, p + r, i);
        }
      }
      for (; r < rows; ++r) {  // the edges: one weight row, one activation row at a time
        for (int q = 0; q < m; ++q) {
          DotTile<1, 1>(panel.data() + r * k, k, &x[q], a.bias, a.out, a.out_stride, p + r, i + q);
        }
      }
    }
  }
}

}  // namespace

void Avx512GemmRows(const GemvArgs& a, int64_t j0, int64_t j1) {
  switch (a.wt) {
    case DType::kF16:
      return Gemm<DType::kF16>(a, j0, j1);
    case DType::kBF16:
      return Gemm<DType::kBF16>(a, j0, j1);
    default:
      return;
  }
}

bool CpuHasAvx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

}  // namespace shardserve::cpu
