// Token sampling on the CPU with per-request parameters and reproducible randomness, following
// the contract of kernels/sampling.h (parameters, validation, the draw at each position).
// Sample() is thread-safe (no shared state).
#ifndef SHARDSERVE_MODEL_SAMPLER_H_
#define SHARDSERVE_MODEL_SAMPLER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kernels/sampling.h"

namespace shardserve {

// Samples the token that will occupy `position` (the sequence's length before it) from `logits`
// [vocab], the model's output at position - 1. `history` holds the sequence's tokens so far
// (prompt and generated) for the penalties. Every caller (generate, the router) uses this
// convention, so the same seed gives the same text on every path.
SampleResult Sample(absl::Span<const float> logits, const SamplingParams& params, int64_t position,
                    absl::Span<const int32_t> history);

// Sets the logits of the tokens `allowed` leaves out to -infinity: bit i of byte i / 8 (least
// significant first) allows token i (v1::SequencePlan.allowed_tokens). Sampling afterwards never
// picks a masked token, and penalties, temperature, top-k/p and min-p act on the rest.
void MaskLogits(absl::string_view allowed, absl::Span<float> logits);

// The n most likely tokens with their log-probabilities under the raw logits.
std::vector<std::pair<int32_t, float>> TopLogprobs(absl::Span<const float> logits, int n);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SAMPLER_H_
