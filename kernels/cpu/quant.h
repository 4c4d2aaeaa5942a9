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

// Q4_0 weights repacked at load for the AVX-512 VNNI kernels (interleaved rows, as llama.cpp's
// CPU "extra buffer" types): rows in groups of 16. A group is read as one stream: for each pair
// of 32-value blocks, the pair's scales (16 F16 per block, 64 bytes), then each block's quants,
// 4 x 64 bytes, where vector c has row r's quant bytes 4c..4c+3 in lane r (low nibbles: the
// block's values 4c..4c+3, high nibbles 16+4c..19+4c); an odd last block stands alone (32 bytes
// of scales, then its quants). Everything but that last block stays 64-byte aligned, and the
// size is the file's.
inline size_t Q4_0x16GroupBytes(int64_t k) { return static_cast<size_t>(k / 32) * 288; }
// Where block b's scales start within a group, and its quants within a group of nb blocks.
inline size_t Q4_0x16ScalesAt(int64_t b) { return static_cast<size_t>(b / 2) * 576 + (b % 2) * 32; }
inline size_t Q4_0x16QuantsAt(int64_t nb, int64_t b) {
  const int64_t in_unit = nb - (b - b % 2) >= 2 ? 2 : 1;
  return static_cast<size_t>(b / 2) * 576 + in_unit * 32 + (b % 2) * 256;
}
// `rows` (a multiple of 16) Q4_0 rows of k values -> rows / 16 groups at `out`.
void RepackQ4_0x16(const void* w, int64_t rows, int64_t k, uint8_t* out);
// Rows [j0, j1) (multiples of 16) of out = x * w^T for repacked Q4_0 weights: n activation rows
// as Q8 blocks, xq_stride blocks apart; bias may be null. Decode and prefill alike: 8 activation
// rows share each unpacked weight vector.
void Avx512VnniQ4_0x16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1);

// IQ4_NL weights repacked as Q4_0's (RepackQ4_0x16: the same block layout), for this kernel.
void Avx512VnniIQ4_NLx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                             int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                             int64_t j0, int64_t j1);

// Q4_K weights repacked at load the same way: rows in groups of 16, each super-block of 256
// values 2304 bytes, the file's size: the 16 rows' d (F16, 32 bytes) and dmin (32 bytes), their
// 12 scale bytes as three 64-byte vectors (vector v has row r's bytes 4v..4v+3 in lane r), then
// the quants as 32 vectors, vector 8c + v holding row r's quant bytes 32c + 4v..32c + 4v + 3 in
// lane r (low nibbles: values 4v..4v+3 of sub-block 2c; high nibbles: the same of sub-block 2c+1).
inline constexpr size_t kQ4_Kx16SuperBytes = 16 * DTypeBlockBytes(DType::kQ4_K);  // 2304
inline size_t Q4_Kx16GroupBytes(int64_t k) {
  return static_cast<size_t>(k / 256) * kQ4_Kx16SuperBytes;
}
// `rows` (a multiple of 16) Q4_K rows of k values (k % 256 == 0) -> rows / 16 groups at `out`.
void RepackQ4_Kx16(const void* w, int64_t rows, int64_t k, uint8_t* out);
// Rows [j0, j1) (multiples of 16) of out = x * w^T for repacked Q4_K weights, as
// Avx512VnniQ4_0x16Rows.
void Avx512VnniQ4_Kx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1);

// Q6_K weights repacked at load the same way: rows in groups of 16, each super-block of 256
// values 3360 bytes, the file's size, in the order the kernel reads them: the 16 rows' d (16
// F16), their 16 int8 scales as 4 vectors (vector u has row r's scales 4u..4u+3 in lane r), then
// for each half n of the super-block and step v = 0..7, three vectors holding row r's
// ql[64n + 4v..], ql[64n + 32 + 4v..] and qh[32n + 4v..] (4 bytes each) in lane r.
inline constexpr size_t kQ6_Kx16SuperBytes = 16 * DTypeBlockBytes(DType::kQ6_K);  // 3360
inline size_t Q6_Kx16GroupBytes(int64_t k) {
  return static_cast<size_t>(k / 256) * kQ6_Kx16SuperBytes;
}
// `rows` (a multiple of 16) Q6_K rows of k values (k % 256 == 0) -> rows / 16 groups at `out`.
void RepackQ6_Kx16(const void* w, int64_t rows, int64_t k, uint8_t* out);
// Rows [j0, j1) (multiples of 16) of out = x * w^T for repacked Q6_K weights, as
// Avx512VnniQ4_0x16Rows.
void Avx512VnniQ6_Kx16Rows(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n,
                           int64_t xq_stride, const float* bias, float* out, int64_t out_stride,
                           int64_t j0, int64_t j1);

// A weight format the AVX-512 VNNI kernels read repacked into groups of 16 interleaved rows: a
// group's bytes for k values, the repacker, and the kernel.
struct Repacked {
  size_t (*group_bytes)(int64_t k);
  void (*repack)(const void* w, int64_t rows, int64_t k, uint8_t* out);
  void (*rows)(const uint8_t* packed, int64_t k, const Q8Block* xq, int64_t n, int64_t xq_stride,
               const float* bias, float* out, int64_t out_stride, int64_t j0, int64_t j1);
};
// The repacked form of `dt` for rows of k values (Q4_0, IQ4_NL, Q4_K, Q6_K), or null when there
// is none. Its kernel needs AVX-512 VNNI (CpuHasAvx512Vnni()).
const Repacked* RepackedFormat(DType dt, int64_t k);

}  // namespace shardserve::cpu

#endif  // SHARDSERVE_KERNELS_CPU_QUANT_H_
