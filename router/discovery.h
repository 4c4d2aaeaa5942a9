// Worker discovery for --workers: an explicit list ("host:port,host:port") or a DNS name
// ("dns:///NAME:PORT", e.g. a Kubernetes headless Service, which resolves to one address per
// ready pod). The router resolves a DNS name at start (waiting until it yields enough workers)
// and again every few seconds; addresses that appear later join the pool as spares.
#ifndef SHARDSERVE_ROUTER_DISCOVERY_H_
#define SHARDSERVE_ROUTER_DISCOVERY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardserve {

bool IsDnsWorkers(const std::string& spec);

// The workers `spec` names now: a list as given, or every address the DNS name resolves to as
// "ip:port" ("[ip6]:port"), sorted and without repeats. INVALID_ARGUMENT naming --workers when
// the spec is malformed, UNAVAILABLE when the name does not resolve.
absl::StatusOr<std::vector<std::string>> ResolveWorkers(const std::string& spec);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_DISCOVERY_H_
