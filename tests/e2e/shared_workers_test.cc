// Worker discovery. Two routers sharing one pool of workers: each worker's lease belongs to the
// router that loaded it, so the second router skips the first one's workers, builds its pipeline
// from the rest, and both serve correct output without disturbing each other.
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

std::vector<std::string> StageAddresses(const Cluster& cluster) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  v1::GetModelInfoResponse info;
  EXPECT_TRUE(cluster.Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  std::vector<std::string> out;
  for (const auto& p : info.pipelines()) {
    for (const auto& s : p.stages()) out.push_back(s.worker_address());
  }
  return out;
}

TEST(SharedWorkers, SecondRouterServesFromTheWorkersTheFirstDoesNotHold) {
  std::vector<std::string> pool;
  std::vector<std::unique_ptr<Process>> workers;
  for (int i = 0; i < 4; ++i) {
    pool.push_back(absl::StrCat("127.0.0.1:", FreePort()));
    workers.push_back(std::make_unique<Process>(
        std::vector<std::string>{BinPath("shardserve-worker"), "--listen", pool.back(), "--threads",
                                 "1"},
        absl::StrCat(SHARDSERVE_TEST_LOGS, "/shared-worker-", i, ".log")));
  }
  // Both routers list the whole pool for one 2-stage pipeline.
  Cluster a({.model = Stories260K(), .stages = 2, .replicas = 1, .worker_addresses = pool});
  ASSERT_TRUE(a.WaitServing(absl::Seconds(60)).ok());
  const std::vector<std::string> held_by_a = StageAddresses(a);
  ASSERT_EQ(held_by_a.size(), 2u);

  Cluster b({.model = Stories260K(), .stages = 2, .replicas = 1, .worker_addresses = pool});
  ASSERT_TRUE(b.WaitServing(absl::Seconds(60)).ok());
  const std::vector<std::string> held_by_b = StageAddresses(b);
  ASSERT_EQ(held_by_b.size(), 2u);
  // Four different workers: no worker serves both routers.
  std::set<std::string> all(held_by_a.begin(), held_by_a.end());
  all.insert(held_by_b.begin(), held_by_b.end());
  EXPECT_EQ(all.size(), 4u) << "A: " << held_by_a[0] << "," << held_by_a[1]
                            << " B: " << held_by_b[0] << "," << held_by_b[1];

  auto ref = RunGenerate(Stories260K(), "Once upon a time", 48, 0.8f, 5);
  ASSERT_TRUE(ref.ok()) << ref.status();
  for (const Cluster* c : {&a, &b, &a}) {
    auto got = RunCompletion(c->router_address(), TextRequest("Once upon a time", 48, 0.8f, 5),
                             absl::Seconds(30), nullptr);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->ids, ref->ids);
  }
  // Router A still holds its own workers: B never took them over.
  EXPECT_EQ(StageAddresses(a), held_by_a);
}

// --max-replicas: a worker that announces itself while the router runs becomes a new pipeline
// replica, which then serves requests with the reference output.
TEST(ScaleOut, AnnouncedWorkerAddsAPipelineReplica) {
  Cluster cluster(
      {.model = Stories260K(), .stages = 1, .replicas = 1, .router_args = {"--max-replicas", "2"}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  EXPECT_EQ(StageAddresses(cluster).size(), 1u);
  const std::string added = absl::StrCat("127.0.0.1:", FreePort());
  Process worker({BinPath("shardserve-worker"), "--listen", added, "--threads", "1", "--router",
                  cluster.router_address()},
                 absl::StrCat(SHARDSERVE_TEST_LOGS, "/scale-out-worker.log"));
  auto ready_pipelines = [&] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetModelInfoResponse info;
    EXPECT_TRUE(cluster.Stub()->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
    int ready = 0;
    for (const auto& p : info.pipelines()) ready += p.ready();
    return ready;
  };
  for (int i = 0; i < 200 && ready_pipelines() < 2; ++i) absl::SleepFor(absl::Milliseconds(50));
  ASSERT_EQ(ready_pipelines(), 2);
  EXPECT_EQ(StageAddresses(cluster),
            (std::vector<std::string>{cluster.worker_addresses()[0], added}));

  auto ref = RunGenerate(Stories260K(), "Tim had a red car", 64, 0, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  std::vector<absl::StatusOr<CompletionResult>> got(4, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      got[i] = RunCompletion(cluster.router_address(), TextRequest("Tim had a red car", 64, 0, 0),
                             absl::Seconds(30), nullptr);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& g : got) {
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->ids, ref->ids);
  }
  auto stats = WorkerStats(added);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_GT(stats->tokens(), 0u) << "the new pipeline served nothing";
}

// --workers dns:///NAME:PORT: the router resolves the name (here localhost) to its worker and
// serves the reference output.
TEST(Discovery, RouterFindsItsWorkerByDns) {
  const int port = FreePort();
  Process worker({BinPath("shardserve-worker"), "--listen", absl::StrCat("127.0.0.1:", port),
                  "--threads", "1"},
                 absl::StrCat(SHARDSERVE_TEST_LOGS, "/dns-worker.log"));
  const std::string router_address = absl::StrCat("127.0.0.1:", FreePort());
  Process router(
      {BinPath("shardserve-router"), "--listen", router_address, "--workers",
       absl::StrCat("dns:///localhost:", port), "--stages", "1", "--model", Stories260K()},
      absl::StrCat(SHARDSERVE_TEST_LOGS, "/dns-router.log"));
  bool serving = false;
  for (int i = 0; i < 300 && !serving && router.alive(); ++i) {
    serving = HealthServing(router_address, absl::Milliseconds(200));
    if (!serving) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(serving);
  auto ref = RunGenerate(Stories260K(), "The little dog", 32, 0, 0);
  ASSERT_TRUE(ref.ok()) << ref.status();
  auto got = RunCompletion(router_address, TextRequest("The little dog", 32, 0, 0),
                           absl::Seconds(30), nullptr);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->ids, ref->ids);
}

// Without --stages the worker count behind a name is unknown: the router says so and exits 1.
TEST(Discovery, DnsWithoutStagesIsAnError) {
  CommandResult r = RunCommand({BinPath("shardserve-router"), "--listen", "127.0.0.1:0",
                                "--workers", "dns:///localhost:1", "--model", Stories260K()},
                               "", absl::Seconds(20));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--stages"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace shardserve::e2e
