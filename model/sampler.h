// Token sampling with per-request parameters and reproducible randomness.
//
// The random number used at a position is a pure function of (seed, position), so a sequence
// that is re-prefilled elsewhere after a failure samples exactly what it would have. Sample() is
// thread-safe (no shared state).
#ifndef SHARDSERVE_MODEL_SAMPLER_H_
#define SHARDSERVE_MODEL_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

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

// Samples the token that will occupy `position` (the sequence's length before it) from `logits`
// [vocab], the model's output at position - 1. `history` holds the sequence's tokens so far
// (prompt and generated) for the penalties. Every caller (generate, the router) uses this
// convention, so the same seed gives the same text on every path.
SampleResult Sample(absl::Span<const float> logits, const SamplingParams& params, int64_t position,
                    absl::Span<const int32_t> history);

// The n most likely tokens with their log-probabilities under the raw logits.
std::vector<std::pair<int32_t, float>> TopLogprobs(absl::Span<const float> logits, int n);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SAMPLER_H_
