// A simulated pipeline stage: the real worker runtime, links and router around a stage whose
// math is replaced by the cost model (model/cost_model.h).
//
// Forward validates the step exactly as a real stage does, then waits, without spinning, until
// an absolute deadline: the step starts when its input has arrived (the previous stage's
// compute end plus the activation hop for the full tensor) and the device is free, and takes
// StageStepCost's time. The activations it hands on are a compact stand-in, kSimActivationWidth
// values per row, whose first row carries the time they arrive at the next stage; every sim
// worker of one cluster runs on one host, so they share its real-time clock.
//
// The last stage picks each sequence's next token itself: a hash of (seed, the position it
// follows, the sequence's last token) chosen among the synthetic tokenizer's letter pieces
// (model/synth.h: "a".."z" and "▁a".."▁z"), so greedy runs reproduce, text detokenizes, and a
// sequence replayed on another pipeline after a failure gets the same tokens. It never picks an
// end-of-sequence token: streams end at their max_tokens or stop strings.
//
// The stage holds no weights and no KV cache; the bytes they would take on the device are
// checked against the profile's memory at load (RESOURCE_EXHAUSTED when they do not fit).
#ifndef SHARDSERVE_MODEL_SIM_STAGE_H_
#define SHARDSERVE_MODEL_SIM_STAGE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/cost_model.h"
#include "model/stage.h"

namespace shardserve {

inline constexpr int64_t kSimActivationWidth = 4;

struct SimOptions {
  DeviceProfile profile;
  uint64_t seed = 0;
};

// `path`: a model folder; only its config.json is read.
absl::StatusOr<std::unique_ptr<ModelStage>> LoadSimStage(const std::string& path,
                                                         const StageSpec& spec,
                                                         const KvCacheSpec& kv,
                                                         const SimOptions& options);

// The token the simulated last stage emits after `last_token` at `position`.
int32_t SimNextToken(uint64_t seed, int64_t position, int32_t last_token, int64_t vocab_size);

}  // namespace shardserve

#endif  // SHARDSERVE_MODEL_SIM_STAGE_H_
