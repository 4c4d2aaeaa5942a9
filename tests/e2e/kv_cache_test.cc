// The router's KV cache management against real clusters: prefix caching (a shared prefix is
// prefilled once, on every stage, and the output does not change), preemption (a workload larger
// than the KV cache finishes with correct output) and prefix-aware routing across replicas.
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpGet;
using api_testing::MetricValue;

constexpr char kStory[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "park with her friends. One day, she saw a big red ball under a tree. She ran to the ball "
    "and picked it up. It was very shiny and round. Lily wanted to show the ball to her mom, so "
    "she ran home as fast as she could. Her mom smiled and said, \"What a nice ball! Where did "
    "you find it?\" Lily told her mom about the tree in the park. Her mom said they could go "
    "back together after lunch. Lily was very happy. She ate her lunch quickly and waited by the "
    "door. When they got to the park, they saw a little boy crying under the tree.";

std::vector<int32_t> Tokenize(const Cluster& cluster, const std::string& text) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::TokenizeRequest req;
  req.set_text(text);
  req.set_add_bos(true);
  v1::TokenizeResponse resp;
  EXPECT_TRUE(cluster.Stub()->Tokenize(&ctx, req, &resp).ok());
  return {resp.ids().begin(), resp.ids().end()};
}

struct StageCounters {
  uint64_t tokens = 0;
  uint64_t cached = 0;
};

std::vector<StageCounters> Counters(const Cluster& cluster) {
  std::vector<StageCounters> out;
  for (const std::string& w : cluster.worker_addresses()) {
    auto s = WorkerStats(w);
    EXPECT_TRUE(s.ok()) << s.status();
    out.push_back({s.ok() ? s->tokens() : 0, s.ok() ? s->prefix_cached_tokens() : 0});
  }
  return out;
}

double Metric(int http_port, const std::string& sample) {
  auto r = HttpGet(http_port, "/metrics");
  EXPECT_EQ(r.status, 200);
  return MetricValue(r.body, sample);
}

class SharedPrefix : public ::testing::TestWithParam<std::string> {};

// Two requests sharing a 200-token prefix: the second computes only what follows the cached
// blocks on every stage, and both outputs equal the single-process reference.
TEST_P(SharedPrefix, SecondRequestPrefillsOnlyTheRest) {
  const std::string model =
      GetParam() == "stories260K" ? Stories260K() : SyntheticModel(GetParam());
  Cluster cluster({.model = model, .stages = 2});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  // The synthetic model's tokenizer is byte-level: 300 bytes are about 300 tokens.
  const std::string story =
      GetParam() == "stories260K" ? std::string(kStory) : std::string(kStory).substr(0, 300);
  const std::string a = absl::StrCat(story, " The boy said");
  const std::string b = absl::StrCat(story, " Lily gave him");
  const std::vector<int32_t> ids_a = Tokenize(cluster, a), ids_b = Tokenize(cluster, b);
  size_t common = 0;
  while (common < ids_a.size() && common < ids_b.size() && ids_a[common] == ids_b[common]) ++common;
  ASSERT_GE(common, 200u) << "the prompts must share at least 200 tokens";
  constexpr int kMaxTokens = 24;

  auto got_a = RunCompletion(cluster.router_address(), TextRequest(a, kMaxTokens, 0, 0),
                             absl::Seconds(60), nullptr);
  ASSERT_TRUE(got_a.ok()) << got_a.status();
  const std::vector<StageCounters> before = Counters(cluster);
  auto got_b = RunCompletion(cluster.router_address(), TextRequest(b, kMaxTokens, 0, 0),
                             absl::Seconds(60), nullptr);
  ASSERT_TRUE(got_b.ok()) << got_b.status();
  const std::vector<StageCounters> after = Counters(cluster);

  // Full 16-token blocks of the common prefix come from the cache; B computes the rest.
  const uint64_t cached = common / 16 * 16;
  const uint64_t computed = ids_b.size() - cached + got_b->ids.size() - 1;
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].cached - before[i].cached, cached) << "stage " << i;
    EXPECT_EQ(after[i].tokens - before[i].tokens, computed) << "stage " << i;
  }
  for (const auto& [prompt, got] : {std::pair{a, *got_a}, std::pair{b, *got_b}}) {
    auto ref = RunGenerate(model, prompt, kMaxTokens, 0.0f, 0);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(got.ids, ref->ids);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SharedPrefix, ::testing::Values("stories260K", "deepseek-v3-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// A prompt near the model's whole context, chunked through 2 stages 64 tokens at a time, and
// generation up to the last position: the output equals the single-process reference.
TEST(LongPrompt, FillsTheContextInChunks) {
  Cluster cluster(
      {.model = Stories260K(), .stages = 2, .router_args = {"--max-batch-tokens", "64"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::string prompt = absl::StrCat(kStory, " ", std::string(kStory).substr(0, 560));
  const size_t n = Tokenize(cluster, prompt).size();
  ASSERT_GT(n, 400u);
  ASSERT_LT(n, 500u);
  const int max_tokens = static_cast<int>(512 - n);  // stories260K's context is 512
  v1::GenerateRequest r = TextRequest(prompt, max_tokens, 0, 0);
  auto got = RunCompletion(cluster.router_address(), r, absl::Seconds(60), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  auto ref = RunGenerate(Stories260K(), prompt, max_tokens, 0.0f, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  EXPECT_EQ(got->ids, ref->ids);
  EXPECT_EQ(got->usage.prompt_tokens(), static_cast<int>(n));
  // One token more than the context is refused, naming the field.
  r.set_max_tokens(max_tokens + 1);
  auto over = RunCompletion(cluster.router_address(), r, absl::Seconds(60), nullptr);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(over.status().message().find("max_tokens"), std::string::npos) << over.status();
}

// Eight concurrent long generations in a KV cache that holds one full context: sequences are
// preempted and recomputed, and every output still equals the reference.
TEST(ClusterPreemption, WorkloadLargerThanTheCacheFinishesCorrectly) {
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 2,
                   .router_args = {"--kv-blocks", "32", "--max-seqs", "8", "--http-listen",
                                   absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::vector<std::string> prompts = {
      "Once upon a time",      "The little dog",      "Lily and Tom went to the park.",
      "One day, a girl named", "The sun was hot and", "Tim had a red car",
      "There was a big tree",  "Mom said to Ben"};
  constexpr int kMaxTokens = 160;
  std::vector<absl::StatusOr<CompletionResult>> got(prompts.size(), absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      got[i] = RunCompletion(cluster.router_address(), TextRequest(prompts[i], kMaxTokens, 0, 0),
                             absl::Seconds(120), nullptr);
    });
  }
  for (auto& t : threads) t.join();
  int64_t generated = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << prompts[i] << ": " << got[i].status();
    auto ref = RunGenerate(Stories260K(), prompts[i], kMaxTokens, 0.0f, 0);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_EQ(got[i]->ids, ref->ids) << prompts[i];
    generated += got[i]->ids.size();
  }
  ASSERT_GT(generated, 512) << "the workload must exceed the 512-token cache";
  EXPECT_GT(Metric(http, "shardserve_num_preemptions_total{pipeline=\"0\"}"), 0);
  EXPECT_EQ(Metric(http, "shardserve_kv_cache_blocks_used{pipeline=\"0\"}"), 0);
  for (const std::string& w : cluster.worker_addresses()) {
    auto s = WorkerStats(w);
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->live_sequences(), 0) << w;
  }
}

// Two replicas: a follow-up chat turn (the conversation so far plus a new message) goes to the
// replica that served the earlier turns and holds their blocks; least-loaded routing does not
// look.
TEST(PrefixRouting, FollowUpTurnGoesToTheReplicaWithThePrefix) {
  const int http = FreePort();
  Cluster cluster({.model = Stories260K(),
                   .stages = 1,
                   .replicas = 2,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto hits = [&](int pipeline) {
    return Metric(http,
                  absl::StrCat("shardserve_prefix_cache_hits_total{pipeline=\"", pipeline, "\"}"));
  };
  auto queries = [&](int pipeline) {
    return Metric(
        http, absl::StrCat("shardserve_prefix_cache_queries_total{pipeline=\"", pipeline, "\"}"));
  };
  // First turns of two conversations at once, so they land on different replicas.
  const std::string first[2] = {absl::StrCat(kStory, " Lily asked the boy"),
                                absl::StrCat("Tom and his dog Max lived near the sea. ", kStory)};
  std::string answer[2];
  {
    std::vector<std::thread> threads;
    for (int c = 0; c < 2; ++c) {
      threads.emplace_back([&, c] {
        v1::GenerateRequest r = TextRequest(first[c], 160, 0, 0);
        r.set_ignore_eos(true);
        auto got = RunCompletion(cluster.router_address(), r, absl::Seconds(60), nullptr);
        ASSERT_TRUE(got.ok()) << got.status();
        answer[c] = got->text;
      });
      // Route the second only once the first is running on its replica.
      for (int i = 0; i < 500 && c == 0; ++i) {
        if (Metric(http, "shardserve_num_requests_running{pipeline=\"0\"}") +
                Metric(http, "shardserve_num_requests_running{pipeline=\"1\"}") >=
            1) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    for (auto& t : threads) t.join();
  }
  ASSERT_GT(queries(0), 0);
  ASSERT_GT(queries(1), 0) << "both replicas should have taken a first turn";
  // Follow-ups, one at a time: each must find at least its first turn's prompt blocks. The
  // conversations share no full block, so a follow-up sent to the other replica finds nothing.
  for (int turn = 0; turn < 2; ++turn) {
    for (int c = 0; c < 2; ++c) {
      const double h0 = hits(0), h1 = hits(1);
      const std::string follow = absl::StrCat(first[c], answer[c], " Then she said");
      auto got = RunCompletion(cluster.router_address(), TextRequest(follow, 8, 0, 0),
                               absl::Seconds(60), nullptr);
      ASSERT_TRUE(got.ok()) << got.status();
      const double gained = (hits(0) - h0) + (hits(1) - h1);
      EXPECT_GE(gained, 16 * (Tokenize(cluster, first[c]).size() / 16))
          << "conversation " << c << " turn " << turn;
    }
  }
}

}  // namespace
}  // namespace shardserve::e2e
