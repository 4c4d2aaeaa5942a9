#include "router/link_choice.h"

#include "common/wire.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

v1::DescribeResponse Worker(v1::DeviceKind device, const std::string& host, const std::string& uuid,
                            bool nccl, bool device_local = false, uint32_t version = kLinkVersion) {
  v1::DescribeResponse d;
  d.set_device(device);
  d.set_host_id(host);
  d.set_device_uuid(uuid);
  d.set_link_version(version);
  d.add_links(v1::LINK_KIND_GRPC);
  if (nccl) d.add_links(v1::LINK_KIND_NCCL);
  if (device_local) d.add_links(v1::LINK_KIND_DEVICE_LOCAL);
  return d;
}

TEST(LinkChoice, TheHopTable) {
  const auto cpu = Worker(v1::DEVICE_KIND_CPU, "h1", "", false);
  const auto sim = Worker(v1::DEVICE_KIND_SIM, "h1", "", false);
  const auto gpu_a = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-a", true);
  const auto gpu_b = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-b", true);
  const auto gpu_other_host = Worker(v1::DEVICE_KIND_CUDA, "h2", "GPU-c", true);
  const auto gpu_no_nccl = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-d", false);
  const auto gpu_a_again = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-a", true);
  const auto gpu_a_local = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-a", true, true);
  const auto gpu_a_local2 = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-a", true, true);
  const auto gpu_old = Worker(v1::DEVICE_KIND_CUDA, "h1", "GPU-e", true, false, 0);

  EXPECT_EQ(ChooseLink(cpu, cpu), v1::LINK_KIND_GRPC);
  EXPECT_EQ(ChooseLink(sim, sim), v1::LINK_KIND_GRPC);
  EXPECT_EQ(ChooseLink(cpu, gpu_a), v1::LINK_KIND_GRPC);  // mixed pipeline
  EXPECT_EQ(ChooseLink(gpu_a, cpu), v1::LINK_KIND_GRPC);
  EXPECT_EQ(ChooseLink(gpu_a, gpu_b), v1::LINK_KIND_NCCL);  // two GPUs of one host
  EXPECT_EQ(ChooseLink(gpu_a, gpu_other_host), v1::LINK_KIND_NCCL);
  EXPECT_EQ(ChooseLink(gpu_a, gpu_no_nccl), v1::LINK_KIND_GRPC);  // one end lacks NCCL
  EXPECT_EQ(ChooseLink(gpu_no_nccl, gpu_a), v1::LINK_KIND_GRPC);
  // One GPU cannot hold both ranks of a communicator: device-local where offered, else gRPC.
  EXPECT_EQ(ChooseLink(gpu_a, gpu_a_again), v1::LINK_KIND_GRPC);
  EXPECT_EQ(ChooseLink(gpu_a_local, gpu_a_local2), v1::LINK_KIND_DEVICE_LOCAL);
  EXPECT_EQ(ChooseLink(gpu_a_local, gpu_a), v1::LINK_KIND_GRPC);
  // The same UUID on two hosts is two devices.
  const auto gpu_a_elsewhere = Worker(v1::DEVICE_KIND_CUDA, "h2", "GPU-a", true);
  EXPECT_EQ(ChooseLink(gpu_a, gpu_a_elsewhere), v1::LINK_KIND_NCCL);
  // A worker on another set-up protocol version keeps to gRPC.
  EXPECT_EQ(ChooseLink(gpu_a, gpu_old), v1::LINK_KIND_GRPC);
}

TEST(LinkChoice, Names) {
  EXPECT_EQ(LinkKindName(v1::LINK_KIND_GRPC), "grpc");
  EXPECT_EQ(LinkKindName(v1::LINK_KIND_NCCL), "nccl");
  EXPECT_EQ(LinkKindName(v1::LINK_KIND_DEVICE_LOCAL), "device_local");
  EXPECT_EQ(LinkKindName(v1::LINK_KIND_UNSPECIFIED), "grpc");
}

}  // namespace
}  // namespace shardserve
