// Cancellation, deadlines, bad input and dead workers: the right status, blocks freed on every
// stage (checked through each worker's Stats), and the router stays up.
#include <grpcpp/grpcpp.h>

#include <signal.h>

#include <fstream>
#include <iterator>
#include <thread>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

// Waits until every worker reports no KV blocks in use.
void ExpectBlocksFreed(const Cluster& cluster) {
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  for (const std::string& w : cluster.worker_addresses()) {
    int64_t used = -1;
    while (absl::Now() < give_up) {
      auto stats = WorkerStats(w);
      ASSERT_TRUE(stats.ok()) << stats.status();
      used = stats->kv_blocks_used();
      if (used == 0) break;
      absl::SleepFor(absl::Milliseconds(20));
    }
    EXPECT_EQ(used, 0) << "worker " << w;
  }
}

int64_t BlocksUsed(const std::string& worker) {
  auto stats = WorkerStats(worker);
  return stats.ok() ? stats->kv_blocks_used() : -1;
}

// Two stages whose link is slowed down, so a long generation is still running when the test
// cancels it.
class SlowCluster : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster(
        {.model = Stories260K(), .stages = 2, .worker0_args = {"--fault-send-delay-ms", "20"}});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }
  static Cluster* cluster_;
};
Cluster* SlowCluster::cluster_ = nullptr;

TEST_F(SlowCluster, CancelFreesBlocksOnEveryStage) {
  auto stub = cluster_->Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto reader = stub->Generate(&context, TextRequest("Once upon a time", 400, 0.0f, 0));
  v1::GenerateResponse resp;
  int tokens = 0;
  while (tokens < 5 && reader->Read(&resp)) tokens += resp.token_ids_size();
  ASSERT_GE(tokens, 5);
  for (const std::string& w : cluster_->worker_addresses()) EXPECT_GT(BlocksUsed(w), 0) << w;
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ExpectBlocksFreed(*cluster_);
}

TEST_F(SlowCluster, DeadlineExceededFreesBlocks) {
  auto stub = cluster_->Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
  auto reader = stub->Generate(&context, TextRequest("Once upon a time", 400, 0.0f, 0));
  v1::GenerateResponse resp;
  while (reader->Read(&resp)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ExpectBlocksFreed(*cluster_);
}

TEST_F(SlowCluster, LinkStatsCountBytes) {
  auto got = RunCompletion(cluster_->router_address(), TextRequest("The dog", 4, 0.0f, 0),
                           absl::Seconds(30), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  auto stats = WorkerStats(cluster_->worker_addresses()[0]);
  ASSERT_TRUE(stats.ok());
  uint64_t sent = 0;
  for (const auto& link : stats->links()) {
    if (link.direction() == "send") sent += link.bytes();
  }
  EXPECT_GT(sent, 0u);
  EXPECT_GT(stats->steps(), 0u);
}

class BadInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster({.model = Stories260K(), .stages = 2});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }

  // Expects INVALID_ARGUMENT whose message names `field`, then checks the router still serves.
  void ExpectInvalid(const v1::GenerateRequest& request, const std::string& field) {
    auto got = RunCompletion(cluster_->router_address(), request, absl::Seconds(30), nullptr);
    ASSERT_FALSE(got.ok());
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << got.status();
    EXPECT_NE(got.status().message().find(field), std::string::npos) << got.status();
    auto ok = RunCompletion(cluster_->router_address(), Good(), absl::Seconds(30), nullptr);
    EXPECT_TRUE(ok.ok()) << ok.status();
  }
  static v1::GenerateRequest Good() { return TextRequest("Once upon a time", 4, 0.0f, 0); }
  static Cluster* cluster_;
};
Cluster* BadInput::cluster_ = nullptr;

TEST_F(BadInput, EmptyPrompt) {
  v1::GenerateRequest r = Good();
  r.set_text("");
  ExpectInvalid(r, "prompt");
}

TEST_F(BadInput, MissingPrompt) {
  v1::GenerateRequest r = Good();
  r.clear_prompt();
  ExpectInvalid(r, "prompt");
}

TEST_F(BadInput, PromptLongerThanContext) {
  v1::GenerateRequest r = Good();
  for (int i = 0; i < 600; ++i) r.mutable_token_ids()->add_ids(100);
  ExpectInvalid(r, "prompt");
}

// 0 is unset: the room left in the context, as vLLM defaults it.
TEST_F(BadInput, MaxTokensZeroIsTheRoomLeftInTheContext) {
  v1::GenerateRequest r = Good();
  r.set_max_tokens(0);
  r.set_ignore_eos(true);
  auto got = RunCompletion(cluster_->router_address(), r, absl::Seconds(60), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->usage.prompt_tokens() + got->usage.completion_tokens(), 512) << "the context";
  EXPECT_EQ(got->finish_reason, v1::FINISH_REASON_LENGTH);
}

TEST_F(BadInput, MaxTokensNegative) {
  v1::GenerateRequest r = Good();
  r.set_max_tokens(-5);
  ExpectInvalid(r, "max_tokens");
}

TEST_F(BadInput, MaxTokensPastContext) {
  v1::GenerateRequest r = Good();
  r.set_max_tokens(510);
  ExpectInvalid(r, "max_tokens");
}

TEST_F(BadInput, NegativeTemperature) {
  v1::GenerateRequest r = Good();
  r.mutable_sampling()->set_temperature(-0.5f);
  ExpectInvalid(r, "temperature");
}

TEST_F(BadInput, NanTemperature) {
  v1::GenerateRequest r = Good();
  r.mutable_sampling()->set_temperature(std::nanf(""));
  ExpectInvalid(r, "temperature");
}

TEST_F(BadInput, TopPZero) {
  v1::GenerateRequest r = Good();
  r.mutable_sampling()->set_top_p(0.0f);
  ExpectInvalid(r, "top_p");
}

TEST_F(BadInput, TopPAboveOne) {
  v1::GenerateRequest r = Good();
  r.mutable_sampling()->set_top_p(1.5f);
  ExpectInvalid(r, "top_p");
}

// Proto3 string fields must be UTF-8: gRPC alone answers INTERNAL with no message (and
// protobuf prints an ERROR line on the server's stderr). The caller hears which field.
TEST_F(BadInput, InvalidUtf8IsInvalidArgumentNamingTheField) {
  v1::GenerateRequest r = Good();
  r.set_text(std::string("Once \xff\xfe upon"));
  ExpectInvalid(r, "shardserve.v1.GenerateRequest.text");
  v1::GenerateRequest stop = Good();
  stop.add_stop(std::string("\xc3"));
  ExpectInvalid(stop, "shardserve.v1.GenerateRequest.stop");

  auto stub = cluster_->Stub();
  grpc::ClientContext context;
  v1::TokenizeRequest tokenize;
  tokenize.set_text(std::string("\x80"));
  v1::TokenizeResponse out;
  const grpc::Status s = stub->Tokenize(&context, tokenize, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "TokenizeRequest.text")) << s.error_message();

  std::ifstream log(cluster_->router_log());
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_FALSE(absl::StrContains(text, "invalid UTF-8")) << text;
}

TEST_F(BadInput, UnknownModel) {
  v1::GenerateRequest r = Good();
  r.set_model("no-such-model");
  ExpectInvalid(r, "model");
}

TEST_F(BadInput, TooManyStopStrings) {
  v1::GenerateRequest r = Good();
  for (int i = 0; i < 17; ++i) r.add_stop("stop" + std::to_string(i));
  ExpectInvalid(r, "stop");
}

TEST_F(BadInput, MalformedChatMessage) {
  v1::GenerateRequest r = Good();
  v1::ChatMessage* m = r.mutable_chat()->add_messages();
  m->set_role("wizard");
  m->set_content("hello");
  ExpectInvalid(r, "chat.messages[0].role");
}

TEST_F(BadInput, TokenIdOutsideVocabulary) {
  v1::GenerateRequest r = Good();
  r.mutable_token_ids()->add_ids(1);
  r.mutable_token_ids()->add_ids(99999);
  ExpectInvalid(r, "token_ids");
}

TEST_F(BadInput, StopStringEndsGeneration) {
  auto full = RunCompletion(cluster_->router_address(), TextRequest("Once upon a time", 40, 0, 0),
                            absl::Seconds(30), nullptr);
  ASSERT_TRUE(full.ok());
  ASSERT_GT(full->text.size(), 12u);
  v1::GenerateRequest r = TextRequest("Once upon a time", 40, 0, 0);
  const std::string stop = full->text.substr(8, 4);
  r.add_stop(stop);
  auto got = RunCompletion(cluster_->router_address(), r, absl::Seconds(30), nullptr);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->text, full->text.substr(0, full->text.find(stop)));
  EXPECT_EQ(got->finish_reason, v1::FINISH_REASON_STOP);
}

TEST(DeadWorker, UnavailableNamesTheAddressAndRouterStaysUp) {
  const std::string dead = "127.0.0.1:" + std::to_string(FreePort());
  Cluster cluster({.model = Stories260K(), .stages = 1, .worker_addresses = {dead}});
  // Wait until this cluster's router answers GetModelInfo with its pipeline on the dead address
  // (it is up and has taken its configuration); WaitServing would wait for SERVING, which a
  // router whose only worker is dead never reaches.
  auto router_up = [&] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
    v1::GetModelInfoResponse info;
    if (!cluster.Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok()) {
      return false;
    }
    return info.pipelines_size() == 1 && info.pipelines(0).stages_size() == 1 &&
           info.pipelines(0).stages(0).worker_address() == dead;
  };
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  bool up = false;
  while (!(up = router_up()) && cluster.router().alive() && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(up) << "the router did not come up (alive: " << cluster.router().alive() << ")";
  // Until its first attempt to reach the worker has failed, the pipeline is "connecting"; then
  // the refusal names the dead worker.
  absl::StatusOr<CompletionResult> got = absl::UnknownError("not asked");
  for (const absl::Time until = absl::Now() + absl::Seconds(30); absl::Now() < until;
       absl::SleepFor(absl::Milliseconds(20))) {
    got = RunCompletion(cluster.router_address(), TextRequest("Hello", 4, 0, 0), absl::Seconds(10),
                        nullptr);
    if (got.ok() || !absl::StrContains(got.status().message(), "connecting")) break;
  }
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable) << got.status();
  EXPECT_NE(got.status().message().find(dead), std::string::npos) << got.status();
  EXPECT_TRUE(cluster.router().alive());
  EXPECT_FALSE(HealthServing(cluster.router_address(), absl::Seconds(1)));
}

// No other pipeline and no replacement within --failover-wait-s: the stream ends with
// UNAVAILABLE naming the dead worker (tests/e2e/failover_test.cc has the cases that resume).
TEST(DeadWorker, KilledStageFailsStreamsWithUnavailableAndRouterStaysUp) {
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .worker0_args = {"--fault-send-delay-ms", "20"},
                   .router_args = {"--failover-wait-s", "1"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto stub = cluster.Stub();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  auto reader = stub->Generate(&context, TextRequest("Once upon a time", 400, 0.0f, 0));
  v1::GenerateResponse resp;
  ASSERT_TRUE(reader->Read(&resp));
  const std::string victim = cluster.worker_addresses()[1];
  cluster.worker(1).Kill(SIGKILL);
  while (reader->Read(&resp)) {
  }
  grpc::Status s = reader->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_NE(s.error_message().find(victim), std::string::npos) << s.error_message();
  EXPECT_TRUE(cluster.router().alive());
}

}  // namespace
}  // namespace shardserve::e2e
