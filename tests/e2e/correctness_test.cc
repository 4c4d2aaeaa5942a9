// The cluster's output over gRPC equals the single-process reference, for 1, 2 and 3 stages,
// greedy and seeded sampling, and under 64 concurrent streams.
#include <algorithm>
#include <thread>

#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

const std::vector<std::string> kPrompts = {"Once upon a time", "The little dog",
                                           "Lily and Tom went to the park. They"};

struct Case {
  std::string name;
  int stages;
};

class PipelineMatchesGenerate : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(PipelineMatchesGenerate, GreedyAndSeeded) {
  const auto& [model_name, stages] = GetParam();
  const std::string model = model_name == "stories260K" ? Stories260K() : Synthetic8Layer();
  Cluster cluster({.model = model, .stages = stages});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  for (const std::string& prompt : kPrompts) {
    for (auto [temperature, seed] : {std::pair<float, uint64_t>{0.0f, 0}, {0.8f, 42}}) {
      auto ref = RunGenerate(model, prompt, 48, temperature, seed);
      ASSERT_TRUE(ref.ok()) << ref.status();
      auto got = RunCompletion(cluster.router_address(), TextRequest(prompt, 48, temperature, seed),
                               absl::Seconds(60), nullptr);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(got->ids, ref->ids) << "prompt '" << prompt << "' temperature " << temperature;
      EXPECT_EQ(got->text, ref->text);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, PipelineMatchesGenerate,
                         ::testing::Combine(::testing::Values("stories260K", "synthetic8l"),
                                            ::testing::Values(1, 2, 3)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "stages";
                         });

// DeepSeek-V2/V3 (MLA latent cache, MoE) split across stages: greedy output equals generate.
class DeepseekPipelineMatchesGenerate
    : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(DeepseekPipelineMatchesGenerate, Greedy) {
  const auto& [like, stages] = GetParam();
  const std::string model = SyntheticModel(like);
  Cluster cluster({.model = model, .stages = stages});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  for (const std::string& prompt : kPrompts) {
    auto ref = RunGenerate(model, prompt, 32, 0.0f, 0);
    ASSERT_TRUE(ref.ok()) << ref.status();
    auto got = RunCompletion(cluster.router_address(), TextRequest(prompt, 32, 0.0f, 0),
                             absl::Seconds(60), nullptr);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->ids, ref->ids) << "prompt '" << prompt << "'";
  }
}

INSTANTIATE_TEST_SUITE_P(Stages, DeepseekPipelineMatchesGenerate,
                         ::testing::Combine(::testing::Values("deepseek-v3-tiny",
                                                              "deepseek-v2-tiny"),
                                            ::testing::Values(1, 2)),
                         [](const auto& info) {
                           std::string n = std::get<0>(info.param);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n + "_" + std::to_string(std::get<1>(info.param)) + "stages";
                         });

TEST(ConcurrentStreams, SixtyFourMixedStreamsEqualTheirSoloOutput) {
  Cluster cluster({.model = Stories260K(), .stages = 2});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::vector<std::string> starts = {"Once upon a time", "The cat", "One day, a girl named",
                                           "Tom had a big red ball. He"};
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 64; ++i) {
    std::string prompt = starts[i % starts.size()];
    for (int r = 0; r < i % 5; ++r) prompt += " and the sun was warm";
    requests.push_back(TextRequest(prompt, 8 + (i * 13) % 90, i % 2 ? 0.8f : 0.0f, i));
  }
  std::vector<CompletionResult> solo;
  for (const auto& r : requests) {
    auto got = RunCompletion(cluster.router_address(), r, absl::Seconds(60), nullptr);
    ASSERT_TRUE(got.ok()) << got.status();
    solo.push_back(*got);
  }
  std::vector<absl::StatusOr<CompletionResult>> together(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      together[i] =
          RunCompletion(cluster.router_address(), requests[i], absl::Seconds(120), nullptr);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(together[i].ok()) << together[i].status();
    EXPECT_EQ(together[i]->ids, solo[i].ids) << "request " << i;
    EXPECT_EQ(together[i]->text, solo[i].text) << "request " << i;
  }
  for (const std::string& w : cluster.worker_addresses()) {
    auto stats = WorkerStats(w);
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->kv_blocks_used(), 0) << w;
  }
}

// Two replicas of two stages behind one router: concurrent requests go to both (each replica's
// workers run steps) and every output equals the single-process reference.
TEST(Replicas, RequestsSpreadOverBothAndMatchGenerate) {
  const std::string model = Synthetic8Layer();
  Cluster cluster({.model = model, .stages = 2, .replicas = 2});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  std::vector<std::string> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back(kPrompts[i % kPrompts.size()]);
  std::vector<Reference> refs;
  for (int i = 0; i < 8; ++i) {
    auto ref = RunGenerate(model, prompts[i], 24, i % 2 ? 0.8f : 0.0f, i);
    ASSERT_TRUE(ref.ok()) << ref.status();
    refs.push_back(*ref);
  }
  std::vector<absl::StatusOr<CompletionResult>> got(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) {
    threads.emplace_back([&, i] {
      got[i] = RunCompletion(cluster.router_address(),
                             TextRequest(prompts[i], 24, i % 2 ? 0.8f : 0.0f, i), absl::Seconds(60),
                             nullptr);
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_TRUE(got[i].ok()) << got[i].status();
    EXPECT_EQ(got[i]->ids, refs[i].ids) << "request " << i;
  }
  // Workers are listed replica by replica: [r0s0, r0s1, r1s0, r1s1].
  ASSERT_EQ(cluster.worker_addresses().size(), 4u);
  for (int replica = 0; replica < 2; ++replica) {
    for (int stage = 0; stage < 2; ++stage) {
      const std::string& address = cluster.worker_addresses()[replica * 2 + stage];
      // Releases travel with the next plan, which follows the last result at once.
      absl::StatusOr<v1::StatsResponse> stats;
      for (int tries = 0; tries < 100; ++tries) {
        stats = WorkerStats(address);
        if (!stats.ok() || stats->kv_blocks_used() == 0) break;
        absl::SleepFor(absl::Milliseconds(20));
      }
      ASSERT_TRUE(stats.ok()) << stats.status();
      EXPECT_GT(stats->steps(), 0u) << "replica " << replica << " stage " << stage;
      EXPECT_EQ(stats->kv_blocks_used(), 0) << "replica " << replica << " stage " << stage;
    }
  }
}

}  // namespace
}  // namespace shardserve::e2e
