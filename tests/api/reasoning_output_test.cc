// Reasoning output end to end: a real router and workers serving stories260K with DeepSeek-R1's
// chat template, whose generation prompt opens <think>. The model never writes </think>, so with
// the reasoning parser (auto: the template opens <think>) everything a chat request generates is
// reasoning: the gRPC stream's reasoning_text, OpenAI's reasoning_content (whole and streamed)
// and the CLI's stderr must each equal the plain text of the same greedy request with the split
// turned off (per request, or a router with --reasoning-parser none), and the answer must be
// empty. Completions and text prompts keep the text whole unless a request asks.
#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpPost;
using json = nlohmann::json;

constexpr int kMaxTokens = 24;
constexpr char kOpenedPrompt[] = "Once upon a time<think>\n";

v1::GenerateRequest ChatRequest() {
  v1::GenerateRequest r;
  r.set_max_tokens(kMaxTokens);
  r.mutable_sampling()->set_temperature(0.0f);
  v1::ChatMessage* m = r.mutable_chat()->add_messages();
  m->set_role("user");
  m->set_content("Tell me a story about a dog.");
  return r;
}

constexpr char kChatBody[] =
    R"({"messages":[{"role":"user","content":"Tell me a story about a dog."}],
        "max_tokens":24,"temperature":0)";

class ReasoningOutput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    http_port_ = FreePort();
    cluster_ = new Cluster({.model = Stories260K(),
                            .stages = 2,
                            .router_args = {"--chat-template", "deepseek-r1", "--http-listen",
                                            absl::StrCat("127.0.0.1:", http_port_)}});
    plain_cluster_ = new Cluster(
        {.model = Stories260K(),
         .stages = 1,
         .router_args = {"--chat-template", "deepseek-r1", "--reasoning-parser", "none"}});
    ASSERT_TRUE(cluster_->WaitServing(absl::Seconds(60)).ok());
    ASSERT_TRUE(plain_cluster_->WaitServing(absl::Seconds(60)).ok());
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete plain_cluster_;
    cluster_ = plain_cluster_ = nullptr;
  }

  static CompletionResult Run(const Cluster& cluster, const v1::GenerateRequest& request) {
    auto r = RunCompletion(cluster.router_address(), request, absl::Seconds(60), nullptr);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : CompletionResult{};
  }

  static Cluster* cluster_;
  static Cluster* plain_cluster_;
  static int http_port_;
};
Cluster* ReasoningOutput::cluster_ = nullptr;
Cluster* ReasoningOutput::plain_cluster_ = nullptr;
int ReasoningOutput::http_port_ = 0;

TEST_F(ReasoningOutput, GrpcChatStreamsTheOpenedReasoningInReasoningText) {
  const CompletionResult split = Run(*cluster_, ChatRequest());
  v1::GenerateRequest whole_request = ChatRequest();
  whole_request.set_separate_reasoning(false);
  const CompletionResult whole = Run(*cluster_, whole_request);
  const CompletionResult plain = Run(*plain_cluster_, ChatRequest());

  ASSERT_FALSE(plain.text.empty());
  ASSERT_EQ(plain.text.find("</think>"), std::string::npos) << plain.text;
  EXPECT_EQ(plain.reasoning, "");
  EXPECT_EQ(split.reasoning, plain.text);
  EXPECT_EQ(split.text, "");
  EXPECT_EQ(split.ids, plain.ids);
  EXPECT_EQ(whole.text, plain.text);
  EXPECT_EQ(whole.reasoning, "");
}

TEST_F(ReasoningOutput, TextPromptsStayWholeUnlessTheRequestAsks) {
  v1::GenerateRequest request = TextRequest(kOpenedPrompt, kMaxTokens, 0.0f, 0);
  const CompletionResult whole = Run(*cluster_, request);
  ASSERT_FALSE(whole.text.empty());
  EXPECT_EQ(whole.reasoning, "");

  request.set_separate_reasoning(true);
  const CompletionResult split = Run(*cluster_, request);
  EXPECT_EQ(split.reasoning, whole.text);
  EXPECT_EQ(split.text, "");

  // Without an open <think> at the end of the prompt the output is the answer.
  v1::GenerateRequest closed = TextRequest("Once upon a time", kMaxTokens, 0.0f, 0);
  const CompletionResult closed_whole = Run(*cluster_, closed);
  closed.set_separate_reasoning(true);
  const CompletionResult closed_split = Run(*cluster_, closed);
  EXPECT_EQ(closed_split.text, closed_whole.text);
  EXPECT_EQ(closed_split.reasoning, "");
}

TEST_F(ReasoningOutput, OpenAiChatReturnsReasoningContent) {
  const CompletionResult plain = Run(*plain_cluster_, ChatRequest());
  ASSERT_FALSE(plain.text.empty());

  auto r = HttpPost(http_port_, "/v1/chat/completions", absl::StrCat(kChatBody, "}"));
  ASSERT_EQ(r.status, 200) << r.body;
  json message = json::parse(r.body)["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], plain.text) << r.body;
  EXPECT_EQ(message["content"], "") << r.body;

  httplib::Client client("127.0.0.1", http_port_);
  client.set_read_timeout(60, 0);
  auto res = client.Post("/v1/chat/completions", absl::StrCat(kChatBody, R"(,"stream":true})"),
                         "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  std::string reasoning, content;
  int chunks = 0;
  for (absl::string_view event : absl::StrSplit(res->body, "\n\n", absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&event, "data: ") || event == "[DONE]") continue;
    json delta = json::parse(event)["choices"][0]["delta"];
    if (delta.contains("reasoning_content"))
      reasoning += delta["reasoning_content"].get<std::string>();
    if (delta.contains("content")) content += delta["content"].get<std::string>();
    ++chunks;
  }
  EXPECT_GT(chunks, 2);
  EXPECT_EQ(reasoning, plain.text);
  EXPECT_EQ(content, "");
}

TEST_F(ReasoningOutput, OpenAiCompletionsKeepTheTextWhole) {
  v1::GenerateRequest request = TextRequest(kOpenedPrompt, kMaxTokens, 0.0f, 0);
  const CompletionResult grpc = Run(*cluster_, request);
  auto r = HttpPost(
      http_port_, "/v1/completions",
      json{{"prompt", kOpenedPrompt}, {"max_tokens", kMaxTokens}, {"temperature", 0}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  json choice = json::parse(r.body)["choices"][0];
  EXPECT_EQ(choice["text"], grpc.text);
  EXPECT_FALSE(choice.contains("reasoning_content"));
}

TEST_F(ReasoningOutput, CompleteCliWritesReasoningToStderr) {
  v1::GenerateRequest request = TextRequest(kOpenedPrompt, kMaxTokens, 0.0f, 0);
  const CompletionResult grpc = Run(*cluster_, request);
  CommandResult r =
      RunCommand({BinPath("shardserve"), "complete", "--server", cluster_->router_address(),
                  "--prompt", kOpenedPrompt, "--max-tokens", std::to_string(kMaxTokens),
                  "--temperature", "0", "--separate-reasoning"},
                 "", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, grpc.text + "\n");
  EXPECT_EQ(r.out, "\n");

  r = RunCommand({BinPath("shardserve"), "complete", "--server", cluster_->router_address(),
                  "--prompt", kOpenedPrompt, "--max-tokens", std::to_string(kMaxTokens),
                  "--temperature", "0", "--separate-reasoning", "--json"},
                 "", absl::Seconds(60));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json j = json::parse(r.out);
  EXPECT_EQ(j["reasoning"], grpc.text);
  EXPECT_EQ(j["text"], "");
}

}  // namespace
}  // namespace shardserve::e2e
