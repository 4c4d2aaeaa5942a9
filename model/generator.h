// Single-sequence generation on one in-process stage covering every layer: the reference path
// behind `shardserve generate`, and the yardstick the cluster's output is tested against.
#ifndef SHARDSERVE_MODEL_GENERATOR_H_
#define SHARDSERVE_MODEL_GENERATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/sampler.h"
#include "model/stage.h"

namespace shardserve {

struct GenerateOptions {
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  int64_t prefill_chunk = 512;    // prompt tokens per forward call
};

struct GenerateResult {
  std::vector<int32_t> ids;  // generated only
  std::vector<float> logprobs;
  std::string finish_reason;  // "stop" (a stop id) or "length"
  double prefill_seconds = 0;
  double decode_seconds = 0;  // from the first generated token to the last
};

// `on_token` (optional) sees each generated id as soon as it is sampled; returning false stops.
// The stage must be whole (first and last) and its KV cache large enough for the sequence.
absl::StatusOr<GenerateResult> Generate(ModelStage& stage, const std::vector<int32_t>& prompt,
                                        const GenerateOptions& options,
                                        const std::function<bool(int32_t)>& on_token = nullptr);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_GENERATOR_H_
