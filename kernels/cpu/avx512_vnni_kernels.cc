// Quantized GEMV with 512-bit VNNI dot products (vpdpbusd on zmm: 64 unsigned x signed byte
// products summed into 16 int32 lanes per instruction), for Q8_0, Q4_0, Q5_0, Q5_1, IQ4_NL, Q4_K,
// Q5_K and Q6_K weights against Q8 activation blocks. Compiled alone with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni and called only when the CPU reports them (CpuHasAvx512Vnni()); AMD Zen 4
// and Intel Xeon since Cascade Lake have them.
//
// Each call first lays the activations out in the order the weight bytes unpack to, so one
// 64-byte weight vector meets one 64-byte activation vector: Q4_0 nibbles of two blocks, Q4_K
// and Q5_K sub-blocks (0,2), (1,3), (4,6), (5,7) of a super-block, Q6_K in value order. Weights
// are used unsigned (Q8_0 and IQ4_NL's levels plus 128, Q4_0 and Q4_K nibbles 0..15, Q5_K 0..31,
// Q6_K 0..63), and each format's offset enters through the accumulator's initial value (minus
// offset x the activations' sum), so no sign juggling is needed. Scales are applied in F32 per
// 32-value block (Q6_K: per 16 values), so results equal RefQuantDot's up to float rounding.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/quant.h"

namespace shardserve::cpu {
namespace {

inline uint16_t U16At(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

inline uint32_t U32At(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The weights are read one row after the other: one sequential stream per thread. On the AMD
// EPYC (Zen 4) this was measured on, one core reads one stream at 28 GB/s and four interleaved
// streams at 12 GB/s (`membw --threads 1 --streams 1|4`), which decides decode speed. The
// row-at-a-time K-quant kernels and the Q4_0 ones also fetch this far ahead in software
// (bench/quant_gemv: Q4_K 15.5 -> 22 GB/s on one thread); Q8_0, which reads most bytes per
// instruction, runs fastest without, and so do the repacked Q4_K and Q6_K kernels at 2 threads
// (TinyLlama Q4_K_M decode 38.8 -> 41.8 tokens/s, Q6_K 32.1 -> 33.9, medians of 6 and 8
// interleaved runs).
constexpr int kPrefetch = 4096;

// The cache lines of the `bytes` bytes kPrefetch ahead of p.
inline void Prefetch(const uint8_t* p, int bytes) {
  for (int o = 0; o < bytes; o += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetch + o, _MM_HINT_T0);
  }
}

// Two F16 values at a and b as F32 lanes 0 and 1.
inline __m128 TwoHalves(const uint8_t* a, const uint8_t* b) {
  return _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(U16At(a) | (uint32_t{U16At(b)} << 16))));
}

// IQ4_NL's levels plus 128 (unsigned bytes for vpdpbusd, the offset taken off as Q8_0's is), in
// every 128-bit lane, for vpshufb on the nibbles.
inline __m512i Iq4NlLevels() {
  alignas(16) uint8_t lut[16];
  for (int i = 0; i < 16; ++i) lut[i] = static_cast<uint8_t>(kIq4NlValues[i] + 128);
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(lut)));
}

// Vector registers as vector elements (std::vector<I512> drops the type's attributes).
struct I512 {
  __m512i v;
};
struct F512 {
  __m512 v;
};
struct F256 {
  __m256 v;
};

// Activations of one row, laid out for one weight format: `q` in the order the weight vectors
// unpack to (64 bytes per step), `scale` the activation scale of each of a step's 16 int32 lanes,
// `init` the lanes' initial values (the weight offset times the activations' sums).
struct PackedRow {
  std::vector<I512> q;
  std::vector<F512> scale;
  std::vector<I512> init;
};

// Per-thread scratch: the calling thread lays out the activations for its own range of rows.
thread_local std::vector<PackedRow> packed_rows;

void Put16(int8_t* dst, const int8_t* src) { std::memcpy(dst, src, 16); }

// --- Q8_0, Q4_0, Q5_0, Q5_1: two 32-value blocks per step. ------------------------------------

// Q8_0: lanes 0-7 block b, 8-15 block b+1, values in order; weights + 128 (unsigned), so each
// block's sum starts at -128 x its activations' sum. Q4_0: the low nibbles of blocks b and b+1
// (values 0-15 of each), then their high nibbles (values 16-31); lanes 0-3 and 8-11 are block b,
// 4-7 and 12-15 block b+1; the -8 offset enters the same way. Q5_0 and Q5_1 are laid out as Q4_0,
// their fifth bits added under a byte mask; Q5_0's offset is 16, and Q5_1's min is summed apart.
template <DType T>
void PackBlockPairs(const Q8Block* x, int64_t nb, PackedRow* p) {
  const int64_t steps = nb / 2;
  p->q.resize(steps);
  p->scale.resize(steps);
  p->init.resize(steps);
  for (int64_t s = 0; s < steps; ++s) {
    const Q8Block& a = x[2 * s];
    const Q8Block& b = x[2 * s + 1];
    alignas(64) int8_t q[64];
    alignas(64) float sc[16];
    alignas(64) int32_t in[16] = {};
    if constexpr (T == DType::kQ8_0) {
      std::memcpy(q, a.q, 32);
      std::memcpy(q + 32, b.q, 32);
      for (int l = 0; l < 16; ++l) sc[l] = l < 8 ? a.d : b.d;
      in[0] = -128 * a.qsum;
      in[8] = -128 * b.qsum;
    } else {  // Q4_0, Q5_0, Q5_1: nibble order
      Put16(q, a.q);
      Put16(q + 16, b.q);
      Put16(q + 32, a.q + 16);
      Put16(q + 48, b.q + 16);
      for (int l = 0; l < 16; ++l) sc[l] = (l / 4) % 2 == 0 ? a.d : b.d;
      const int32_t offset = T == DType::kQ4_0     ? 8
                             : T == DType::kQ5_0   ? 16
                             : T == DType::kIQ4_NL ? 128
                                                   : 0;
      in[0] = -offset * a.qsum;
      in[4] = -offset * b.qsum;
    }
    p->q[s].v = _mm512_load_si512(q);
    p->scale[s].v = _mm512_load_ps(sc);
    p->init[s].v = _mm512_load_si512(in);
  }
}

// Where a 32-value block's quants start: after the F16 scale, or after Q5's min and qh.
constexpr int64_t QuantsAt(DType t) {
  return t == DType::kQ5_0 || t == DType::kQ5_1 ? Q5QuantsAt(t) : 2;
}

// Unsigned weight bytes of blocks b and b+1 (at blk and blk + bb), in the packed order.
template <DType T>
inline __m512i WeightPair(const uint8_t* blk) {
  if constexpr (T == DType::kQ8_0) {
    const __m512i w = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2))),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 36)), 1);
    return _mm512_xor_si512(w, _mm512_set1_epi8(static_cast<char>(0x80)));
  } else {
    constexpr int64_t bb = DTypeBlockBytes(T), qs = QuantsAt(T);
    const __m256i packed = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + qs))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + bb + qs)), 1);
    const __m512i both = _mm512_broadcast_i64x4(packed);
    // Low half: low nibbles; high half: shifted down by 4.
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    const __m512i w = _mm512_and_si512(_mm512_srlv_epi16(both, shift), _mm512_set1_epi8(0x0F));
    if constexpr (T == DType::kQ4_0) {
      return w;
    } else if constexpr (T == DType::kIQ4_NL) {
      return _mm512_shuffle_epi8(Iq4NlLevels(), w);
    } else {
      // Byte order: values 0-15 of block b, of b+1, then values 16-31 of b, of b+1; bit v of a
      // block's qh belongs to its value v.
      const uint64_t ha = U32At(blk + Q5HighBitsAt(T)), hb = U32At(blk + bb + Q5HighBitsAt(T));
      const uint64_t bits =
          (ha & 0xFFFF) | (hb & 0xFFFF) << 16 | (ha >> 16) << 32 | (hb >> 16) << 48;
      return _mm512_mask_add_epi8(w, _cvtu64_mask64(bits), w, _mm512_set1_epi8(16));
    }
  }
}

// Dot of the odd last block of a row (256-bit).
template <DType T>
inline float LastBlock(const uint8_t* blk, const Q8Block& x) {
  __m256i w;
  int32_t init;
  if constexpr (T == DType::kQ8_0) {
    w = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2)),
                         _mm256_set1_epi8(static_cast<char>(0x80)));
    init = -128 * x.qsum;
  } else {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + QuantsAt(T)));
    w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0F)),
                         _mm_and_si128(packed, _mm_set1_epi8(0x0F)));
    init = T == DType::kQ4_0     ? -8 * x.qsum
           : T == DType::kQ5_0   ? -16 * x.qsum
           : T == DType::kIQ4_NL ? -128 * x.qsum
                                 : 0;
    if constexpr (T == DType::kIQ4_NL) {
      w = _mm256_shuffle_epi8(_mm512_castsi512_si256(Iq4NlLevels()), w);
    } else if constexpr (T != DType::kQ4_0) {
      w = _mm256_mask_add_epi8(w, _cvtu32_mask32(U32At(blk + Q5HighBitsAt(T))), w,
                               _mm256_set1_epi8(16));
    }
  }
  const __m256i dot =
      _mm256_dpbusd_epi32(_mm256_castsi128_si256(_mm_cvtsi32_si128(init)), w,
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q)));
  const __m256i s = _mm256_add_epi32(dot, _mm256_srli_si256(dot, 8));
  const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  const int32_t sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_srli_si128(t, 4)));
  float v = _cvtsh_ss(U16At(blk)) * x.d * static_cast<float>(sum);
  if constexpr (T == DType::kQ5_1)
    v += _cvtsh_ss(U16At(blk + 2)) * x.d * static_cast<float>(x.qsum);
  return v;
}

// One weight row against every activation row (the row stays in L1 after the first).
template <DType T>
void PairRow(const uint8_t* row, int64_t nb, const Q8Block* xq, int64_t xq_stride,
             const std::vector<PackedRow>& px, const float* bias, float* out, int64_t out_stride,
             int64_t j) {
  constexpr int64_t bb = DTypeBlockBytes(T);
  const int64_t steps = nb / 2;
  const __m512i scale_index =
      T == DType::kQ8_0 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                        : _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0);
  for (size_t i = 0; i < px.size(); ++i) {
    const PackedRow& p = px[i];
    const Q8Block* x = xq + i * xq_stride;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0;  // Q5_1: min x activation scale x activation sum, per block
    for (int64_t s = 0; s < steps; ++s) {
      const uint8_t* blk = row + 2 * s * bb;
      if constexpr (T != DType::kQ8_0) Prefetch(blk, 2 * bb);
      const __m512i dot = _mm512_dpbusd_epi32(p.init[s].v, WeightPair<T>(blk), p.q[s].v);
      const __m512 wd =
          _mm512_permutexvar_ps(scale_index, _mm512_castps128_ps512(TwoHalves(blk, blk + bb)));
      acc = _mm512_fmadd_ps(_mm512_mul_ps(wd, p.scale[s].v), _mm512_cvtepi32_ps(dot), acc);
      if constexpr (T == DType::kQ5_1) {
        const __m128 m = TwoHalves(blk + 2, blk + bb + 2);
        mins += _mm_cvtss_f32(m) * x[2 * s].d * static_cast<float>(x[2 * s].qsum) +
                _mm_cvtss_f32(_mm_movehdup_ps(m)) * x[2 * s + 1].d *
                    static_cast<float>(x[2 * s + 1].qsum);
      }
    }
    float v = _mm512_reduce_add_ps(acc) + mins;
    if (nb % 2 != 0) v += LastBlock<T>(row + (nb - 1) * bb, xq[i * xq_stride + nb - 1]);
    out[i * out_stride + j] = v + (bias != nullptr ? bias[j] : 0.0f);
  }
}

template <DType T>
void BlockPairGemv(const uint8_t* base, int64_t k, const Q8Block* xq, int64_t n, int64_t xq_stride,
                   const float* bias, float* out, int64_t out_stride, int64_t j0, int64_t j1) {
  const int64_t nb = k / 32;
  std::vector<PackedRow>& px = packed_rows;
  px.resize(n);
  for (int64_t i = 0; i < n; ++i) PackBlockPairs<T>(xq + i * xq_stride, nb, &px[i]);
  const size_t row_bytes = RowBytes(T, k);
  for (int64_t j = j0; j < j1; ++j) {
    PairRow<T>(base + j * row_bytes, nb, xq, xq_stride, px, bias, out, out_stride, j);
  }
}

// --- Q4_K: super-blocks of 256 values, 8 sub-blocks of 32 with 6-bit scales and mins. --------

// Activations per super-block: sub-blocks (0,2), (1,3), (4,6), (5,7) as four 64-byte steps, the
// eight block scales, and the eight (scale x sum) products for the mins.
struct Q4KPacked {
  std::vector<I512> q;   // 4 per super-block
  std::vector<F256> d;   // block scales
  std::vector<F256> dq;  // block scale x block sum
};
thread_local std::vector<Q4KPacked> packed_q4k;

void PackQ4K(const Q8Block* x, int64_t supers, Q4KPacked* p) {
  p->q.resize(supers * 4);
  p->d.resize(supers);
  p->dq.resize(supers);
  static constexpr int kOrder[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};
  for (int64_t s = 0; s < supers; ++s) {
    const Q8Block* b = x + 8 * s;
    for (int t = 0; t < 4; ++t) {
      alignas(64) int8_t q[64];
      std::memcpy(q, b[kOrder[t][0]].q, 32);
      std::memcpy(q + 32, b[kOrder[t][1]].q, 32);
      p->q[4 * s + t].v = _mm512_load_si512(q);
    }
    alignas(32) float d[8], dq[8];
    for (int e = 0; e < 8; ++e) {
      d[e] = b[e].d;
      dq[e] = b[e].d * static_cast<float>(b[e].qsum);
    }
    p->d[s].v = _mm256_load_ps(d);
    p->dq[s].v = _mm256_load_ps(dq);
  }
}

// The eight 6-bit scales (low 8 bytes) and mins (high 8 bytes) of a Q4_K super-block, as ggml's
// get_scale_min_k4 reads them: sub-blocks 0-3 from the low 6 bits of bytes 0-3 (scales) and 4-7
// (mins); 4-7 from the nibbles of bytes 8-11 with the top two bits of bytes 0-7 above them.
inline void Q4KScalesMins(const uint8_t* s, uint64_t* scales, uint64_t* mins) {
  const uint32_t w0 = U32At(s), w1 = U32At(s + 4), w2 = U32At(s + 8);
  const uint32_t sc_lo = w0 & 0x3F3F3F3Fu;
  const uint32_t m_lo = w1 & 0x3F3F3F3Fu;
  const uint32_t sc_hi = (w2 & 0x0F0F0F0Fu) | (((w0 >> 6) & 0x03030303u) << 4);
  const uint32_t m_hi = ((w2 >> 4) & 0x0F0F0F0Fu) | (((w1 >> 6) & 0x03030303u) << 4);
  *scales = sc_lo | (uint64_t{sc_hi} << 32);
  *mins = m_lo | (uint64_t{m_hi} << 32);
}

inline __m256 BytesToFloats(uint64_t v) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(v))));
}

// One Q4_K or Q5_K weight row against every activation row. Q5_K is Q4_K with a fifth bit per
// value (bit j of qh[l] for value l of sub-block j) between the scales and the nibbles, so the
// activations are laid out as for Q4_K (PackQ4K).
template <DType T>
void KRow(const uint8_t* row, int64_t supers, const std::vector<Q4KPacked>& px, const float* bias,
          float* out, int64_t out_stride, int64_t j) {
  constexpr bool kQ5 = T == DType::kQ5_K;
  constexpr int64_t bb = DTypeBlockBytes(T), qs = kQ5 ? 48 : 16;
  // Lanes of step t: the first sub-block of the pair in lanes 0-7, the second in 8-15.
  const __m512i index[4] = {_mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0),
                            _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
                            _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4),
                            _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 5)};
  // Q5_K: the qh bit of each step's sub-blocks, the first of the pair in bytes 0-31, the second
  // in 32-63 (steps (0,2), (1,3), (4,6), (5,7)).
  const __m512i bit[4] = {
      _mm512_inserti64x4(_mm512_set1_epi8(0x01), _mm256_set1_epi8(0x04), 1),
      _mm512_inserti64x4(_mm512_set1_epi8(0x02), _mm256_set1_epi8(0x08), 1),
      _mm512_inserti64x4(_mm512_set1_epi8(0x10), _mm256_set1_epi8(0x40), 1),
      _mm512_inserti64x4(_mm512_set1_epi8(0x20), _mm256_set1_epi8(static_cast<char>(0x80)), 1)};
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i sixteen = _mm512_set1_epi8(0x10);
  for (size_t i = 0; i < px.size(); ++i) {
    const Q4KPacked& p = px[i];
    __m512 acc = _mm512_setzero_ps();
    __m256 mins = _mm256_setzero_ps();
    for (int64_t s = 0; s < supers; ++s) {
      const uint8_t* blk = row + s * bb;
      Prefetch(blk, bb);
      const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(U32At(blk))));
      uint64_t sc, mn;
      Q4KScalesMins(blk + 4, &sc, &mn);
      // d x scale x activation scale of each sub-block; dmin x min x activation scale x sum.
      const __m256 scale = _mm256_mul_ps(_mm256_mul_ps(BytesToFloats(sc), p.d[s].v),
                                         _mm256_set1_ps(_mm_cvtss_f32(dd)));
      mins = _mm256_fmadd_ps(
          _mm256_mul_ps(BytesToFloats(mn), _mm256_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd)))),
          p.dq[s].v, mins);
      const __m512 scale16 = _mm512_castps256_ps512(scale);
      __m512i qh = _mm512_setzero_si512();
      if constexpr (kQ5) {
        qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16)));
      }
      for (int h = 0; h < 2; ++h) {
        const __m512i packed =
            _mm512_loadu_si512(reinterpret_cast<const __m512i*>(blk + qs + 64 * h));
        __m512i lo = _mm512_and_si512(packed, low4);
        __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
        if constexpr (kQ5) {
          lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh, bit[2 * h]), lo, sixteen);
          hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(qh, bit[2 * h + 1]), hi, sixteen);
        }
        const __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, p.q[4 * s + 2 * h].v);
        const __m512i d1 =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, p.q[4 * s + 2 * h + 1].v);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(index[2 * h], scale16), _mm512_cvtepi32_ps(d0),
                              acc);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(index[2 * h + 1], scale16),
                              _mm512_cvtepi32_ps(d1), acc);
      }
    }
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(mins), _mm256_extractf128_ps(mins, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    out[i * out_stride + j] =
        _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(t) + (bias != nullptr ? bias[j] : 0.0f);
  }
}

// --- Q6_K: super-blocks of 256 values, 16 groups of 16 with int8 scales. ---------------------

// Activations in value order, the activation scale of each 16-value group, and the initial lanes
// (-32 x each group's sum, in the first lane of the group's four).
struct Q6KPacked {
  std::vector<I512> q;     // 4 per super-block
  std::vector<F512> d;     // 16 group scales per super-block
  std::vector<I512> init;  // 4 per super-block
};
thread_local std::vector<Q6KPacked> packed_q6k;

void PackQ6K(const Q8Block* x, int64_t supers, Q6KPacked* p) {
  p->q.resize(supers * 4);
  p->d.resize(supers);
  p->init.resize(supers * 4);
  for (int64_t s = 0; s < supers; ++s) {
    const Q8Block* b = x + 8 * s;
    alignas(64) float d[16];
    for (int g = 0; g < 16; ++g) d[g] = b[g / 2].d;
    p->d[s].v = _mm512_load_ps(d);
    for (int t = 0; t < 4; ++t) {
      alignas(64) int8_t q[64];
      std::memcpy(q, b[2 * t].q, 32);
      std::memcpy(q + 32, b[2 * t + 1].q, 32);
      p->q[4 * s + t].v = _mm512_load_si512(q);
      alignas(64) int32_t in[16] = {};
      for (int g = 0; g < 4; ++g) {
        int32_t sum = 0;
        for (int e = 0; e < 16; ++e) sum += q[16 * g + e];
        in[4 * g] = -32 * sum;
      }
      p->init[4 * s + t].v = _mm512_load_si512(in);
    }
  }
}

// One weight row against every activation row.
void Q6KRow(const uint8_t* row, int64_t supers, const std::vector<Q6KPacked>& px, const float* bias,
            float* out, int64_t out_stride, int64_t j) {
  // Step t covers groups 4t..4t+3, four lanes each.
  __m512i index[4];
  for (int t = 0; t < 4; ++t) {
    index[t] = _mm512_set_epi32(4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 3, 4 * t + 2, 4 * t + 2,
                                4 * t + 2, 4 * t + 2, 4 * t + 1, 4 * t + 1, 4 * t + 1, 4 * t + 1,
                                4 * t, 4 * t, 4 * t, 4 * t);
  }
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i two = _mm512_set1_epi8(0x03);
  // qh bits for the values of the low / high 256-bit half of a step.
  const __m512i shift_a = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  const __m512i shift_b = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
  for (size_t i = 0; i < px.size(); ++i) {
    const Q6KPacked& p = px[i];
    __m512 acc = _mm512_setzero_ps();
    for (int64_t s = 0; s < supers; ++s) {
      const uint8_t* blk = row + s * 210;
      Prefetch(blk, 210);
      const __m512 scale = _mm512_mul_ps(
          _mm512_cvtepi32_ps(
              _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)))),
          _mm512_mul_ps(p.d[s].v, _mm512_set1_ps(_cvtsh_ss(U16At(blk + 208)))));
      for (int h = 0; h < 2; ++h) {
        const __m512i ql = _mm512_loadu_si512(reinterpret_cast<const __m512i*>(blk + 64 * h));
        const __m512i qh = _mm512_broadcast_i64x4(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * h)));
        // Values 0-63 of this half: low nibbles of ql, bits 0-1 / 2-3 of qh above them;
        // values 64-127: high nibbles, bits 4-5 / 6-7.
        const __m512i q0 = _mm512_or_si512(
            _mm512_and_si512(ql, low4),
            _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_a), two), 4));
        const __m512i q1 = _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16(ql, 4), low4),
            _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift_b), two), 4));
        const __m512i d0 = _mm512_dpbusd_epi32(p.init[4 * s + 2 * h].v, q0, p.q[4 * s + 2 * h].v);
        const __m512i d1 =
            _mm512_dpbusd_epi32(p.init[4 * s + 2 * h + 1].v, q1, p.q[4 * s + 2 * h + 1].v);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(index[2 * h], scale), _mm512_cvtepi32_ps(d0),
                              acc);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(index[2 * h + 1], scale),
                              _mm512_cvtepi32_ps(d1), acc);
      }
    }
    out[i * out_stride + j] = _mm512_reduce_add_ps(acc) + (bias != nullptr ? bias[j] : 0.0f);
  }
}

template <typename Packed, void (*Pack)(const Q8Block*, int64_t, Packed*),
          void (*Row)(const uint8_t*, int64_t, const std::vector<Packed>&, const float*, float*,
                      int64_t, int64_t)>
void KQuantGemv(std::vector<Packed>& px, size_t row_bytes, const uint8_t* base, int64_t k,
                const Q8Block* xq, int64_t n, int64_t xq_stride, const float* bias, float* out,
                int64_t out_stride, int64_t j0, int64_t j1) {
  const int64_t supers = k / 256;
  px.resize(n);
  for (int64_t i = 0; i < n; ++i) Pack(xq + i * xq_stride, supers, &px[i]);
  for (int64_t j = j0; j < j1; ++j) Row(base + j * row_bytes, supers, px, bias, out, out_stride, j);
}

}  // namespace

void Avx512VnniQuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1) {
  const auto* base = static_cast<const uint8_t*>(w);
  switch (dt) {
    case DType::kQ8_0:
      BlockPairGemv<DType::kQ8_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ4_0:
      BlockPairGemv<DType::kQ4_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ5_0:
      BlockPairGemv<DType::kQ5_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ5_1:
      BlockPairGemv<DType::kQ5_1>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kIQ4_NL:
      BlockPairGemv<DType::kIQ4_NL>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ4_K:
      KQuantGemv<Q4KPacked, PackQ4K, KRow<DType::kQ4_K>>(
          packed_q4k, RowBytes(dt, k), base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ5_K:
      KQuantGemv<Q4KPacked, PackQ4K, KRow<DType::kQ5_K>>(
          packed_q4k, RowBytes(dt, k), base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
      return;
    case DType::kQ6_K:
      KQuantGemv<Q6KPacked, PackQ6K, Q6KRow>(packed_q6k, RowBytes(dt, k), base, k, xq, n, xq_stride,
                                             bias, out, out_stride, j0, j1);
      return;
    default:
      return;
  }
}

// --- Prefill: int8 GEMM over panels of 16 weight rows. ---------------------------------------
//
// Each panel of 16 rows is unpacked once into unsigned bytes laid out 4 values x 16 rows per
// 64-byte vector (one zmm lane per weight row), with one F32 scale per row and block (and the
// F32 min of Q4_K, Q5_K and Q5_1). Then, for every block, vpdpbusd takes a weight vector and
// four activation bytes broadcast to all lanes, so one instruction adds 4 values of 16 rows for
// one activation row; 8 activation rows share each weight vector. The integer sums are scaled in
// F32 once per block. Weight offsets (Q8_0's +128, Q4_0's 8, Q5_0's 16, Q6_K's 32) are taken off
// through the integer accumulator's start, minus offset x the activations' sum over the block.
namespace {

constexpr int kPanel = 16;  // weight rows per panel: one per zmm lane
constexpr int kM = 8;       // activation rows per micro-kernel step

struct Panel {
  std::vector<I512> u;   // [block][group of 4 values] -> 16 rows x 4 unsigned bytes
  std::vector<F512> ws;  // [block] -> the 16 rows' scales
  std::vector<F512> wm;  // [block] -> Q4_K / Q5_K: the 16 rows' dmin x min; Q5_1: -min
};
thread_local Panel panel;
thread_local std::vector<int32_t> group_sums;  // Q6_K: per activation row, per 16 values

// The sums of every 16 activation values of n rows (k / 16 per row), for Q6_K's offset of 32 per
// 16-value group; in this thread's scratch.
const int32_t* SumsOf16(const Q8Block* xq, int64_t n, int64_t xq_stride, int64_t k) {
  const int64_t groups = k / 16;
  group_sums.resize(static_cast<size_t>(n * groups));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      const int8_t* q = xq[i * xq_stride + g / 2].q + (g % 2) * 16;
      int32_t sum = 0;
      for (int e = 0; e < 16; ++e) sum += q[e];
      group_sums[i * groups + g] = sum;
    }
  }
  return group_sums.data();
}

// Block size (values per scale) of the unpacked panel.
constexpr int64_t PanelBlock(DType dt) { return dt == DType::kQ6_K ? 16 : 32; }

// Unpacks weight row `r` of the panel: unsigned values and per-block scales.
void UnpackRow(DType dt, const uint8_t* row, int64_t k, int r, Panel* p) {
  auto* u = reinterpret_cast<uint8_t*>(p->u.data());
  auto* ws = reinterpret_cast<float*>(p->ws.data());
  auto* wm = reinterpret_cast<float*>(p->wm.data());
  // Value v of the row goes to lane r of group v / 4 of its block, byte v % 4.
  auto put = [&](int64_t v, uint8_t q) {
    const int64_t g = v / 4;
    u[g * 64 + r * 4 + v % 4] = q;
  };
  switch (dt) {
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kIQ4_NL: {
      const int64_t bb = DTypeBlockBytes(dt);
      const bool q5 = dt == DType::kQ5_0 || dt == DType::kQ5_1;
      const int64_t qs = QuantsAt(dt);
      for (int64_t b = 0; b < k / 32; ++b) {
        const uint8_t* x = row + b * bb;
        ws[b * kPanel + r] = _cvtsh_ss(U16At(x));
        // Q5_1's min enters as Q4_K's does, subtracted: store its negative.
        if (dt == DType::kQ5_1) wm[b * kPanel + r] = -_cvtsh_ss(U16At(x + 2));
        const uint32_t qh = q5 ? U32At(x + Q5HighBitsAt(dt)) : 0;
        for (int e = 0; e < 32; ++e) {
          uint8_t q = dt == DType::kQ8_0 ? static_cast<uint8_t>(x[2 + e] ^ 0x80)
                                         : (e < 16 ? x[qs + e] & 0x0F : x[qs + e - 16] >> 4);
          if (q5) q = static_cast<uint8_t>(q | ((qh >> e) & 1) << 4);
          if (dt == DType::kIQ4_NL) q = static_cast<uint8_t>(kIq4NlValues[q] + 128);
          put(b * 32 + e, q);
        }
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const bool q5 = dt == DType::kQ5_K;
      const int64_t bb = static_cast<int64_t>(DTypeBlockBytes(dt));
      for (int64_t s = 0; s < k / 256; ++s) {
        const uint8_t* x = row + s * bb;
        const float d = _cvtsh_ss(U16At(x)), dmin = _cvtsh_ss(U16At(x + 2));
        uint64_t sc, mn;
        Q4KScalesMins(x + 4, &sc, &mn);
        const uint8_t* qh = x + 16;  // Q5_K only
        for (int j = 0; j < 8; ++j) {
          ws[(s * 8 + j) * kPanel + r] = d * static_cast<float>((sc >> (8 * j)) & 0xFF);
          wm[(s * 8 + j) * kPanel + r] = dmin * static_cast<float>((mn >> (8 * j)) & 0xFF);
          const uint8_t* qs = x + (q5 ? 48 : 16) + 32 * (j / 2);
          for (int l = 0; l < 32; ++l) {
            const int high = q5 ? ((qh[l] >> j) & 1) << 4 : 0;
            put(s * 256 + 32 * j + l,
                static_cast<uint8_t>((j % 2 == 0 ? qs[l] & 0x0F : qs[l] >> 4) | high));
          }
        }
      }
      return;
    }
    case DType::kQ6_K:
      for (int64_t s = 0; s < k / 256; ++s) {
        const uint8_t* x = row + s * 210;
        const float d = _cvtsh_ss(U16At(x + 208));
        const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
        for (int g = 0; g < 16; ++g) ws[(s * 16 + g) * kPanel + r] = d * sc[g];
        for (int v = 0; v < 256; ++v) {
          const int h = v / 128, g = (v % 128) / 32, l = v % 32;
          const uint8_t ql = x[64 * h + (g % 2) * 32 + l];
          const uint8_t qh = x[128 + 32 * h + l];
          put(s * 256 + v,
              static_cast<uint8_t>(((g < 2 ? ql & 0x0F : ql >> 4)) | (((qh >> (2 * g)) & 3) << 4)));
        }
      }
      return;
    default:
      return;
  }
}

// Rows [j, j + 16) (`valid` of them real) against activation rows [i0, i0 + M).
template <DType T, int M>
void PanelTile(const Panel& p, int64_t k, const Q8Block* xq, int64_t xq_stride, int64_t i0,
               const int32_t* sums16, const float* bias, float* out, int64_t out_stride, int64_t j,
               int valid) {
  constexpr int64_t kBlock = PanelBlock(T);
  constexpr int kGroups = kBlock / 4;
  const int64_t blocks = k / kBlock;
  __m512 acc[M];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t xb = b * kBlock / 32;      // the activations' 32-value block
    const int64_t xoff = (b * kBlock) % 32;  // and the offset inside it
    __m512i dot[M];
    for (int m = 0; m < M; ++m) {
      const Q8Block& x = xq[(i0 + m) * xq_stride + xb];
      int32_t init = 0;
      if constexpr (T == DType::kQ8_0 || T == DType::kIQ4_NL) init = -128 * x.qsum;
      if constexpr (T == DType::kQ4_0) init = -8 * x.qsum;
      if constexpr (T == DType::kQ5_0) init = -16 * x.qsum;
      if constexpr (T == DType::kQ6_K) init = -32 * sums16[(i0 + m) * (k / 16) + b];
      dot[m] = _mm512_set1_epi32(init);
    }
    const I512* w = &p.u[b * kGroups];
    for (int g = 0; g < kGroups; ++g) {
      const __m512i wv = w[g].v;
      for (int m = 0; m < M; ++m) {
        const int8_t* xqp = xq[(i0 + m) * xq_stride + xb].q + xoff + 4 * g;
        int32_t four;
        std::memcpy(&four, xqp, 4);
        dot[m] = _mm512_dpbusd_epi32(dot[m], wv, _mm512_set1_epi32(four));
      }
    }
    const __m512 ws = p.ws[b].v;
    for (int m = 0; m < M; ++m) {
      const Q8Block& x = xq[(i0 + m) * xq_stride + xb];
      acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[m]), _mm512_mul_ps(ws, _mm512_set1_ps(x.d)),
                               acc[m]);
      if constexpr (T == DType::kQ4_K || T == DType::kQ5_K || T == DType::kQ5_1) {
        acc[m] =
            _mm512_fnmadd_ps(p.wm[b].v, _mm512_set1_ps(x.d * static_cast<float>(x.qsum)), acc[m]);
      }
    }
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << valid) - 1);
  const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(keep, bias + j) : _mm512_setzero_ps();
  for (int m = 0; m < M; ++m) {
    _mm512_mask_storeu_ps(out + (i0 + m) * out_stride + j, keep, _mm512_add_ps(acc[m], bv));
  }
}

template <DType T>
void PanelGemm(const uint8_t* base, int64_t k, const Q8Block* xq, int64_t n, int64_t xq_stride,
               const float* bias, float* out, int64_t out_stride, int64_t j0, int64_t j1) {
  constexpr int64_t kBlock = PanelBlock(T);
  const int64_t blocks = k / kBlock;
  const size_t row_bytes = RowBytes(T, k);
  Panel& p = panel;
  p.u.assign(blocks * (kBlock / 4), I512{_mm512_setzero_si512()});
  p.ws.assign(blocks, F512{_mm512_setzero_ps()});
  constexpr bool mins = T == DType::kQ4_K || T == DType::kQ5_K || T == DType::kQ5_1;
  p.wm.assign(mins ? blocks : 0, F512{_mm512_setzero_ps()});
  const int32_t* sums16 = nullptr;
  if constexpr (T == DType::kQ6_K) sums16 = SumsOf16(xq, n, xq_stride, k);
  for (int64_t j = j0; j < j1; j += kPanel) {
    const int valid = static_cast<int>(std::min<int64_t>(kPanel, j1 - j));
    if (valid < kPanel) {  // a partial panel: the missing rows read as zero weights
      std::fill(p.u.begin(), p.u.end(), I512{_mm512_setzero_si512()});
      std::fill(p.ws.begin(), p.ws.end(), F512{_mm512_setzero_ps()});
      std::fill(p.wm.begin(), p.wm.end(), F512{_mm512_setzero_ps()});
    }
    for (int r = 0; r < valid; ++r) UnpackRow(T, base + (j + r) * row_bytes, k, r, &p);
    int64_t i = 0;
    for (; i + kM <= n; i += kM) {
      PanelTile<T, kM>(p, k, xq, xq_stride, i, sums16, bias, out, out_stride, j, valid);
    }
    for (; i < n; ++i) {
      PanelTile<T, 1>(p, k, xq, xq_stride, i, sums16, bias, out, out_stride, j, valid);
    }
  }
}

}  // namespace

void Avx512VnniQuantGemmRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1) {
  const auto* base = static_cast<const uint8_t*>(w);
  switch (dt) {
    case DType::kQ8_0:
      return PanelGemm<DType::kQ8_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ4_0:
      return PanelGemm<DType::kQ4_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ5_0:
      return PanelGemm<DType::kQ5_0>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ5_1:
      return PanelGemm<DType::kQ5_1>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kIQ4_NL:
      return PanelGemm<DType::kIQ4_NL>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ4_K:
      return PanelGemm<DType::kQ4_K>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ5_K:
      return PanelGemm<DType::kQ5_K>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    case DType::kQ6_K:
      return PanelGemm<DType::kQ6_K>(base, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
    default:
      return;
  }
}

// --- Repacked formats: 16 interleaved rows per group. -----------------------------------------
namespace {

// Rows [j, j + 16) of activation rows [i0, i0 + M) of out: the tile's sums plus the bias.
template <int M>
inline void StoreTile(const __m512* acc, const float* bias, float* out, int64_t out_stride,
                      int64_t i0, int64_t j) {
  const __m512 bv = bias != nullptr ? _mm512_loadu_ps(bias + j) : _mm512_setzero_ps();
  for (int m = 0; m < M; ++m) {
    _mm512_storeu_ps(out + (i0 + m) * out_stride + j, _mm512_add_ps(acc[m], bv));
  }
}

// Runs tile.template operator()<M>(group, i) over the 16-row groups of [j0, j1) (group_bytes
// each) and, within each, activation rows 8 at a time, then the rest in one tile.
template <typename Tile>
void ForEachTile(const uint8_t* packed, size_t group_bytes, int64_t n, int64_t j0, int64_t j1,
                 const Tile& tile) {
  for (int64_t j = j0; j < j1; j += 16) {
    const uint8_t* group = packed + (j / 16) * group_bytes;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) tile.template operator()<8>(group, i, j);
    switch (n - i) {
      case 1:
        tile.template operator()<1>(group, i, j);
        break;
      case 2:
        tile.template operator()<2>(group, i, j);
        break;
      case 3:
        tile.template operator()<3>(group, i, j);
        break;
      case 4:
        tile.template operator()<4>(group, i, j);
        break;
      case 5:
        tile.template operator()<5>(group, i, j);
        break;
      case 6:
        tile.template operator()<6>(group, i, j);
        break;
      case 7:
        tile.template operator()<7>(group, i, j);
        break;
      default:
        break;
    }
  }
}

}  // namespace

// --- Repacked Q4_0: 16 interleaved rows per group (RepackQ4_0x16). ------------------------
//
// Per block, the group's four 64-byte vectors unpack with one AND (low nibbles) and one shift
// and AND (high nibbles) into the same 4-values-by-16-rows layout the panel GEMM unpacks to at
// run time; vpdpbusd then adds 4 values of 16 rows per activation row, M activation rows per
// weight vector. Nothing is unpacked per call, so one activation row (decode) runs as fast as
// the weight bytes stream in.
namespace {

// kNl: IQ4_NL, whose nibbles index its levels (plus 128) instead of standing for 0..15.
template <int M, bool kNl>
void Q4_0x16Tile(const uint8_t* group, int64_t nb, const Q8Block* xq, int64_t xq_stride, int64_t i0,
                 const float* bias, float* out, int64_t out_stride, int64_t j) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i levels = kNl ? Iq4NlLevels() : low;
  constexpr int32_t kOffset = kNl ? 128 : 8;
  __m512 acc[M];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* q = group + Q4_0x16QuantsAt(nb, b);
    if constexpr (M == 1) Prefetch(q, 256);
    __m512i lo[4], hi[4];
    for (int c = 0; c < 4; ++c) {
      const __m512i v = _mm512_loadu_si512(q + 64 * c);
      lo[c] = _mm512_and_si512(v, low);
      hi[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      if constexpr (kNl) {
        lo[c] = _mm512_shuffle_epi8(levels, lo[c]);
        hi[c] = _mm512_shuffle_epi8(levels, hi[c]);
      }
    }
    const __m512 ws = _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + Q4_0x16ScalesAt(b))));
    for (int m = 0; m < M; ++m) {
      const Q8Block& x = xq[(i0 + m) * xq_stride + b];
      int32_t four[8];
      std::memcpy(four, x.q, 32);
      // Four chains of two (short chains keep several blocks in flight), the offset taken off
      // through the first one's start.
      __m512i d[4];
      for (int c = 0; c < 4; ++c) {
        d[c] = _mm512_dpbusd_epi32(
            c == 0 ? _mm512_set1_epi32(-kOffset * x.qsum) : _mm512_setzero_si512(), lo[c],
            _mm512_set1_epi32(four[c]));
        d[c] = _mm512_dpbusd_epi32(d[c], hi[c], _mm512_set1_epi32(four[4 + c]));
      }
      const __m512i dot =
          _mm512_add_epi32(_mm512_add_epi32(d[0], d[1]), _mm512_add_epi32(d[2], d[3]));
      acc[m] =
          _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, _mm512_set1_ps(x.d)), acc[m]);
    }
  }
  StoreTile<M>(acc, bias, out, out_stride, i0, j);
}

template <bool kNl>
void Q4x16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n, int64_t xq_stride,
               const float* bias, float* out, int64_t out_stride, int64_t j0, int64_t j1) {
  const int64_t nb = k / 32;
  ForEachTile(packed, Q4_0x16GroupBytes(k), n, j0, j1,
              [&]<int M>(const uint8_t* group, int64_t i, int64_t j) {
                Q4_0x16Tile<M, kNl>(group, nb, xq, xq_stride, i, bias, out, out_stride, j);
              });
}

}  // namespace

void Avx512VnniQ4_0x16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1) {
  Q4x16Rows<false>(packed, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
}

void Avx512VnniIQ4_NLx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1) {
  Q4x16Rows<true>(packed, k, xq, n, xq_stride, bias, out, out_stride, j0, j1);
}

// --- Repacked Q4_K: 16 interleaved rows per group (RepackQ4_Kx16). ------------------------
//
// Per super-block, the 16 rows' 6-bit scales and mins are decoded from three vectors with lane
// shifts (as get_scale_min_k4 does for one row), times d and dmin. Then each 32-value sub-block
// is 8 weight vectors (4 values x 16 rows) against 8 broadcast groups of 4 activation bytes, so
// its integer sums come out per row, and the sub-block's scale and min apply in F32.
namespace {

// Sub-block j's scale (mins false) or min of each row, as int32 lanes.
inline __m512i Q4KScaleOrMin(__m512i a, __m512i b, __m512i c, int j, bool mins) {
  const __m512i six = _mm512_set1_epi32(0x3F);
  const __m512i four = _mm512_set1_epi32(0x0F);
  const __m512i lo = mins ? b : a;
  if (j < 4) return _mm512_and_si512(_mm512_srli_epi32(lo, 8 * j), six);
  const int e = 8 * (j - 4);
  const __m512i nib = _mm512_and_si512(_mm512_srli_epi32(c, e + (mins ? 4 : 0)), four);
  const __m512i top = _mm512_and_si512(_mm512_srli_epi32(lo, e + 6), _mm512_set1_epi32(3));
  return _mm512_or_si512(nib, _mm512_slli_epi32(top, 4));
}

template <int M>
void Q4_Kx16Tile(const uint8_t* group, int64_t supers, const Q8Block* xq, int64_t xq_stride,
                 int64_t i0, const float* bias, float* out, int64_t out_stride, int64_t j) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[M];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* sb = group + s * kQ4_Kx16SuperBytes;
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb)));
    const __m512 dmin =
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb + 32)));
    const __m512i sa = _mm512_loadu_si512(sb + 64);
    const __m512i sbv = _mm512_loadu_si512(sb + 128);
    const __m512i sc = _mm512_loadu_si512(sb + 192);
    if constexpr (M == 1) {
      // Decode: each pair of sub-blocks is loaded once, its low and high nibbles taken apart.
      const Q8Block* x = xq + i0 * xq_stride + 8 * s;
      for (int c = 0; c < 4; ++c) {
        const uint8_t* q = sb + 256 + c * 512;
        const Q8Block& x0 = x[2 * c];
        const Q8Block& x1 = x[2 * c + 1];
        int32_t f0[8], f1[8];
        std::memcpy(f0, x0.q, 32);
        std::memcpy(f1, x1.q, 32);
        __m512i p0 = _mm512_setzero_si512(), p1 = p0, p2 = p0, p3 = p0;
        for (int v = 0; v < 8; v += 2) {
          const __m512i r0 = _mm512_loadu_si512(q + 64 * v);
          const __m512i r1 = _mm512_loadu_si512(q + 64 * v + 64);
          p0 = _mm512_dpbusd_epi32(p0, _mm512_and_si512(r0, low), _mm512_set1_epi32(f0[v]));
          p1 = _mm512_dpbusd_epi32(p1, _mm512_and_si512(r1, low), _mm512_set1_epi32(f0[v + 1]));
          p2 = _mm512_dpbusd_epi32(p2, _mm512_and_si512(_mm512_srli_epi16(r0, 4), low),
                                   _mm512_set1_epi32(f1[v]));
          p3 = _mm512_dpbusd_epi32(p3, _mm512_and_si512(_mm512_srli_epi16(r1, 4), low),
                                   _mm512_set1_epi32(f1[v + 1]));
        }
        const __m512 s0 =
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, 2 * c, false)));
        const __m512 s1 =
            _mm512_mul_ps(d, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, 2 * c + 1, false)));
        const __m512 m0 =
            _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, 2 * c, true)));
        const __m512 m1 =
            _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, 2 * c + 1, true)));
        acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(p0, p1)),
                                 _mm512_mul_ps(s0, _mm512_set1_ps(x0.d)), acc[0]);
        acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(p2, p3)),
                                 _mm512_mul_ps(s1, _mm512_set1_ps(x1.d)), acc[0]);
        acc[0] = _mm512_fnmadd_ps(m0, _mm512_set1_ps(x0.d * static_cast<float>(x0.qsum)), acc[0]);
        acc[0] = _mm512_fnmadd_ps(m1, _mm512_set1_ps(x1.d * static_cast<float>(x1.qsum)), acc[0]);
      }
      continue;
    }
    for (int j = 0; j < 8; ++j) {
      const uint8_t* q = sb + 256 + (j / 2) * 512;
      __m512i w[8];
      for (int v = 0; v < 8; ++v) {
        const __m512i raw = _mm512_loadu_si512(q + 64 * v);
        w[v] = _mm512_and_si512(j % 2 == 0 ? raw : _mm512_srli_epi16(raw, 4), low);
      }
      const __m512 scale =
          _mm512_mul_ps(d, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, j, false)));
      const __m512 min =
          _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(Q4KScaleOrMin(sa, sbv, sc, j, true)));
      for (int m = 0; m < M; ++m) {
        const Q8Block& x = xq[(i0 + m) * xq_stride + 8 * s + j];
        int32_t four[8];
        std::memcpy(four, x.q, 32);
        __m512i p[4];
        for (int c = 0; c < 4; ++c) {
          p[c] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[c], _mm512_set1_epi32(four[c]));
          p[c] = _mm512_dpbusd_epi32(p[c], w[4 + c], _mm512_set1_epi32(four[4 + c]));
        }
        const __m512i dot =
            _mm512_add_epi32(_mm512_add_epi32(p[0], p[1]), _mm512_add_epi32(p[2], p[3]));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(scale, _mm512_set1_ps(x.d)),
                                 acc[m]);
        acc[m] = _mm512_fnmadd_ps(min, _mm512_set1_ps(x.d * static_cast<float>(x.qsum)), acc[m]);
      }
    }
  }
  StoreTile<M>(acc, bias, out, out_stride, i0, j);
}

}  // namespace

void Avx512VnniQ4_Kx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1) {
  const int64_t supers = k / 256;
  ForEachTile(packed, Q4_Kx16GroupBytes(k), n, j0, j1,
              [&]<int M>(const uint8_t* group, int64_t i, int64_t j) {
                Q4_Kx16Tile<M>(group, supers, xq, xq_stride, i, bias, out, out_stride, j);
              });
}

// --- Repacked Q6_K: 16 interleaved rows per group (RepackQ6_Kx16). ------------------------
//
// Activation block b = 4n + qq of a super-block (half n, quarter qq) meets, for each 4-value
// step v, the weight vector built from step (n, v)'s first ql vector (qq = 0, 2) or its second
// (qq = 1, 3), low nibbles for qq < 2 and high ones above, and its qh vector (bits 2qq, 2qq + 1
// as bits 4 and 5). Values are used unsigned (0..63); the offset of 32 enters through each
// 16-value group's starting sum, -32 x the group's activations' sum, from `hsum`.
namespace {

// The 6-bit weights of quarter qq from ql vector a (qq = 0, 1) or its high nibbles (qq = 2, 3)
// and qh vector h.
template <int QQ>
inline __m512i Q6KWeights(__m512i a, __m512i h) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i top = _mm512_set1_epi8(0x30);
  const __m512i nib =
      QQ < 2 ? _mm512_and_si512(a, low) : _mm512_and_si512(_mm512_srli_epi16(a, 4), low);
  const __m512i hi = QQ == 0   ? _mm512_slli_epi16(h, 4)
                     : QQ == 1 ? _mm512_slli_epi16(h, 2)
                     : QQ == 2 ? h
                               : _mm512_srli_epi16(h, 2);
  return _mm512_ternarylogic_epi32(nib, hi, top, 0xF8);  // nib | (hi & top)
}

// d x scale of 16-value group g of each row, from the four scale vectors.
inline __m512 Q6KGroupScale(const __m512i* sv, __m512 d, int g) {
  const __m512i byte = _mm512_srai_epi32(_mm512_slli_epi32(sv[g / 4], 24 - 8 * (g % 4)), 24);
  return _mm512_mul_ps(d, _mm512_cvtepi32_ps(byte));
}

template <int M>
void Q6_Kx16Tile(const uint8_t* group, int64_t supers, const Q8Block* xq, int64_t xq_stride,
                 const int32_t* hsum, int64_t hsum_stride, int64_t i0, const float* bias,
                 float* out, int64_t out_stride, int64_t j) {
  __m512 acc[M];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t s = 0; s < supers; ++s) {
    const uint8_t* sb = group + s * kQ6_Kx16SuperBytes;
    __m512i sv[4];
    for (int u = 0; u < 4; ++u) sv[u] = _mm512_loadu_si512(sb + 32 + 64 * u);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sb)));
    for (int n = 0; n < 2; ++n) {
      const uint8_t* steps = sb + 288 + 1536 * n;  // (ql, ql + 32, qh) for v = 0..7
      if constexpr (M == 1) {
        // Decode: each ql and qh vector is loaded once and feeds all four quarters.
        const Q8Block* x = xq + i0 * xq_stride + 8 * s + 4 * n;
        const int32_t* hs = hsum + i0 * hsum_stride + 16 * s + 8 * n;
        __m512i p[8];  // quarter qq, values 0-15 (2qq) or 16-31 (2qq + 1)
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) p[g] = _mm512_set1_epi32(-32 * hs[g]);
        int32_t f[4][8];
        for (int qq = 0; qq < 4; ++qq) std::memcpy(f[qq], x[qq].q, 32);
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) {
          const __m512i a = _mm512_loadu_si512(steps + 192 * v);
          const __m512i b = _mm512_loadu_si512(steps + 192 * v + 64);
          const __m512i h = _mm512_loadu_si512(steps + 192 * v + 128);
          const int half = v / 4;
          p[half] = _mm512_dpbusd_epi32(p[half], Q6KWeights<0>(a, h), _mm512_set1_epi32(f[0][v]));
          p[2 + half] =
              _mm512_dpbusd_epi32(p[2 + half], Q6KWeights<1>(b, h), _mm512_set1_epi32(f[1][v]));
          p[4 + half] =
              _mm512_dpbusd_epi32(p[4 + half], Q6KWeights<2>(a, h), _mm512_set1_epi32(f[2][v]));
          p[6 + half] =
              _mm512_dpbusd_epi32(p[6 + half], Q6KWeights<3>(b, h), _mm512_set1_epi32(f[3][v]));
        }
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
          acc[0] = _mm512_fmadd_ps(
              _mm512_cvtepi32_ps(p[g]),
              _mm512_mul_ps(Q6KGroupScale(sv, d, 8 * n + g), _mm512_set1_ps(x[g / 2].d)), acc[0]);
        }
        continue;
      }
      for (int qq = 0; qq < 4; ++qq) {
        const __m512 s0 = Q6KGroupScale(sv, d, 8 * n + 2 * qq);
        const __m512 s1 = Q6KGroupScale(sv, d, 8 * n + 2 * qq + 1);
        __m512i w[8];
        for (int v = 0; v < 8; ++v) {
          const __m512i a = _mm512_loadu_si512(steps + 192 * v + 64 * (qq % 2));
          const __m512i h = _mm512_loadu_si512(steps + 192 * v + 128);
          w[v] = qq == 0   ? Q6KWeights<0>(a, h)
                 : qq == 1 ? Q6KWeights<1>(a, h)
                 : qq == 2 ? Q6KWeights<2>(a, h)
                           : Q6KWeights<3>(a, h);
        }
        for (int m = 0; m < M; ++m) {
          const Q8Block& x = xq[(i0 + m) * xq_stride + 8 * s + 4 * n + qq];
          const int32_t* hs = hsum + (i0 + m) * hsum_stride + 16 * s + 8 * n + 2 * qq;
          int32_t f[8];
          std::memcpy(f, x.q, 32);
          __m512i p0 = _mm512_set1_epi32(-32 * hs[0]), p1 = _mm512_set1_epi32(-32 * hs[1]);
          for (int v = 0; v < 4; ++v) {
            p0 = _mm512_dpbusd_epi32(p0, w[v], _mm512_set1_epi32(f[v]));
            p1 = _mm512_dpbusd_epi32(p1, w[4 + v], _mm512_set1_epi32(f[4 + v]));
          }
          const __m512 xd = _mm512_set1_ps(x.d);
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_mul_ps(s0, xd), acc[m]);
          acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_mul_ps(s1, xd), acc[m]);
        }
      }
    }
  }
  StoreTile<M>(acc, bias, out, out_stride, i0, j);
}

}  // namespace

void Avx512VnniQ6_Kx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1) {
  const int64_t supers = k / 256;
  const int64_t groups = k / 16;
  const int32_t* hsum = SumsOf16(xq, n, xq_stride, k);
  ForEachTile(packed, Q6_Kx16GroupBytes(k), n, j0, j1,
              [&]<int M>(const uint8_t* group, int64_t i, int64_t j) {
                Q6_Kx16Tile<M>(group, supers, xq, xq_stride, hsum, groups, i, bias, out, out_stride,
                               j);
              });
}

bool CpuHasAvx512Vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

}  // namespace shardserve::cpu
