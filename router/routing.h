// Routing: which ready pipeline replica takes a new request.
//
// kLeastLoaded picks the replica with the fewest sequences waiting or running. kPrefix (the
// default) scores each replica the way Dynamo's KV router does: the KV blocks it would have to
// prefill for this prompt (the prompt's full blocks minus the leading ones it already has
// cached, plus what its queue still has to prefill) plus the blocks its running sequences hold,
// and picks the lowest. A follow-up chat turn, which resends the whole conversation, goes back to
// the replica holding it unless that replica is busier by more than the prefill it saves.
#ifndef SHARDSERVE_ROUTER_ROUTING_H_
#define SHARDSERVE_ROUTER_ROUTING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "router/replica.h"

namespace shardserve {

enum class RoutingPolicy { kPrefix, kLeastLoaded };

// "prefix" or "least-loaded"; INVALID_ARGUMENT naming --routing otherwise.
absl::StatusOr<RoutingPolicy> ParseRoutingPolicy(const std::string& name);

// Lower is better.
int64_t PrefixRoutingCost(const RoutingLoad& load);

// The index in `loads` of the replica to use (`loads` not empty); ties go to the lower
// `sequences` count, then to the lower index.
size_t ChooseReplica(RoutingPolicy policy, const std::vector<RoutingLoad>& loads,
                     const std::vector<int64_t>& sequences);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_ROUTING_H_
