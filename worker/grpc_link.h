// The sending end of the gRPC activation link: one client stream (WorkerService.Activations)
// from this stage to the next stage's worker. The receiving end is a local mailbox that the next
// worker's Activations handler fills (worker/worker_service.cc), so hidden states go straight
// from worker to worker.
//
// Send is thread-safe and blocks under flow control; a broken stream fails every later Send
// with UNAVAILABLE naming the peer. Recv is not supported on this end.
#ifndef SHARDSERVE_WORKER_GRPC_LINK_H_
#define SHARDSERVE_WORKER_GRPC_LINK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/wire.h"
#include "worker/activation_link.h"

namespace shardserve {

// Connects to `next_address` and opens the stream, waiting at most `connect_timeout`. The stream
// carries this process's cluster credential and `owner` (the router that linked the stages, as
// kOwnerMetadata): the next worker accepts it only while that router holds its lease.
absl::StatusOr<std::unique_ptr<ActivationLink>> NewGrpcSendLink(const std::string& next_address,
                                                                const std::string& owner,
                                                                absl::Duration connect_timeout);

inline constexpr char kOwnerMetadata[] = "x-shardserve-owner";

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_GRPC_LINK_H_
