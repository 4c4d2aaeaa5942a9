// Simulated accelerators behind the real router and workers: models by shape alone
// (`shardserve synth --config-only`), workers with --backend sim. Greedy runs reproduce, steps
// take the cost model's time (busy seconds), Describe reports the device's profile, and a killed
// sim worker's streams finish on the other replica with exactly the no-fault tokens.
#include <atomic>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "model/cost_model.h"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

using api_testing::HttpGet;
using api_testing::MetricValue;

const std::vector<std::string> kSimH200 = {"--backend", "sim", "--sim-device", "h200"};

double Metric(int http, const std::string& sample) {
  auto r = HttpGet(http, "/metrics");
  return r.status == 200 ? MetricValue(r.body, sample) : -1;
}

TEST(Sim, GreedyRunsReproduceAndStreamText) {
  Cluster cluster({.model = ShapeOnlyModel("llama3-70b"), .stages = 4, .worker_args = kSimH200});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto a = RunCompletion(cluster.router_address(), TextRequest("Once upon a time", 24, 0, 0),
                         absl::Seconds(60), nullptr);
  auto b = RunCompletion(cluster.router_address(), TextRequest("Once upon a time", 24, 0, 0),
                         absl::Seconds(60), nullptr);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->ids.size(), 24u);
  EXPECT_EQ(a->ids, b->ids);
  EXPECT_EQ(a->text, b->text);
  ASSERT_FALSE(a->text.empty());
  for (char ch : a->text) EXPECT_TRUE((ch >= 'a' && ch <= 'z') || ch == ' ') << a->text;
  // Another prompt takes another path.
  auto c = RunCompletion(cluster.router_address(), TextRequest("The little dog", 24, 0, 0),
                         absl::Seconds(60), nullptr);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(c->ids, a->ids);
}

TEST(Sim, DescribeReportsTheProfileAndStepsTakeItsTime) {
  Cluster cluster({.model = ShapeOnlyModel("llama3-70b"),
                   .stages = 4,
                   .worker_args = {"--backend", "sim", "--sim-device", "h100"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const DeviceProfile h100 = *BuiltinProfile("h100");
  auto info = WorkerDescribe(cluster.worker_addresses()[0]);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->device(), v1::DEVICE_KIND_SIM);
  EXPECT_EQ(info->device_name(), "sim h100");
  EXPECT_EQ(info->cost().name(), "h100");
  EXPECT_DOUBLE_EQ(info->cost().memory_bandwidth(), h100.memory_bandwidth);
  EXPECT_EQ(info->free_memory_bytes(), static_cast<uint64_t>(h100.memory_bytes));
  const absl::Time start = absl::Now();
  auto r = RunCompletion(cluster.router_address(), TextRequest("Hello", 64, 0, 0),
                         absl::Seconds(60), nullptr);
  const double wall = absl::ToDoubleSeconds(absl::Now() - start);
  ASSERT_TRUE(r.ok()) << r.status();
  for (const std::string& w : cluster.worker_addresses()) {
    auto stats = WorkerStats(w);
    ASSERT_TRUE(stats.ok()) << stats.status();
    // 64 decode steps of 20 layers of a 70B model at 3.35 TB/s: about 10 ms each.
    const double min_step = 20 * 0.85e9 * 2 / h100.memory_bandwidth;
    EXPECT_GT(stats->busy_seconds(), 60 * min_step) << w;
    EXPECT_LT(stats->busy_seconds(), wall) << w;
  }
}

// KV is sized from each stage's Describe (free memory after its weights), as for a GPU: a device
// whose memory the stage's weights already fill stops the router before anything loads, with an
// error naming the layers, the worker and what to change.
TEST(Sim, ADeviceTooSmallForItsStageStopsTheRouterNamingIt) {
  const std::string profile = absl::StrCat(SHARDSERVE_TEST_LOGS, "/sim-30gib.json");
  std::ofstream(profile) << R"({"base": "h100", "name": "h100-30g", "memory_gib": 30})";
  // Llama-3-70B in BF16 is 141 GB: a quarter of it does not fit in 30 GiB.
  Cluster cluster({.model = ShapeOnlyModel("llama3-70b"),
                   .stages = 4,
                   .worker_args = {"--backend", "sim", "--sim-profile", profile}});
  EXPECT_NE(cluster.router().Wait(absl::Seconds(60)), 0);
  std::stringstream log;
  log << std::ifstream(cluster.router_log()).rdbuf();
  EXPECT_TRUE(absl::StrContains(log.str(), "leave room for 0 KV blocks")) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), cluster.worker_addresses()[0])) << log.str();
  EXPECT_TRUE(absl::StrContains(log.str(), "use more --stages")) << log.str();
}

TEST(Sim, KilledSimWorkersStreamsFinishWithTheNoFaultTokens) {
  const int http = FreePort();
  Cluster cluster({.model = ShapeOnlyModel("llama3-70b"),
                   .stages = 2,
                   .replicas = 2,
                   .worker_args = kSimH200,
                   .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http)}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog",  "Lily and Tom",
                                            "One day, a girl",  "The sun was hot", "Tim had a car"};
  constexpr int kTokens = 120;
  auto run_all = [&](std::vector<absl::StatusOr<CompletionResult>>* out) {
    std::vector<std::thread> threads;
    out->assign(prompts.size() * 2, absl::UnknownError("not run"));
    for (size_t i = 0; i < out->size(); ++i) {
      threads.emplace_back([&, out, i] {
        (*out)[i] = RunCompletion(cluster.router_address(),
                                  TextRequest(prompts[i % prompts.size()], kTokens, 0, 0),
                                  absl::Seconds(120), nullptr);
      });
    }
    return threads;
  };
  std::vector<absl::StatusOr<CompletionResult>> clean, faulted;
  for (auto& t : run_all(&clean)) t.join();
  const double before = Metric(http, "shardserve_generation_tokens_total");
  auto threads = run_all(&faulted);
  // Kill stage 0 of pipeline 0 once the streams are under way.
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (Metric(http, "shardserve_generation_tokens_total") < before + 200 &&
         absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  cluster.KillWorker(0);
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < clean.size(); ++i) {
    ASSERT_TRUE(clean[i].ok()) << clean[i].status();
    ASSERT_TRUE(faulted[i].ok()) << prompts[i % prompts.size()] << ": " << faulted[i].status();
    EXPECT_EQ(faulted[i]->ids.size(), static_cast<size_t>(kTokens));
    EXPECT_EQ(faulted[i]->ids, clean[i]->ids) << prompts[i % prompts.size()];
    EXPECT_EQ(faulted[i]->text, clean[i]->text);
  }
  EXPECT_EQ(Metric(http, "shardserve_failovers_total{pipeline=\"0\"}"), 1);
  EXPECT_GT(Metric(http, "shardserve_sequences_resumed_total{pipeline=\"1\"}"), 0);
}

}  // namespace
}  // namespace shardserve::e2e
