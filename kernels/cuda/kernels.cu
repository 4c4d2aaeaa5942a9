// Element-wise, normalisation, RoPE, GEMV and paged-attention kernels of the CUDA backend.
// Accumulation is in F32 throughout; weights are widened to F32 as they are loaded.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace shardserve::cuda {
namespace {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `red` holds >= 32 floats.
__device__ float BlockSum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < warps ? red[lane] : 0.0f;
  return WarpSum(v);
}
__device__ float BlockMax(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < warps ? red[lane] : -FLT_MAX;
  return WarpMax(v);
}

// ---- element-wise ------------------------------------------------------------------------

template <typename T>
__global__ void EmbeddingKernel(const T* table, int64_t table_stride, const int32_t* ids,
                                int64_t cols, float* out, int64_t out_stride) {
  const int64_t r = blockIdx.x;
  const T* src = table + static_cast<int64_t>(ids[r]) * table_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    out[r * out_stride + c] = ToFloat(src[c]);
}

__global__ void RmsNormKernel(const float* x, int64_t x_stride, const float* w, float eps,
                              int64_t cols, float* out, int64_t out_stride) {
  __shared__ float red[32];
  const float* in = x + blockIdx.x * x_stride;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += in[c] * in[c];
  ss = BlockSum(ss, red);
  const float scale = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  float* o = out + blockIdx.x * out_stride;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = w[c] * (in[c] * scale);
}

__global__ void RopeKernel(float* x, int64_t stride, int64_t cols, int64_t head_dim,
                           const int32_t* positions, const float* inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = cols / head_dim * half;
  const float pos = static_cast<float>(positions[blockIdx.x]);
  float* row = x + blockIdx.x * stride;
  for (int64_t p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int64_t h = p / half, i = p % half;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    float* v = row + h * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * c - b * s;
    v[i + half] = b * c + a * s;
  }
}

__global__ void SwiGluKernel(const float* gu, int64_t gu_stride, int64_t inter, float* out,
                             int64_t out_stride) {
  const float* g = gu + blockIdx.y * gu_stride;
  float* o = out + blockIdx.y * out_stride;
  for (int64_t j = blockIdx.x * blockDim.x + threadIdx.x; j < inter; j += gridDim.x * blockDim.x) {
    const float gv = g[j];
    o[j] = gv / (1.0f + expf(-gv)) * g[inter + j];
  }
}

__global__ void AddKernel(float* x, int64_t x_stride, const float* y, int64_t y_stride,
                          int64_t cols) {
  float* a = x + blockIdx.y * x_stride;
  const float* b = y + blockIdx.y * y_stride;
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    a[c] += b[c];
  }
}

__global__ void AddBiasKernel(float* out, int64_t stride, int64_t cols, const float* bias) {
  float* o = out + blockIdx.y * stride;
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    o[c] += bias[c];
  }
}

__device__ __forceinline__ void Store(__half* o, float v) { *o = __float2half_rn(v); }
__device__ __forceinline__ void Store(__nv_bfloat16* o, float v) { *o = __float2bfloat16_rn(v); }

template <typename T>
__global__ void ConvertKernel(const float* x, int64_t x_stride, int64_t cols, T* out) {
  const float* in = x + blockIdx.y * x_stride;
  T* o = out + blockIdx.y * cols;
  for (int64_t c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    Store(o + c, in[c]);
  }
}

// Grid for a [rows, cols] element-wise kernel: y over rows, x over column chunks.
dim3 RowGrid(int64_t rows, int64_t cols, int threads) {
  const int64_t chunks = (cols + threads - 1) / threads;
  return dim3(static_cast<unsigned>(chunks < 64 ? chunks : 64), static_cast<unsigned>(rows));
}

// ---- GEMV --------------------------------------------------------------------------------

constexpr int kGemvWarps = 8;

// Vector path: 16-byte weight loads; needs k % (16 / sizeof(T)) == 0, 16-byte aligned rows of w
// and of x.
template <typename T>
__global__ void GemvVecKernel(const float* x, int64_t x_stride, int rows, const T* w, int64_t m,
                              int64_t k, const float* bias, float* out, int64_t out_stride) {
  constexpr int kVec = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (j >= m) return;
  const T* wr = w + j * k;
  float acc[kMaxGemvRows] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * kVec; c < k; c += 32 * kVec) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(wr + c));
    const T* wv = reinterpret_cast<const T*>(&raw);
    float wf[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) wf[e] = ToFloat(wv[e]);
#pragma unroll
    for (int i = 0; i < kMaxGemvRows; ++i) {
      if (i < rows) {
        const float4* xv = reinterpret_cast<const float4*>(x + i * x_stride + c);
#pragma unroll
        for (int e4 = 0; e4 < kVec / 4; ++e4) {
          const float4 xx = xv[e4];
          acc[i] += wf[4 * e4] * xx.x + wf[4 * e4 + 1] * xx.y + wf[4 * e4 + 2] * xx.z +
                    wf[4 * e4 + 3] * xx.w;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kMaxGemvRows; ++i) {
    if (i < rows) {
      const float s = WarpSum(acc[i]);
      if (lane == 0) out[i * out_stride + j] = s + (bias != nullptr ? bias[j] : 0.0f);
    }
  }
}

template <typename T>
__global__ void GemvScalarKernel(const float* x, int64_t x_stride, int rows, const T* w, int64_t m,
                                 int64_t k, const float* bias, float* out, int64_t out_stride) {
  const int lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kGemvWarps + (threadIdx.x >> 5);
  if (j >= m) return;
  const T* wr = w + j * k;
  for (int i = 0; i < rows; ++i) {
    float acc = 0.0f;
    for (int64_t c = lane; c < k; c += 32) acc += ToFloat(wr[c]) * x[i * x_stride + c];
    acc = WarpSum(acc);
    if (lane == 0) out[i * out_stride + j] = acc + (bias != nullptr ? bias[j] : 0.0f);
  }
}

template <typename T>
void Gemv(const float* x, int64_t x_stride, int64_t rows, const T* w, int64_t m, int64_t k,
          const float* bias, float* out, int64_t out_stride, cudaStream_t stream) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const bool vec = k % kVec == 0 && x_stride % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % 16 == 0;
  const unsigned blocks = static_cast<unsigned>((m + kGemvWarps - 1) / kGemvWarps);
  if (vec) {
    GemvVecKernel<T><<<blocks, kGemvWarps * 32, 0, stream>>>(x, x_stride, static_cast<int>(rows), w,
                                                             m, k, bias, out, out_stride);
  } else {
    GemvScalarKernel<T><<<blocks, kGemvWarps * 32, 0, stream>>>(x, x_stride, static_cast<int>(rows),
                                                                w, m, k, bias, out, out_stride);
  }
}

// ---- paged attention ---------------------------------------------------------------------

constexpr int kAttnThreads = 128;

__device__ __forceinline__ int64_t Slot(const int32_t* table, int64_t pos, int64_t block_size) {
  return static_cast<int64_t>(table[pos / block_size]) * block_size + pos % block_size;
}

__global__ void KvWriteKernel(AttentionLaunch a) {
  const int64_t r = blockIdx.x;
  const int64_t kv_width = a.num_kv_heads * a.head_dim;
  const int64_t slot = Slot(a.tables + a.row_table[r], a.row_len[r] - 1, a.block_size);
  for (int64_t c = threadIdx.x; c < kv_width; c += blockDim.x) {
    a.k_cache[slot * kv_width + c] = a.k[r * a.k_stride + c];
    a.v_cache[slot * kv_width + c] = a.v[r * a.v_stride + c];
  }
}

// One block per (row, head, partition). Writes the partition's unnormalised output, its max
// score and its sum of exp(score - max) to scratch.
__global__ void AttentionPartitionKernel(AttentionLaunch a, int64_t partitions) {
  extern __shared__ int64_t smem[];
  const int64_t D = a.head_dim;
  int64_t* slots = reinterpret_cast<int64_t*>(smem);                 // [kAttentionPartition]
  float* p = reinterpret_cast<float*>(slots + kAttentionPartition);  // [kAttentionPartition]
  float* qs = p + kAttentionPartition;                               // [D]
  __shared__ float red[32];

  const int64_t item = blockIdx.x;  // row * num_heads + head
  const int64_t r = item / a.num_heads, h = item % a.num_heads;
  const int64_t part = blockIdx.y;
  const int64_t len = a.row_len[r];
  const int64_t begin = part * kAttentionPartition;
  float* dst = a.scratch + (item * partitions + part) * (D + 2);
  if (begin >= len) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dst[d] = 0.0f;
    if (threadIdx.x == 0) {
      dst[D] = -FLT_MAX;
      dst[D + 1] = 0.0f;
    }
    return;
  }
  const int64_t n = min(len - begin, kAttentionPartition);
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t kv_width = a.num_kv_heads * D;
  const int64_t kv_off = (h / group) * D;
  const int32_t* table = a.tables + a.row_table[r];
  const float scale = 1.0f / sqrtf(static_cast<float>(D));
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    qs[d] = a.q[r * a.q_stride + h * D + d] * scale;
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t j = warp; j < n; j += warps) {
    const int64_t slot = Slot(table, begin + j, a.block_size);
    const float* key = a.k_cache + slot * kv_width + kv_off;
    float s = 0.0f;
    for (int64_t d = lane; d < D; d += 32) s += qs[d] * key[d];
    s = WarpSum(s);
    if (lane == 0) {
      p[j] = s;
      slots[j] = slot;
    }
  }
  __syncthreads();
  float m = -FLT_MAX;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, p[j]);
  m = BlockMax(m, red);
  float l = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const float e = expf(p[j] - m);
    p[j] = e;
    l += e;
  }
  l = BlockSum(l, red);  // also orders the p[] writes before the reads below
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; ++j) acc += p[j] * a.v_cache[slots[j] * kv_width + kv_off + d];
    dst[d] = acc;
  }
  if (threadIdx.x == 0) {
    dst[D] = m;
    dst[D + 1] = l;
  }
}

__global__ void AttentionCombineKernel(AttentionLaunch a, int64_t partitions) {
  const int64_t item = blockIdx.x;
  const int64_t r = item / a.num_heads, h = item % a.num_heads;
  const int64_t D = a.head_dim;
  const float* src = a.scratch + item * partitions * (D + 2);
  float m = -FLT_MAX;
  for (int64_t p = 0; p < partitions; ++p) m = fmaxf(m, src[p * (D + 2) + D]);
  float l = 0.0f;
  for (int64_t p = 0; p < partitions; ++p) {
    l += src[p * (D + 2) + D + 1] * expf(src[p * (D + 2) + D] - m);
  }
  float* o = a.out + r * a.out_stride + h * D;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t p = 0; p < partitions; ++p) {
      acc += src[p * (D + 2) + d] * expf(src[p * (D + 2) + D] - m);
    }
    o[d] = acc / l;
  }
}

int64_t Partitions(int64_t max_len) {
  return (max_len + kAttentionPartition - 1) / kAttentionPartition;
}

}  // namespace

void LaunchEmbedding(const void* table, ElemType type, int64_t table_stride, const int32_t* ids,
                     int64_t rows, int64_t cols, float* out, int64_t out_stride,
                     cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned grid = static_cast<unsigned>(rows);
  switch (type) {
    case ElemType::kF32:
      EmbeddingKernel<<<grid, 256, 0, stream>>>(static_cast<const float*>(table), table_stride, ids,
                                                cols, out, out_stride);
      break;
    case ElemType::kF16:
      EmbeddingKernel<<<grid, 256, 0, stream>>>(static_cast<const __half*>(table), table_stride,
                                                ids, cols, out, out_stride);
      break;
    case ElemType::kBF16:
      EmbeddingKernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(table),
                                                table_stride, ids, cols, out, out_stride);
      break;
  }
}

void LaunchRmsNorm(const float* x, int64_t x_stride, const float* w, float eps, int64_t rows,
                   int64_t cols, float* out, int64_t out_stride, cudaStream_t stream) {
  if (rows == 0) return;
  RmsNormKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(x, x_stride, w, eps, cols, out,
                                                                 out_stride);
}

void LaunchRope(float* x, int64_t stride, int64_t rows, int64_t cols, int64_t head_dim,
                const int32_t* positions, const float* inv_freq, cudaStream_t stream) {
  if (rows == 0) return;
  RopeKernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(x, stride, cols, head_dim, positions,
                                                              inv_freq);
}

void LaunchSwiGlu(const float* gate_up, int64_t gu_stride, int64_t rows, int64_t inter, float* out,
                  int64_t out_stride, cudaStream_t stream) {
  if (rows == 0) return;
  SwiGluKernel<<<RowGrid(rows, inter, 256), 256, 0, stream>>>(gate_up, gu_stride, inter, out,
                                                              out_stride);
}

void LaunchAdd(float* x, int64_t x_stride, const float* y, int64_t y_stride, int64_t rows,
               int64_t cols, cudaStream_t stream) {
  if (rows == 0) return;
  AddKernel<<<RowGrid(rows, cols, 256), 256, 0, stream>>>(x, x_stride, y, y_stride, cols);
}

void LaunchAddBias(float* out, int64_t stride, int64_t rows, int64_t cols, const float* bias,
                   cudaStream_t stream) {
  if (rows == 0) return;
  AddBiasKernel<<<RowGrid(rows, cols, 256), 256, 0, stream>>>(out, stride, cols, bias);
}

void LaunchConvertActivations(const float* x, int64_t x_stride, int64_t rows, int64_t cols,
                              ElemType to, void* out, cudaStream_t stream) {
  if (rows == 0) return;
  if (to == ElemType::kF16) {
    ConvertKernel<<<RowGrid(rows, cols, 256), 256, 0, stream>>>(x, x_stride, cols,
                                                                static_cast<__half*>(out));
  } else {
    ConvertKernel<<<RowGrid(rows, cols, 256), 256, 0, stream>>>(x, x_stride, cols,
                                                                static_cast<__nv_bfloat16*>(out));
  }
}

void LaunchGemv(const float* x, int64_t x_stride, int64_t rows, const void* w, ElemType type,
                int64_t m, int64_t k, const float* bias, float* out, int64_t out_stride,
                cudaStream_t stream) {
  if (rows == 0 || m == 0) return;
  switch (type) {
    case ElemType::kF32:
      Gemv(x, x_stride, rows, static_cast<const float*>(w), m, k, bias, out, out_stride, stream);
      break;
    case ElemType::kF16:
      Gemv(x, x_stride, rows, static_cast<const __half*>(w), m, k, bias, out, out_stride, stream);
      break;
    case ElemType::kBF16:
      Gemv(x, x_stride, rows, static_cast<const __nv_bfloat16*>(w), m, k, bias, out, out_stride,
           stream);
      break;
  }
}

size_t AttentionScratchFloats(int64_t rows, int64_t num_heads, int64_t head_dim, int64_t max_len) {
  return static_cast<size_t>(rows * num_heads * Partitions(max_len) * (head_dim + 2));
}

void LaunchPagedAttention(const AttentionLaunch& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  KvWriteKernel<<<static_cast<unsigned>(a.rows), 256, 0, stream>>>(a);
  const int64_t partitions = Partitions(a.max_len);
  const size_t smem = static_cast<size_t>(a.head_dim + kAttentionPartition) * sizeof(float) +
                      kAttentionPartition * sizeof(int64_t);
  const dim3 grid(static_cast<unsigned>(a.rows * a.num_heads), static_cast<unsigned>(partitions));
  AttentionPartitionKernel<<<grid, kAttnThreads, smem, stream>>>(a, partitions);
  AttentionCombineKernel<<<static_cast<unsigned>(a.rows * a.num_heads), kAttnThreads, 0, stream>>>(
      a, partitions);
}

}  // namespace shardserve::cuda
