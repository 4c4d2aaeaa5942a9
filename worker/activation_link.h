// ActivationLink: the data plane between adjacent pipeline stages.
//
// Stage k calls Send(step, tensor) with the hidden states of step `step`; stage k+1 calls
// Recv(step) and gets exactly that tensor. Steps may be received in any order relative to other
// steps' sends (the receiver names the step it waits for), so several micro-batches can be in
// flight. Recv waits at most the link's timeout and then fails with DEADLINE_EXCEEDED, so a dead
// neighbour never hangs a stage.
//
// Implementations: a local mailbox (in process; also the receiving end of the gRPC link, fed by
// the worker's Activations handler), the gRPC sender (worker/grpc_link.h) and a fault-injecting
// wrapper for tests. All methods are thread-safe.
#ifndef SHARDSERVE_WORKER_ACTIVATION_LINK_H_
#define SHARDSERVE_WORKER_ACTIVATION_LINK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shardserve {

// Row-major float32 [rows, cols].
struct ActivationTensor {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;
};

struct LinkCounters {
  std::string direction;  // "send" or "recv"
  std::string peer;
  uint64_t messages = 0;
  uint64_t bytes = 0;
};

class ActivationLink {
 public:
  virtual ~ActivationLink() = default;
  virtual absl::Status Send(uint64_t step, ActivationTensor tensor) = 0;
  virtual absl::StatusOr<ActivationTensor> Recv(uint64_t step) = 0;
  // Traffic so far, for Stats.
  virtual LinkCounters counters() const = 0;
  // Fails pending and future Recv/Send calls with `reason` (used when a shard is unloaded).
  virtual void Close(const absl::Status& reason) = 0;
};

// An in-process mailbox: Send deposits, Recv waits for the step. At most `capacity` tensors are
// held; Send beyond that fails with RESOURCE_EXHAUSTED rather than growing without bound.
std::unique_ptr<ActivationLink> NewLocalLink(std::string peer, absl::Duration recv_timeout,
                                             int capacity = 64);

struct FaultOptions {
  absl::Duration send_delay = absl::ZeroDuration();  // slept before each Send
  int64_t fail_after_sends = -1;  // Send number N (0-based) and later fail; -1: never
  bool corrupt_shape = false;     // deliver tensors with one row missing
};

// Wraps `base` (not owned, must outlive the wrapper) and injects the faults in `options`.
std::unique_ptr<ActivationLink> NewFaultyLink(ActivationLink* base, FaultOptions options);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_ACTIVATION_LINK_H_
