// The CPU backend's quantized kernels: the Q8 activation blocks that the integer dot products
// consume, and the dot products themselves. The block formats and their row codecs are in
// kernels/quant_format.h.
//
// Block layouts are byte-compatible with GGUF files: Q8_0 {f16 d; i8 q[32]}, Q4_0 {f16 d;
// u8 q[16]} (low nibbles hold values 0-15 of the block, high nibbles 16-31, both offset by 8),
// Q5_0 and Q5_1 (the same with a fifth bit per value from a 32-bit qh; Q5_1 with a min instead of
// the offset), Q4_K, Q5_K and Q6_K as in ggml's k-quants (256 values per super-block).
#ifndef SHARDSERVE_KERNELS_CPU_QUANT_H_
#define SHARDSERVE_KERNELS_CPU_QUANT_H_

#include <cstdint>

#include "common/dtype.h"
#include "kernels/quant_format.h"

namespace shardserve::cpu {

// An activation block: 32 values as int8 with one float scale (value = d * q).
struct Q8Block {
  float d;
  int32_t qsum;  // sum of q, for formats stored with an offset (Q4_0's -8)
  int8_t q[32];
};

// x[0, n) -> n / 32 Q8 blocks; n % 32 == 0.
void QuantizeActivations(const float* x, int64_t n, Q8Block* out);

// The row codecs (kernels/quant_format.h), as the CPU kernels name them.
using ::shardserve::DequantizeRow;
using ::shardserve::QuantizeRow;

// Dot product of one weight row of any block format (k values) with Q8 activation
// blocks; the plain scalar reference of the AVX2 kernels.
float RefQuantDot(DType dt, const void* w_row, const Q8Block* x, int64_t k);

// Rows [j0, j1) of out = x * w^T for Q8_0 / Q4_0 weights (AVX2). x: n rows of k / 32 blocks,
// xq_stride blocks apart.
void Avx2QuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                       int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                       int64_t j0, int64_t j1);

// Rows [j0, j1) of out = x * w^T for Q4_K / Q5_K / Q6_K weights (AVX2): integer dot products of
// each 32-value sub-block with its Q8 activation block, scaled by the sub-block's scale (and, for
// Q4_K / Q5_K, less its min times the activations' sum). k % 256 == 0.
void Avx2KQuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                        int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                        int64_t j0, int64_t j1);

// Rows [j0, j1) of out = x * w^T for Q5_0 / Q5_1 weights (AVX2), one row at a time.
void Avx2Q5GemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                    int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                    int64_t j0, int64_t j1);

// The n == 1 case for Q8_0 / Q4_0 with AVX-VNNI dot products (check CpuHasAvxVnni() first).
void VnniQuantGemvRows1(DType dt, const void* w, int64_t k, const Q8Block* xq, const float* bias,
                        float* out, int64_t j0, int64_t j1);
bool CpuHasAvxVnni();

// Rows [j0, j1) of out = x * w^T for every block format with 512-bit VNNI dot products, any n
// (check CpuHasAvx512Vnni() first). K-quants need k % 256 == 0.
void Avx512VnniQuantGemvRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1);
// The same for prefill-sized n: an int8 GEMM over panels of 16 weight rows (AVX-512 VNNI).
// Every row range [j0, j1) is valid; panels start at j0.
void Avx512VnniQuantGemmRows(DType dt, const void* w, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1);
bool CpuHasAvx512Vnni();

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_KERNELS_CPU_QUANT_H_
