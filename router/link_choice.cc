#include "router/link_choice.h"

#include <algorithm>

#include "common/wire.h"

namespace shardserve {
namespace {

bool Offers(const v1::DescribeResponse& worker, v1::LinkKind kind) {
  return std::find(worker.links().begin(), worker.links().end(), kind) != worker.links().end();
}

}  // namespace

v1::LinkKind ChooseLink(const v1::DescribeResponse& from, const v1::DescribeResponse& to) {
  if (from.device() != v1::DEVICE_KIND_CUDA || to.device() != v1::DEVICE_KIND_CUDA ||
      from.link_version() != kLinkVersion || to.link_version() != kLinkVersion) {
    return v1::LINK_KIND_GRPC;
  }
  const bool same_device = !from.host_id().empty() && from.host_id() == to.host_id() &&
                           !from.device_uuid().empty() && from.device_uuid() == to.device_uuid();
  const v1::LinkKind wanted = same_device ? v1::LINK_KIND_DEVICE_LOCAL : v1::LINK_KIND_NCCL;
  return Offers(from, wanted) && Offers(to, wanted) ? wanted : v1::LINK_KIND_GRPC;
}

std::string LinkKindName(v1::LinkKind kind) {
  switch (kind) {
    case v1::LINK_KIND_NCCL:
      return "nccl";
    case v1::LINK_KIND_DEVICE_LOCAL:
      return "device_local";
    default:
      return "grpc";
  }
}

}  // namespace shardserve
