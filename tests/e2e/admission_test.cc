// Admission control and the gRPC api key on a real router: the bounded queue answers
// RESOURCE_EXHAUSTED at once when full, each request limit is INVALID_ARGUMENT naming the field,
// oversized messages are refused by gRPC, and every generation RPC needs `authorization: Bearer`
// while grpc.health.v1 stays open.
#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "cli/complete.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

constexpr char kKey[] = "test-key-1234";

class Admission : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A slowed link keeps long generations running while the test fills the queue.
    cluster_ = new Cluster(
        {.model = Stories260K(),
         .stages = 2,
         .worker0_args = {"--fault-send-delay-ms", "20"},
         .router_args = {"--api-key", kKey, "--max-queued-requests", "2", "--max-prompt-tokens",
                         "32", "--max-tokens-limit", "100", "--max-stop-strings", "2",
                         "--max-receive-message-bytes", "65536"}});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }

  static std::unique_ptr<grpc::ClientContext> Context(const std::string& key = kKey) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    if (!key.empty()) context->AddMetadata("authorization", "Bearer " + key);
    return context;
  }

  // The final status of a Generate call, reading (and dropping) its stream.
  static grpc::Status Generate(const v1::GenerateRequest& request, const std::string& key = kKey) {
    auto stub = cluster_->Stub();
    auto context = Context(key);
    auto reader = stub->Generate(context.get(), request);
    v1::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    return reader->Finish();
  }

  static Cluster* cluster_;
};
Cluster* Admission::cluster_ = nullptr;

TEST_F(Admission, GenerationNeedsTheApiKey) {
  const v1::GenerateRequest request = TextRequest("Once upon a time", 4, 0.0f, 0);
  grpc::Status none = Generate(request, "");
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED) << none.error_message();
  grpc::Status wrong = Generate(request, "not-the-key");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED) << wrong.error_message();
  grpc::Status right = Generate(request);
  EXPECT_TRUE(right.ok()) << right.error_message();

  auto stub = cluster_->Stub();
  v1::GetModelInfoRequest info_request;
  v1::GetModelInfoResponse info;
  auto no_key = Context("");
  EXPECT_EQ(stub->GetModelInfo(no_key.get(), info_request, &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto with_key = Context();
  EXPECT_TRUE(stub->GetModelInfo(with_key.get(), info_request, &info).ok());
}

TEST_F(Admission, HealthStaysOpenWithoutTheKey) {
  EXPECT_TRUE(HealthServing(cluster_->router_address(), absl::Seconds(5)));
}

TEST_F(Admission, RequestLimitsNameTheField) {
  std::string long_prompt;
  for (int i = 0; i < 40; ++i) long_prompt += "Once upon a time ";
  grpc::Status prompt = Generate(TextRequest(long_prompt, 4, 0.0f, 0));
  EXPECT_EQ(prompt.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(prompt.error_message().rfind("prompt:", 0), 0u) << prompt.error_message();

  grpc::Status max_tokens = Generate(TextRequest("Hi", 101, 0.0f, 0));
  EXPECT_EQ(max_tokens.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(max_tokens.error_message().rfind("max_tokens:", 0), 0u) << max_tokens.error_message();

  v1::GenerateRequest stops = TextRequest("Hi", 4, 0.0f, 0);
  for (const char* s : {"a", "b", "c"}) stops.add_stop(s);
  grpc::Status stop = Generate(stops);
  EXPECT_EQ(stop.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(stop.error_message().rfind("stop:", 0), 0u) << stop.error_message();

  // 100 KB of text is past --max-receive-message-bytes: gRPC refuses it before the handler.
  grpc::Status big = Generate(TextRequest(std::string(100000, 'a'), 4, 0.0f, 0));
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();

  // Within every limit the same server still answers.
  EXPECT_TRUE(Generate(TextRequest("Once upon a time", 100, 0.0f, 0)).ok());
}

TEST_F(Admission, FullQueueIsResourceExhaustedAtOnce) {
  auto stub = cluster_->Stub();
  // Two long generations fill the queue of 2; each has produced a token, so both are admitted.
  std::unique_ptr<grpc::ClientContext> contexts[2];
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> readers[2];
  for (int i = 0; i < 2; ++i) {
    contexts[i] = Context();
    readers[i] = stub->Generate(contexts[i].get(), TextRequest("Once upon a time", 100, 0.0f, 0));
    v1::GenerateResponse response;
    ASSERT_TRUE(readers[i]->Read(&response));
  }
  const absl::Time start = absl::Now();
  grpc::Status third = Generate(TextRequest("Once upon a time", 4, 0.0f, 0));
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << third.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(2)) << "rejected at once, not after waiting";

  // Ending one frees its slot.
  contexts[0]->TryCancel();
  readers[0]->Finish();
  grpc::Status after(grpc::StatusCode::UNKNOWN, "not tried");
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (absl::Now() < give_up) {
    after = Generate(TextRequest("Once upon a time", 4, 0.0f, 0));
    if (after.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_TRUE(after.ok()) << after.error_message();
  contexts[1]->TryCancel();
  readers[1]->Finish();
}

}  // namespace
}  // namespace shardserve::e2e
