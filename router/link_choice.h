// The link each hop of a pipeline uses, chosen from the two stages' Describe answers.
//
//   both CUDA, same host and same GPU      DEVICE_LOCAL where both offer it, else GRPC (NCCL
//                                          cannot put two ranks of one communicator on one GPU)
//   both CUDA, different GPUs              NCCL where both offer it, else GRPC
//   anything else (CPU, sim, mixed)        GRPC
//   either worker on another link_version  GRPC
//
// NCCL between GPUs of different hosts needs the network NCCL was built for; the router does
// not second-guess it. A hop is never given a kind one of its two workers does not list.
#ifndef SHARDSERVE_ROUTER_LINK_CHOICE_H_
#define SHARDSERVE_ROUTER_LINK_CHOICE_H_

#include <string>

#include "shardserve/v1/worker.pb.h"

namespace shardserve {

v1::LinkKind ChooseLink(const v1::DescribeResponse& from, const v1::DescribeResponse& to);

// "grpc", "nccl", "device_local" (for logs and metric labels).
std::string LinkKindName(v1::LinkKind kind);

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_LINK_CHOICE_H_
