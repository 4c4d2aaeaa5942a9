// Launchers for the CUDA kernels of the backend (kernels.cu, sampling.cu).
//
// Every pointer is device memory unless noted; strides are in elements. Launchers only enqueue
// work on `stream` and never synchronize; the caller checks cudaGetLastError() afterwards. This
// header is plain C++ (no CUDA device code) so host files include it cheaply.
#ifndef SHARDSERVE_KERNELS_CUDA_KERNELS_H_
#define SHARDSERVE_KERNELS_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace shardserve::cuda {

enum class ElemType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// out[i, :] = float(table[ids[i], :]).
void LaunchEmbedding(const void* table, ElemType type, int64_t table_stride, const int32_t* ids,
                     int64_t rows, int64_t cols, float* out, int64_t out_stride,
                     cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * w, row-wise; out may alias x.
void LaunchRmsNorm(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows,
                   int64_t cols, float* out, int64_t out_stride, cudaStream_t stream);

// rotate_half RoPE in place on every head of x [rows, cols]; inv_freq has head_dim / 2 entries.
void LaunchRope(float* x, int64_t stride, int64_t rows, int64_t cols, int64_t head_dim,
                const int32_t* positions, const float* inv_freq, cudaStream_t stream);

// out[r, j] = silu(gu[r, j]) * gu[r, inter + j].
void LaunchSwiGlu(const float* gate_up, int64_t gu_stride, int64_t rows, int64_t inter, float* out,
                  int64_t out_stride, cudaStream_t stream);

// x += y.
void LaunchAdd(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows,
               int64_t cols, cudaStream_t stream);

// out[r, c] += bias[c].
void LaunchAddBias(float* out, int64_t stride, int64_t rows, int64_t cols, const float* bias,
                   cudaStream_t stream);

// Rounds F32 activations x [rows, cols] to `to` (F16 or BF16), contiguous, for the tensor-core
// GEMM.
void LaunchConvertActivations(const float* x, int64_t x_stride, int64_t rows, int64_t cols,
                              ElemType to, void* out, cudaStream_t stream);

// The decode path: out[i, j] = x[i, :] . w[j, :] (+ bias[j]) for i < rows <= kMaxGemvRows, with
// x kept in F32 and each weight read once. One warp per output column.
inline constexpr int64_t kMaxGemvRows = 4;
void LaunchGemv(const float* x, int64_t x_stride, int64_t rows, const void* w, ElemType type,
                int64_t m, int64_t k, const float* bias, float* out, int64_t out_stride,
                cudaStream_t stream);

// Paged attention over F32 K/V pools [blocks, block_size, kv_heads, head_dim]. Row r of the step
// sees keys at positions [0, row_len[r]) (its own position is row_len[r] - 1) through the block
// table tables[row_table[r] ...]. New k/v rows are written to their slots first. The key range
// of each (row, head) is cut into partitions of kAttentionPartition keys computed in parallel
// and merged by a second kernel (split-K, as flash-decoding does), so decode with one row still
// fills the device; prefill rows take the same path with their causal lengths.
inline constexpr int64_t kAttentionPartition = 256;
struct AttentionLaunch {
  const float* q = nullptr;
  int64_t q_stride = 0;
  const float* k = nullptr;
  int64_t k_stride = 0;
  const float* v = nullptr;
  int64_t v_stride = 0;
  float* k_cache = nullptr;
  float* v_cache = nullptr;
  float* out = nullptr;
  int64_t out_stride = 0;
  int64_t rows = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 0;
  int64_t max_len = 0;               // max over rows of row_len
  const int32_t* row_len = nullptr;  // [rows]
  const int32_t* row_table = nullptr;
  const int32_t* tables = nullptr;
  float* scratch = nullptr;  // AttentionScratchFloats(...) floats
};
size_t AttentionScratchFloats(int64_t rows, int64_t num_heads, int64_t head_dim, int64_t max_len);
void LaunchPagedAttention(const AttentionLaunch& a, cudaStream_t stream);

// Sampling, one thread block per row (sampling.cu). Mirrors model/sampler.cc: penalties, then
// greedy, or temperature, top-k, min-p, top-p and a draw with SamplingUniform(seed, position).
struct DeviceSampleParams {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  int64_t position = 0;
  int32_t penalty_begin = 0;  // pairs [begin, begin + count) of `penalty_pairs`
  int32_t penalty_count = 0;
};
struct DeviceSampleResult {
  int32_t token = 0;
  float logprob = 0.0f;
};
// penalty_pairs holds (token, occurrences) int32 pairs, each token at most once per row.
// scratch_f32: rows * vocab floats; scratch_f64: rows * vocab doubles.
void LaunchSample(const float* logits, int64_t stride, int64_t rows, int64_t vocab,
                  const DeviceSampleParams* params, const int32_t* penalty_pairs,
                  float* scratch_f32, double* scratch_f64, DeviceSampleResult* out,
                  cudaStream_t stream);

}  // namespace shardserve::cuda

#endif  // SHARDSERVE_KERNELS_CUDA_KERNELS_H_
