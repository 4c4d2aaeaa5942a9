// The shardserve command against real processes: `up` streams a completion and exits 0, `up`
// rejects a missing model in one line, `complete --json` prints the reference output as one
// object, and `chat` holds a conversation read from stdin.
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

int LineCount(const std::string& s) {
  std::vector<std::string> lines = absl::StrSplit(s, '\n', absl::SkipEmpty());
  return static_cast<int>(lines.size());
}

TEST(Up, StreamsThePromptsCompletionAndExitsZero) {
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "up", "--workers", "2", "--threads", "1", "--model", Stories260K(),
       "--listen", listen, "--prompt", "Once upon a time", "--max-tokens", "24"},
      "", absl::Seconds(90));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  EXPECT_GT(r.out.size(), std::string("Once upon a time").size() + 10) << r.out;
  EXPECT_NE(r.err.find(listen), std::string::npos) << r.err;
  // The cluster is gone: nothing answers on its address any more.
  EXPECT_FALSE(HealthServing(listen, absl::Milliseconds(500)));
}

TEST(Up, MissingModelIsOneLineError) {
  const std::string listen = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand({BinPath("shardserve"), "up", "--model", "/nonexistent/model",
                                "--listen", listen, "--prompt", "Hi"},
                               "", absl::Seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

class Client : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster({.model = Stories260K(), .stages = 2});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() { delete cluster_; }
  static Cluster* cluster_;
};
Cluster* Client::cluster_ = nullptr;

TEST_F(Client, CompleteJsonMatchesGenerate) {
  auto ref = RunGenerate(Stories260K(), "The little dog", 20, 0.0f, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "complete", "--server", cluster_->router_address(), "--prompt",
       "The little dog", "--max-tokens", "20", "--temperature", "0", "--json"},
      "", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(LineCount(r.out), 1) << r.out;
  auto json = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(json.is_discarded()) << r.out;
  EXPECT_EQ(json["ids"].get<std::vector<int32_t>>(), ref->ids);
  EXPECT_EQ(json["text"].get<std::string>(), ref->text);
  const std::string finish = json["finish_reason"].get<std::string>();
  EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
  EXPECT_EQ(json["usage"]["completion_tokens"].get<int64_t>(),
            static_cast<int64_t>(ref->ids.size()));
  EXPECT_GT(json["usage"]["prompt_tokens"].get<int64_t>(), 0);
}

TEST_F(Client, CompleteAgainstNothingIsOneLineError) {
  const std::string dead = "127.0.0.1:" + std::to_string(FreePort());
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "complete", "--server", dead, "--prompt", "Hi", "--timeout-s", "3"},
      "", absl::Seconds(30));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(LineCount(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("UNAVAILABLE"), std::string::npos) << r.err;
}

TEST_F(Client, ChatAnswersEachLineFromStdin) {
  CommandResult r =
      RunCommand({BinPath("shardserve"), "chat", "--server", cluster_->router_address(),
                  "--max-tokens", "12", "--temperature", "0", "--system", "You tell stories."},
                 "Tell me about a cat.\nAnd a dog?\n/exit\n", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Three prompts: one per turn and one before /exit; each answer ends its own line.
  std::vector<std::string> turns = absl::StrSplit(r.out, "> ");
  ASSERT_EQ(turns.size(), 4u) << r.out;
  EXPECT_TRUE(turns[0].empty()) << r.out;
  for (int i = 1; i <= 2; ++i) {
    EXPECT_GT(turns[i].size(), 1u) << "turn " << i << ": " << r.out;
    EXPECT_EQ(turns[i].back(), '\n') << "turn " << i << ": " << r.out;
  }
  EXPECT_TRUE(turns[3].empty()) << r.out;
}

TEST_F(Client, ChatEndsAtEndOfInput) {
  CommandResult r = RunCommand(
      {BinPath("shardserve"), "chat", "--server", cluster_->router_address(), "--max-tokens", "4"},
      "Hello\n", absl::Seconds(60));
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

}  // namespace
}  // namespace shardserve::e2e
