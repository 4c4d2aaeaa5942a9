// The NCCL activation link: hidden states between two pipeline stages on different GPUs.
//
// One link is one direction of one pipeline edge, over its own two-rank NCCL communicator
// (rank 0 sends, rank 1 receives), so the two links of a middle stage never share a
// communicator and their transfers need no ordering between them. The sending stage makes the
// communicator's id with NewNcclUniqueId(); the control plane hands it to the receiving stage,
// and both call NewNcclLink with it (each blocks until the other joins or the timeout passes).
//
// Transfers run on a dedicated CUDA stream of the link, apart from the backend's compute
// stream. A message is a small header (step, rows, cols) and the F32 payload; the receiver
// validates the header before allocating. Recv keeps tensors of other steps that arrive first,
// so steps may be received in any order.
//
// Failure: communicators are non-blocking; every wait polls ncclCommGetAsyncError and the CUDA
// event of the transfer against the link's timeout. An NCCL error, a CUDA error or an expired
// timeout (a dead or stuck peer) aborts the communicator and fails this call and every later
// one with UNAVAILABLE / DEADLINE_EXCEEDED naming the peer; the link is then replaced by a new
// one when the pipeline is re-planned. Close() aborts the communicator too.
//
// A single-rank link (NcclLinkOptions::loopback) sends to itself: Send posts the matching
// receive in the same NCCL group and Recv returns it. It exercises the whole NCCL path on one
// GPU, which cannot hold two ranks of one communicator.
//
// Thread-safety: all methods are thread-safe; transfers on one link are serialised.
#ifndef SHARDSERVE_WORKER_NCCL_LINK_H_
#define SHARDSERVE_WORKER_NCCL_LINK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/activation_link.h"
#include "worker/link_factory.h"

namespace shardserve {

// A fresh ncclUniqueId as bytes (NCCL_UNIQUE_ID_BYTES long), to send to the peer.
absl::StatusOr<std::string> NewNcclUniqueId();

struct NcclLinkOptions {
  enum class Role { kSender, kReceiver, kLoopback };
  Role role = Role::kSender;
  int device = 0;                              // CUDA device of this stage
  std::string peer;                            // for messages and counters
  absl::Duration timeout = absl::Seconds(30);  // joining, and each Send / Recv
  int64_t max_elements = int64_t{1} << 30;     // largest payload accepted from the peer
};

// Joins the communicator named by `unique_id` (from NewNcclUniqueId, on either side).
// UNAVAILABLE without a GPU or when the peer does not join within the timeout.
absl::StatusOr<std::unique_ptr<ActivationLink>> NewNcclLink(const std::string& unique_id,
                                                            const NcclLinkOptions& options);

// NCCL links of one CUDA device as a LinkFactory: NewId is NewNcclUniqueId, Join is NewNcclLink
// with the sender or receiver role.
std::shared_ptr<LinkFactory> NewNcclLinkFactory(int device);

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_NCCL_LINK_H_
