// The sampling contract every sampler follows, on the CPU (model/sampler.h) and on a device
// (kernels/cuda): the parameters, their valid ranges, and the random number drawn at a position.
// The number is a pure function of (seed, position), so a sequence that is re-prefilled
// elsewhere after a failure samples exactly what it would have.
#ifndef SHARDSERVE_KERNELS_SAMPLING_H_
#define SHARDSERVE_KERNELS_SAMPLING_H_

#include <cstdint>

#include "absl/status/status.h"

namespace shardserve {

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  int32_t top_k = 0;                // 0: off
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1: off (divides positive logits, multiplies negative)
  float presence_penalty = 0.0f;    // subtracted once per token present in the history
  float frequency_penalty = 0.0f;   // subtracted per occurrence in the history
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the field when a parameter is out of range or NaN.
absl::Status ValidateSamplingParams(const SamplingParams& p);

// The uniform [0, 1) number used at `position` for `seed`.
double SamplingUniform(uint64_t seed, int64_t position);

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;  // log-softmax of the chosen token under the final distribution
};

}  // namespace shardserve

#endif  // SHARDSERVE_KERNELS_SAMPLING_H_
