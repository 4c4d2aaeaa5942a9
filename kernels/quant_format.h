// llama.cpp's block quantization formats as data: converting rows between F32 and Q8_0 / Q4_0
// (quantizers for --quantize at load) and from every supported block format to F32
// (dequantizers for the reference path, prefill panels, embedding rows and loaders). Host code,
// the same for every backend; the CPU backend's integer dot products are in kernels/cpu/quant.h.
//
// Block layouts are byte-compatible with GGUF files: Q8_0 {f16 d; i8 q[32]}, Q4_0 {f16 d;
// u8 q[16]} (low nibbles hold values 0-15 of the block, high nibbles 16-31, both offset by 8),
// Q5_0 {f16 d; u32 qh; u8 q[16]} (Q4_0's nibbles with bit v of qh as bit 4 of value v, offset by
// 16), Q5_1 {f16 d; f16 m; u32 qh; u8 q[16]} (the same bits unsigned, value = d q + m), IQ4_NL
// {f16 d; u8 q[16]} (Q4_0's nibbles, each an index into the non-linear kIq4NlValues), and Q4_K,
// Q5_K and Q6_K as in ggml's k-quants (256 values per super-block).
#ifndef SHARDSERVE_KERNELS_QUANT_FORMAT_H_
#define SHARDSERVE_KERNELS_QUANT_FORMAT_H_

#include <cstdint>

#include "common/dtype.h"

namespace shardserve {

// Byte offsets inside a Q5_0 / Q5_1 block: the 32-bit qh follows the F16 scale (and Q5_1's F16
// min), the 16 bytes of nibbles follow qh.
constexpr int64_t Q5HighBitsAt(DType t) { return t == DType::kQ5_1 ? 4 : 2; }
constexpr int64_t Q5QuantsAt(DType t) { return Q5HighBitsAt(t) + 4; }

// IQ4_NL's 16 levels (value = d x level), as ggml defines them: denser near zero, where weights
// cluster.
inline constexpr int8_t kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};

// n values (a multiple of the type's block) of `src` in format `dt` -> F32.
void DequantizeRow(DType dt, const void* src, int64_t n, float* dst);

// F32 -> Q8_0 or Q4_0 blocks, as llama.cpp's reference quantizers do; n % 32 == 0.
void QuantizeRow(DType dt, const float* x, int64_t n, void* dst);

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_QUANT_FORMAT_H_
