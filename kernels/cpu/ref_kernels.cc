// The plain reference path: scalar loops in the obvious order, the yardstick for every fast path.
#include <cmath>

#include "kernels/cpu/kernels.h"

namespace shardserve::cpu {
namespace {

inline float WeightAt(const void* w, DType wt, int64_t idx) {
  switch (wt) {
    case DType::kF32:
      return static_cast<const float*>(w)[idx];
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(w)[idx]);
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(w)[idx]);
    default:
      return 0.0f;
  }
}

}  // namespace

void RefGemvRows(const GemvArgs& a, int64_t j0, int64_t j1) {
  for (int64_t i = 0; i < a.n; ++i) {
    const float* x = a.x + i * a.x_stride;
    for (int64_t j = j0; j < j1; ++j) {
      float acc = 0.0f;
      for (int64_t c = 0; c < a.k; ++c) acc += x[c] * WeightAt(a.w, a.wt, j * a.k + c);
      if (a.bias != nullptr) acc += a.bias[j];
      a.out[i * a.out_stride + j] = acc;
    }
  }
}

void RefConvertRows(const void* w, DType wt, int64_t k, int64_t r0, int64_t r1, float* dst) {
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t c = 0; c < k; ++c) dst[(r - r0) * k + c] = WeightAt(w, wt, r * k + c);
  }
}

void RefAttentionHead(const AttentionArgs& a) {
  float max_score = -INFINITY;
  for (int64_t t = 0; t < a.len; ++t) {
    const int64_t slot = a.block_table[t / a.block_size] * a.block_size + t % a.block_size;
    const float* key = a.k_base + slot * a.kv_stride;
    float s = 0.0f;
    for (int64_t d = 0; d < a.head_dim; ++d) s += a.q[d] * key[d];
    a.scores[t] = s;
    max_score = std::max(max_score, s);
  }
  float sum = 0.0f;
  for (int64_t t = 0; t < a.len; ++t) {
    a.scores[t] = std::exp(a.scores[t] - max_score);
    sum += a.scores[t];
  }
  for (int64_t d = 0; d < a.head_dim; ++d) a.out[d] = 0.0f;
  for (int64_t t = 0; t < a.len; ++t) {
    const int64_t slot = a.block_table[t / a.block_size] * a.block_size + t % a.block_size;
    const float* value = a.v_base + slot * a.kv_stride;
    const float p = a.scores[t] / sum;
    for (int64_t d = 0; d < a.head_dim; ++d) a.out[d] += p * value[d];
  }
}

}  // namespace shardserve::cpu
