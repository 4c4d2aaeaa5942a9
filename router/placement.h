// Placement: which contiguous layer range each pipeline stage holds.
//
// BalancedPlacement splits the layers so that the most expensive stage is as cheap as possible,
// counting per-token compute: every decoder layer costs the same, the first stage also pays for
// the embedding lookup and the last for the final norm and LM head (vocab x hidden), which on
// small models is worth several layers. Stages may carry a relative speed (Describe's
// estimate); a faster worker gets proportionally more. ParseLayerRanges reads a manual split
// such as "0-2,3-4" (inclusive ends) and checks that it covers every layer once, in order.
#ifndef SHARDSERVE_ROUTER_PLACEMENT_H_
#define SHARDSERVE_ROUTER_PLACEMENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"

namespace shardserve {

struct LayerRange {
  int64_t begin = 0;  // inclusive
  int64_t end = 0;    // exclusive
  bool operator==(const LayerRange&) const = default;
};

// INVALID_ARGUMENT naming `--layers` when malformed, overlapping, out of order or incomplete.
absl::StatusOr<std::vector<LayerRange>> ParseLayerRanges(const std::string& spec,
                                                         int64_t num_layers);

// `speeds` (optional, one per stage, > 0) scales each stage's capacity. INVALID_ARGUMENT when
// num_stages is not in [1, num_layers].
absl::StatusOr<std::vector<LayerRange>> BalancedPlacement(const ModelConfig& config, int num_stages,
                                                          const std::vector<double>& speeds = {});

// "0-2,3-4": the inverse of ParseLayerRanges.
std::string FormatLayerRanges(const std::vector<LayerRange>& ranges);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_PLACEMENT_H_
