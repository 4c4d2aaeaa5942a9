// CPU kernel entry points shared by the CPU backend: a plain reference path and AVX2/FMA fast
// paths (compiled in their own translation unit with -mavx2 -mfma -mf16c and chosen at run time
// by the backend). Each function works on a range so the backend can split it across threads;
// none of them allocates or synchronises.
#ifndef SHARDSERVE_KERNELS_CPU_KERNELS_H_
#define SHARDSERVE_KERNELS_CPU_KERNELS_H_

#include <cstdint>

#include "common/dtype.h"

namespace shardserve::cpu {

// Rows [j0, j1) of out = x * w^T (+ bias): out[i * out_stride + j] for i in [0, n).
// x: n rows of k floats, x_stride apart; w: rows of k elements of `wt`, contiguous.
struct GemvArgs {
  const float* x;
  int64_t n;
  int64_t x_stride;
  const void* w;
  DType wt;
  int64_t k;
  const float* bias;  // may be null
  float* out;
  int64_t out_stride;
  int64_t rows;                  // rows of w
  const void* packed = nullptr;  // w repacked (Tensor::packed): cpu::RepackedFormat
};
void RefGemvRows(const GemvArgs& a, int64_t j0, int64_t j1);
void Avx2GemvRows(const GemvArgs& a, int64_t j0, int64_t j1);
// The same for a.n == 1 and F32/F16/BF16 weights, with AVX-512 (check CpuHasAvx512() first).
void Avx512GemvRows1(const GemvArgs& a, int64_t j0, int64_t j1);
// The same for 2 <= a.n <= 11 (a decode micro-batch): one weight row after the other, each
// weight vector against all a.n activation rows.
void Avx512GemvRowsSmallN(const GemvArgs& a, int64_t j0, int64_t j1);
// Rows [j0, j1) for any a.n with F32 / F16 / BF16 weights (prefill), AVX-512. `xp` holds the
// activations as Avx512PackGemmActivations lays them out, packed once for all threads.
void Avx512GemmRows(const GemvArgs& a, const float* xp, int64_t j0, int64_t j1);
// Floats of that layout, and activation rows [i0, i1) of it (i0 a multiple of 16; i1 too, or
// a.n), so the threads can split the packing.
int64_t Avx512GemmPackedFloats(const GemvArgs& a);
void Avx512PackGemmActivations(const GemvArgs& a, int64_t i0, int64_t i1, float* xp);
bool CpuHasAvx512();
// The same GEMM for BF16 weights with AVX512-BF16 dot products: activations rounded to BF16 and
// packed as pairs (Avx512Bf16PackGemmActivations, same row-range rule), F32 accumulation. Check
// CpuHasAvx512Bf16() first.
void Avx512Bf16GemmRows(const GemvArgs& a, const uint32_t* xp, int64_t j0, int64_t j1);
// The a.n == 1 GEMV for BF16 weights on AVX512-BF16, the activation row rounded to BF16.
void Avx512Bf16GemvRows1(const GemvArgs& a, int64_t j0, int64_t j1);
int64_t Avx512Bf16GemmPackedWords(const GemvArgs& a);
void Avx512Bf16PackGemmActivations(const GemvArgs& a, int64_t i0, int64_t i1, uint32_t* xp);
bool CpuHasAvx512Bf16();

// Converts rows [r0, r1) of a k-column weight matrix to F32 at dst (row r at dst + (r - r0) * k).
void RefConvertRows(const void* w, DType wt, int64_t k, int64_t r0, int64_t r1, float* dst);
void Avx2ConvertRows(const void* w, DType wt, int64_t k, int64_t r0, int64_t r1, float* dst);

// Attention of one query head over `len` cached positions of one sequence.
// q: head_dim floats (already scaled by 1/sqrt(head_dim)); keys/values of position t live at
// k_base/v_base + slot(t) * kv_stride, where slot(t) = block_table[t / block_size] * block_size
// + t % block_size. scores: scratch of >= len floats. out: head_dim floats.
struct AttentionArgs {
  const float* q;
  const float* k_base;
  const float* v_base;
  int64_t kv_stride;  // floats between consecutive slots (num_kv_heads * head_dim)
  const int32_t* block_table;
  int64_t block_size;
  int64_t head_dim;
  int64_t len;
  float* scores;
  float* out;
};
void RefAttentionHead(const AttentionArgs& a);
void Avx2AttentionHead(const AttentionArgs& a);
// s[0, len) = softmax(scale * s[0, len)) (AVX2).
void Avx2SoftmaxRow(float* s, int64_t len, float scale);

bool CpuHasAvx2Fma();

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_KERNELS_CPU_KERNELS_H_
