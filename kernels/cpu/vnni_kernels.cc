// Decode GEMV for Q8_0 / Q4_0 weights with AVX-VNNI (vpdpbusd: unsigned x signed bytes summed
// into 32-bit lanes in one instruction). Compiled alone with -mavxvnni and called only when the
// CPU reports it. Q4_0 nibbles are used unsigned (0..15) and the -8 offset enters through the
// accumulator's initial value (-8 x the activation block's sum), which saves the sign juggling of
// the AVX2 kernel.
#include <cpuid.h>
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/quant.h"

namespace shardserve::cpu {
namespace {

inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

inline float Sum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <DType T>
void Rows1(const uint8_t* base, int64_t k, const Q8Block* xq, const float* bias, float* out,
           int64_t j0, int64_t j1) {
  constexpr size_t bb = T == DType::kQ8_0 ? 34 : 18;
  const int64_t nb = k / 32;
  const size_t row_bytes = nb * bb;
  const __m128i low4 = _mm_set1_epi8(0x0F);
  // `init` carries -8 * sum(x) in one lane for Q4_0, so the lane sum is sum((w - 8) * x).
  auto one_row_block = [&](const uint8_t* blk, __m256i xv, __m256i init, float xd, __m256& acc) {
    __m256i dot;
    if constexpr (T == DType::kQ8_0) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
      dot = _mm256_dpbusd_avx_epi32(init, _mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
    } else {
      const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
      const __m256i w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low4),
                                         _mm_and_si128(packed, low4));
      dot = _mm256_dpbusd_avx_epi32(init, w, xv);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(HalfAt(blk) * xd), _mm256_cvtepi32_ps(dot), acc);
  };
  auto init_for = [&](const Q8Block& x) {
    return T == DType::kQ4_0 ? _mm256_castsi128_si256(_mm_cvtsi32_si128(-8 * x.qsum))
                             : _mm256_setzero_si256();
  };
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8) {
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].q));
      const __m256i init = init_for(xq[b]);
      const float xd = xq[b].d;
      for (int q = 0; q < 8; ++q) {
        const uint8_t* blk = base + (j + q) * row_bytes + b * bb;
        _mm_prefetch(reinterpret_cast<const char*>(blk) + 640, _MM_HINT_T0);
        one_row_block(blk, xv, init, xd, acc[q]);
      }
    }
    for (int q = 0; q < 8; ++q) out[j + q] = Sum8(acc[q]) + (bias ? bias[j + q] : 0.0f);
  }
  for (; j < j1; ++j) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[b].q));
      one_row_block(base + j * row_bytes + b * bb, xv, init_for(xq[b]), xq[b].d, acc);
    }
    out[j] = Sum8(acc) + (bias ? bias[j] : 0.0f);
  }
}

}  // namespace

void VnniQuantGemvRows1(DType dt, const void* w, int64_t k, const Q8Block* xq, const float* bias,
                        float* out, int64_t j0, int64_t j1) {
  const auto* base = static_cast<const uint8_t*>(w);
  if (dt == DType::kQ8_0) {
    Rows1<DType::kQ8_0>(base, k, xq, bias, out, j0, j1);
  } else if (dt == DType::kQ4_0) {
    Rows1<DType::kQ4_0>(base, k, xq, bias, out, j0, j1);
  }
}

bool CpuHasAvxVnni() {
  __builtin_cpu_init();
  // clang 14's __builtin_cpu_supports does not know "avxvnni": CPUID leaf 7, subleaf 1, EAX
  // bit 4.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool vnni = __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4)) != 0;
  return vnni && __builtin_cpu_supports("avx2");
}

}  // namespace shardserve::cpu
