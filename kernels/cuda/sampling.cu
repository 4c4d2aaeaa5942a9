// Token sampling on the device, one thread block per row, following model/sampler.cc step by
// step so that CPU and GPU pick the same token from the same logits.
//
// The CPU sorts the vocabulary; here nothing is sorted. Each token gets a 64-bit key that orders
// tokens exactly as the CPU's comparator does (logit descending, then id ascending): the logit's
// order-preserving bits above, the complemented id below. "The first n tokens in sorted order"
// is then "keys >= the n-th largest key", and every cut the CPU makes (top-k, min-p, top-p, the
// draw itself) is found by bisecting the key space, one block-wide count or probability mass per
// bit. Probabilities are computed in double as on the CPU; sums are tree-ordered instead of
// sequential, so a draw can differ only when u lands within rounding (~1e-16 relative) of a
// boundary between two tokens.
#include <cfloat>
#include <cstdint>

#include "kernels/cuda/kernels.h"

namespace shardserve::cuda {
namespace {

constexpr int kSampleThreads = 512;

__device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Same bits as SamplingUniform() in kernels/sampling.cc.
__device__ __forceinline__ double Uniform(uint64_t seed, int64_t position) {
  const uint64_t h = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(position));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

__device__ __forceinline__ uint64_t Key(float l, int64_t i) {
  uint32_t b = __float_as_uint(l + 0.0f);  // -0 and +0 compare equal on the CPU
  b = (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
  return (static_cast<uint64_t>(b) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

__device__ __forceinline__ int32_t TokenOf(uint64_t key) {
  return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a < b ? a : b;
  }
};

// Block-wide reduction; every thread gets the result. `red` holds 32 T.
template <typename T, typename Op>
__device__ T BlockReduce(T v, T identity, Op op, T* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < warps ? red[lane] : identity;
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

struct RowState {
  const float* l;    // processed logits
  const double* pr;  // exp(l - max) in double
  int64_t vocab;
  unsigned long long* red_u;
  double* red_d;
};

// The n-th largest key (n >= 1).
__device__ uint64_t SelectNth(const RowState& s, unsigned long long n) {
  uint64_t k = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t cand = k | (1ull << bit);
    unsigned long long c = 0;
    for (int64_t i = threadIdx.x; i < s.vocab; i += blockDim.x) c += Key(s.l[i], i) >= cand;
    c = BlockReduce(c, 0ull, SumOp(), s.red_u);
    if (c >= n) k = cand;
  }
  return k;
}

// The largest key K with mass(keys >= max(K, floor)) >= target (strict: > target); 0 if none.
__device__ uint64_t LargestWithMass(const RowState& s, uint64_t floor, double target, bool strict) {
  uint64_t k = 0;
  for (int bit = 63; bit >= 0; --bit) {
    const uint64_t cand = k | (1ull << bit);
    const uint64_t lo = cand > floor ? cand : floor;
    double m = 0.0;
    for (int64_t i = threadIdx.x; i < s.vocab; i += blockDim.x) {
      if (Key(s.l[i], i) >= lo) m += s.pr[i];
    }
    m = BlockReduce(m, 0.0, SumOp(), s.red_d);
    if (strict ? m > target : m >= target) k = cand;
  }
  return k;
}

__device__ double MassFrom(const RowState& s, uint64_t floor) {
  double m = 0.0;
  for (int64_t i = threadIdx.x; i < s.vocab; i += blockDim.x) {
    if (Key(s.l[i], i) >= floor) m += s.pr[i];
  }
  return BlockReduce(m, 0.0, SumOp(), s.red_d);
}

__global__ void SampleKernel(const float* logits, int64_t stride, int64_t vocab,
                             const DeviceSampleParams* params, const int32_t* pairs,
                             float* scratch_f32, double* scratch_f64, DeviceSampleResult* out) {
  __shared__ unsigned long long red_u[32];
  __shared__ double red_d[32];
  __shared__ float red_f[32];
  const int64_t row = blockIdx.x;
  const DeviceSampleParams p = params[row];
  float* l = scratch_f32 + row * vocab;
  double* pr = scratch_f64 + row * vocab;
  const float* in = logits + row * stride;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) l[i] = in[i];
  __syncthreads();
  for (int32_t q = threadIdx.x; q < p.penalty_count; q += blockDim.x) {
    const int32_t t = pairs[2 * (p.penalty_begin + q)];
    const int32_t n = pairs[2 * (p.penalty_begin + q) + 1];
    float v = l[t];
    if (p.repetition_penalty != 1.0f)
      v = v > 0 ? v / p.repetition_penalty : v * p.repetition_penalty;
    v -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
    l[t] = v;
  }
  __syncthreads();
  RowState s{l, pr, vocab, red_u, red_d};

  if (p.temperature == 0.0f) {
    unsigned long long best = 0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      const unsigned long long k = Key(l[i], i);
      best = k > best ? k : best;
    }
    best = BlockReduce(best, 0ull, MaxOp(), red_u);
    const int32_t tok = TokenOf(best);
    const float m = l[tok];
    double sum = 0.0;
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      sum += exp(static_cast<double>(l[i] - m));
    }
    sum = BlockReduce(sum, 0.0, SumOp(), red_d);
    if (threadIdx.x == 0) {
      out[row].token = tok;
      out[row].logprob = l[tok] - (m + static_cast<float>(log(sum)));
    }
    return;
  }

  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) l[i] /= p.temperature;
  float max_logit = -FLT_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) max_logit = fmaxf(max_logit, l[i]);
  max_logit = BlockReduce(max_logit, -FLT_MAX, MaxOp(), red_f);
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    pr[i] = exp(static_cast<double>(l[i] - max_logit));
  }
  __syncthreads();

  uint64_t floor = 0;  // kept tokens: keys >= floor
  if (p.top_k > 0 && p.top_k < vocab)
    floor = SelectNth(s, static_cast<unsigned long long>(p.top_k));
  if (p.min_p > 0.0f) {
    unsigned long long n = 0;
    const double cut = static_cast<double>(p.min_p);  // times probs[0] == 1 on the CPU
    for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
      n += Key(l[i], i) >= floor && pr[i] >= cut;
    }
    n = BlockReduce(n, 0ull, SumOp(), red_u);
    floor = SelectNth(s, n > 0 ? n : 1);
  }
  if (p.top_p < 1.0f) {
    const double all = MassFrom(s, floor);
    const uint64_t k = LargestWithMass(s, floor, static_cast<double>(p.top_p) * all, false);
    floor = k > floor ? k : floor;
  }
  // Make `floor` the smallest kept key, the token the CPU falls back to.
  unsigned long long smallest = ~0ull;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) {
    const unsigned long long k = Key(l[i], i);
    if (k >= floor && k < smallest) smallest = k;
  }
  floor = BlockReduce(smallest, ~0ull, MinOp(), red_u);
  const double kept = MassFrom(s, floor);
  const double u = Uniform(p.seed, p.position) * kept;
  uint64_t chosen = LargestWithMass(s, floor, u, true);
  chosen = chosen > floor ? chosen : floor;
  if (threadIdx.x == 0) {
    const int32_t tok = TokenOf(chosen);
    out[row].token = tok;
    out[row].logprob = static_cast<float>(log(pr[tok] / kept));
  }
}

}  // namespace

void LaunchSample(const float* logits, int64_t stride, int64_t rows, int64_t vocab,
                  const DeviceSampleParams* params, const int32_t* penalty_pairs,
                  float* scratch_f32, double* scratch_f64, DeviceSampleResult* out,
                  cudaStream_t stream) {
  if (rows == 0) return;
  SampleKernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(
      logits, stride, vocab, params, penalty_pairs, scratch_f32, scratch_f64, out);
}

}  // namespace shardserve::cuda
