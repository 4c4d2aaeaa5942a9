// The NCCL activation link on one GPU: a single-rank communicator sending to itself (NCCL
// cannot pair two ranks on one device). Skips without a GPU unless SHARDSERVE_REQUIRE_GPU is set.
#include "worker/nccl_link.h"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <thread>

#include "gtest/gtest.h"

namespace shardserve {
namespace {

bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU()                                                      \
  do {                                                                          \
    if (!HaveGpu()) {                                                           \
      if (std::getenv("SHARDSERVE_REQUIRE_GPU") != nullptr) FAIL() << "no GPU"; \
      GTEST_SKIP() << "no CUDA device";                                         \
    }                                                                           \
  } while (0)

ActivationTensor Tensor(int64_t rows, int64_t cols, float base) {
  ActivationTensor t;
  t.rows = rows;
  t.cols = cols;
  for (int64_t i = 0; i < rows * cols; ++i) t.data.push_back(base + static_cast<float>(i));
  return t;
}

std::unique_ptr<ActivationLink> Loopback(absl::Duration timeout) {
  auto id = NewNcclUniqueId();
  EXPECT_TRUE(id.ok()) << id.status();
  if (!id.ok()) return nullptr;
  NcclLinkOptions o;
  o.role = NcclLinkOptions::Role::kLoopback;
  o.peer = "self";
  o.timeout = timeout;
  auto link = NewNcclLink(*id, o);
  EXPECT_TRUE(link.ok()) << link.status();
  return link.ok() ? std::move(*link) : nullptr;
}

TEST(NcclLinkTest, LoopbackDeliversStepsInAnyOrder) {
  SKIP_WITHOUT_GPU();
  auto link = Loopback(absl::Seconds(10));
  ASSERT_NE(link, nullptr);
  ASSERT_TRUE(link->Send(7, Tensor(3, 4096, 1.0f)).ok());
  ASSERT_TRUE(link->Send(8, Tensor(1, 4096, -5.0f)).ok());
  auto b = link->Recv(8);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->data, Tensor(1, 4096, -5.0f).data);
  auto a = link->Recv(7);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->rows, 3);
  EXPECT_EQ(a->data, Tensor(3, 4096, 1.0f).data);
  EXPECT_EQ(link->counters().messages, 2u);
}

TEST(NcclLinkTest, MissingStepTimesOutAndCloseFailsLaterCalls) {
  SKIP_WITHOUT_GPU();
  auto link = Loopback(absl::Milliseconds(200));
  ASSERT_NE(link, nullptr);
  EXPECT_EQ(link->Recv(1).status().code(), absl::StatusCode::kDeadlineExceeded);
  link->Close(absl::UnavailableError("shard unloaded"));
  EXPECT_EQ(link->Send(2, Tensor(1, 8, 0)).code(), absl::StatusCode::kUnavailable);
}

TEST(NcclLinkTest, RejectsBadIdAndBadTensor) {
  NcclLinkOptions o;
  EXPECT_EQ(NewNcclLink("short", o).status().code(), absl::StatusCode::kInvalidArgument);
  SKIP_WITHOUT_GPU();
  auto link = Loopback(absl::Seconds(5));
  ASSERT_NE(link, nullptr);
  ActivationTensor bad = Tensor(2, 8, 0);
  bad.rows = 3;
  EXPECT_EQ(link->Send(1, bad).code(), absl::StatusCode::kInvalidArgument);
}

TEST(NcclLinkTest, PeerThatNeverJoinsFailsWithinTimeout) {
  SKIP_WITHOUT_GPU();
  auto id = NewNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  NcclLinkOptions o;
  o.role = NcclLinkOptions::Role::kSender;
  o.peer = "stage-1";
  o.timeout = absl::Seconds(2);
  const absl::Time start = absl::Now();
  auto link = NewNcclLink(*id, o);
  EXPECT_FALSE(link.ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
}

}  // namespace
}  // namespace shardserve
