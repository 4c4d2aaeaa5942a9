#include "kernels/backend_factory.h"

#include <string>

#include "gtest/gtest.h"

namespace shardserve {
namespace {

TEST(NewBackend, MakesTheCpuBackendWithItsOptions) {
  BackendOptions options;
  options.cpu.threads = 2;
  auto backend = NewBackend("cpu", options);
  ASSERT_TRUE(backend.ok()) << backend.status();
  ASSERT_NE(*backend, nullptr);
  auto buffer = (*backend)->Allocate(64);
  EXPECT_TRUE(buffer.ok()) << buffer.status();
}

TEST(NewBackend, AnUnknownKindNamesTheFlag) {
  auto backend = NewBackend("tpu", BackendOptions());
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(backend.status().message().find("--backend 'tpu'"), std::string::npos)
      << backend.status();
}

// On a machine without a usable GPU (CI), or in a build without CUDA, cuda is refused with a
// message naming the flag instead of crashing.
TEST(NewBackend, CudaWithoutAGpuIsAClearError) {
  auto backend = NewBackend("cuda", BackendOptions());
  if (backend.ok()) GTEST_SKIP() << "a GPU is present: covered by the gpu-labelled tests";
  EXPECT_EQ(backend.status().code() == absl::StatusCode::kUnimplemented, !BuiltWithCuda());
  EXPECT_EQ(backend.status().message().rfind("--backend cuda: ", 0), 0u) << backend.status();
}

}  // namespace
}  // namespace shardserve
