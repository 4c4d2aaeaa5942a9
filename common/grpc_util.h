// gRPC pieces every service and client of the cluster shares: the absl -> gRPC status mapping
// and the channel arguments of the cluster's internal channels.
#ifndef SHARDSERVE_COMMON_GRPC_UTIL_H_
#define SHARDSERVE_COMMON_GRPC_UTIL_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/status.h"

namespace shardserve {

// The same code and message (absl and gRPC codes share their numbering).
grpc::Status ToGrpc(const absl::Status& status);

// Arguments for a channel between routers and workers or between workers: messages up to
// kMaxMessageBytes, keepalive pings (10 s, 5 s timeout) so a dead peer is noticed on an idle
// stream, and quick reconnects (200 ms to 1 s) after a worker restarts.
grpc::ChannelArguments ClusterChannelArguments();

// A channel to `address` with ClusterChannelArguments and the process's channel credentials.
std::shared_ptr<grpc::Channel> NewClusterChannel(const std::string& address);

// A request that does not parse as its method's message (most often a proto3 string field with
// bytes that are not UTF-8) is answered INVALID_ARGUMENT naming the field, where gRPC alone
// answers INTERNAL with no message; protobuf's own stderr line for it is dropped (the caller
// hears it instead). Call on every server builder; the RPC's handler never runs.
void ReportUnparsableRequests(grpc::ServerBuilder* builder);

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_GRPC_UTIL_H_
