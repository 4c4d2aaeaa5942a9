#include "router/routing.h"

#include <tuple>

#include "absl/strings/str_cat.h"

namespace shardserve {

absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(const std::string& name) {
  if (name == "prefix") return RoutingPolicy::kPrefix;
  if (name == "least-loaded") return RoutingPolicy::kLeastLoaded;
  return absl::InvalidArgumentError(
      absl::StrCat("--routing: '", name, "' is not one of prefix, least-loaded"));
}

int64_t PrefixRoutingCost(const RoutingLoad& load) {
  return (load.prompt_blocks - load.cached_blocks) + load.waiting_blocks + load.active_blocks;
}

size_t ChooseReplica(RoutingPolicy policy, const std::vector<RoutingLoad>& loads,
                     const std::vector<int64_t>& sequences) {
  auto key = [&](size_t i) {
    const int64_t cost = policy == RoutingPolicy::kPrefix ? PrefixRoutingCost(loads[i]) : 0;
    return std::make_tuple(cost, sequences[i]);
  };
  size_t best = 0;
  for (size_t i = 1; i < loads.size(); ++i) {
    if (key(i) < key(best)) best = i;
  }
  return best;
}

}  // namespace shardserve
