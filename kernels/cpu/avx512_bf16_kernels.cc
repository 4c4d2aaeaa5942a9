// BF16 weights on AVX512-BF16 (VDPBF16PS), the decode GEMV and the prefill GEMM: compiled alone
// with -mavx512bf16 and called only when the CPU reports it (CpuHasAvx512Bf16(); AMD Zen 4, Intel
// Xeon since Cooper Lake). The activations are rounded to BF16 (round to nearest even), as a
// GPU's tensor cores and llama.cpp's BF16 path take them, and each instruction multiplies 16
// pairs of BF16 values into F32 accumulators: twice the multiply-adds of an F32 FMA, and the
// weights are never widened.
//
// The blocking is avx512_kernels.cc's: activations packed once per call into blocks of kMr
// rows, k-major, but as BF16 pairs (xp[block][k / 2][kMr], one 32-bit word per pair); weight
// panels of 48 rows transposed per slice of kKc values into wt[k / 2][48] pairs; a tile of kMr
// rows x 48 keeps 24 accumulators over the slice, each step loading three weight vectors and
// broadcasting kMr activation pairs. An odd k ends in a pair whose second value is zero on both
// sides.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/avx512_gemm.h"
#include "kernels/cpu/kernels.h"

namespace shardserve::cpu {
namespace {

constexpr int64_t kKcp = 128;  // pairs of k per slice (256 values)

int64_t Pairs(int64_t k) { return (k + 1) / 2; }

// Row i of the activations as BF16 pairs into xp (block i / kMr, lane i % kMr); zeros when
// `row` is null.
void PackRow(const float* row, int64_t k, int64_t i, uint32_t* xp) {
  const int64_t kp = Pairs(k);
  uint32_t* dst = xp + (i / kMr) * kp * kMr + i % kMr;
  alignas(64) uint32_t pairs[16];
  for (int64_t c = 0; c < k; c += 32) {
    const int64_t left = k - c;
    __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
    if (row != nullptr) {
      const __mmask16 m_lo = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 m_hi =
          left >= 32 ? 0xFFFF : (left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1));
      lo = _mm512_maskz_loadu_ps(m_lo, row + c);
      hi = _mm512_maskz_loadu_ps(m_hi, row + c + 16);
    }
    // Values c .. c + 31 in order: 16 pairs.
    _mm512_store_si512(pairs, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    const int64_t n = std::min<int64_t>(16, kp - c / 2);
    for (int64_t e = 0; e < n; ++e) dst[(c / 2 + e) * kMr] = pairs[e];
  }
}

// Weight rows [p, p + valid) (the rest zero), pairs [cp0, cp0 + kcp), into wt[pair][kNr].
void PackWeights(const GemvArgs& a, int64_t p, int valid, int64_t cp0, int64_t kcp, uint32_t* wt) {
  const auto* base = static_cast<const uint16_t*>(a.w);
  const int64_t k = a.k;
  const bool odd = (k & 1) != 0;
  // Pairs read whole from the row: all but an odd k's last.
  const int64_t whole = std::min(kcp, k / 2 - cp0);
  for (int g = 0; g < kNr / 16; ++g) {
    int64_t c = 0;
    for (; c + 16 <= whole; c += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; ++i) {
        const int row = 16 * g + i;
        r[i] = row < valid
                   ? _mm512_castsi512_ps(_mm512_loadu_si512(base + (p + row) * k + 2 * (cp0 + c)))
                   : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(wt + (c + i) * kNr + 16 * g, r[i]);
    }
    for (; c < kcp; ++c) {
      for (int i = 0; i < 16; ++i) {
        const int row = 16 * g + i;
        uint32_t pair = 0;
        if (row < valid) {
          const uint16_t* v = base + (p + row) * k + 2 * (cp0 + c);
          if (odd && cp0 + c == k / 2) {
            pair = v[0];  // the last value and a zero
          } else {
            std::memcpy(&pair, v, sizeof(pair));
          }
        }
        wt[c * kNr + 16 * g + i] = pair;
      }
    }
  }
}

template <int NV>
void Tile(const uint32_t* wt, const uint32_t* xp, int64_t kcp, float* out, int64_t out_stride,
          int rows, const __mmask16 keep[kNv], bool first, const float* bias) {
  __m512 acc[kMr][NV];
  LoadTile<NV>(acc, out, out_stride, rows, keep, first, bias);
  for (int64_t c = 0; c < kcp; ++c) {
    __m512bh w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(wt + c * kNr + 16 * v));
    }
    for (int m = 0; m < kMr; ++m) {
      const __m512bh x =
          reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(xp[c * kMr + m])));
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], x, w[v]);
    }
  }
  StoreTile<NV>(acc, out, out_stride, rows, keep);
}

}  // namespace

void Avx512Bf16GemvRows1(const GemvArgs& a, int64_t j0, int64_t j1) {
  const int64_t k = a.k, kp = k / 2;  // whole pairs; an odd k's last value goes alone
  // The activation row as BF16 pairs, converted by each thread for its rows.
  thread_local std::vector<uint32_t> xb;
  xb.resize(static_cast<size_t>(kp + 16));
  for (int64_t c = 0; c < 2 * kp; c += 32) {
    const int64_t left = 2 * kp - c;
    const __mmask16 m_lo = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
    const __mmask16 m_hi =
        left >= 32 ? 0xFFFF : (left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1));
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m_hi, a.x + c + 16),
                                           _mm512_maskz_loadu_ps(m_lo, a.x + c));
    _mm512_storeu_si512(xb.data() + c / 2, reinterpret_cast<__m512i>(v));
  }
  const float last_x = (k & 1) != 0 ? Bf16ToF32(F32ToBf16(a.x[k - 1])) : 0.0f;
  const int64_t kp64 = kp & ~int64_t{63}, kp16 = kp & ~int64_t{15};
  const auto* w = static_cast<const uint16_t*>(a.w);
  for (int64_t j = j0; j < j1; ++j) {
    const uint16_t* row = w + j * k;
    __m512 acc[4];
    for (auto& v : acc) v = _mm512_setzero_ps();
    int64_t c = 0;  // pairs
    for (; c < kp64; c += 64) {
      for (int u = 0; u < 4; ++u) {
        acc[u] = _mm512_dpbf16_ps(
            acc[u], reinterpret_cast<__m512bh>(_mm512_loadu_si512(row + 2 * (c + 16 * u))),
            reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb.data() + c + 16 * u)));
      }
    }
    for (; c < kp16; c += 16) {
      acc[0] = _mm512_dpbf16_ps(acc[0], reinterpret_cast<__m512bh>(_mm512_loadu_si512(row + 2 * c)),
                                reinterpret_cast<__m512bh>(_mm512_loadu_si512(xb.data() + c)));
    }
    if (c < kp) {
      const __mmask16 m = static_cast<__mmask16>((1u << (kp - c)) - 1);
      acc[1] = _mm512_dpbf16_ps(
          acc[1], reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi32(m, row + 2 * c)),
          reinterpret_cast<__m512bh>(_mm512_maskz_loadu_epi32(m, xb.data() + c)));
    }
    float s = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    if ((k & 1) != 0) s += Bf16ToF32(row[k - 1]) * last_x;
    a.out[j] = s + (a.bias != nullptr ? a.bias[j] : 0.0f);
  }
}

int64_t Avx512Bf16GemmPackedWords(const GemvArgs& a) {
  return (a.n + kMr - 1) / kMr * kMr * Pairs(a.k);
}

void Avx512Bf16PackGemmActivations(const GemvArgs& a, int64_t i0, int64_t i1, uint32_t* xp) {
  for (int64_t i = i0; i < i1; ++i) PackRow(a.x + i * a.x_stride, a.k, i, xp);
  // The last block's rows past n are zero.
  if (i1 == a.n) {
    for (int64_t i = a.n; i % kMr != 0; ++i) PackRow(nullptr, a.k, i, xp);
  }
}

void Avx512Bf16GemmRows(const GemvArgs& a, const uint32_t* xp, int64_t j0, int64_t j1) {
  BlockedGemm<uint32_t>(
      a, xp, Pairs(a.k), kKcp, j0, j1,
      [&a](int64_t p, int valid, int64_t cp0, int64_t kcp, uint32_t* wt) {
        PackWeights(a, p, valid, cp0, kcp, wt);
      },
      [&a](auto nv, const uint32_t* wt, const uint32_t* x, int64_t kcp, float* out, int rows,
           const __mmask16* keep, bool first, const float* bias) {
        Tile<decltype(nv)::value>(wt, x, kcp, out, a.out_stride, rows, keep, first, bias);
      });
}

bool CpuHasAvx512Bf16() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

}  // namespace shardserve::cpu
