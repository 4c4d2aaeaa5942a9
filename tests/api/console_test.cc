// The router's /console in a real browser (Debian's chromium, driven headless by puppeteer-core
// from npm; tests/console/console_test.js) against a 2-replica x 2-stage cluster behind
// --api-key: the page asks for the key and keeps it out of URLs; it shows both pipelines with
// the right layer ranges and no console errors; under `shardserve bench` load its tokens/s rises
// above 0; after SIGKILL of a worker its stage turns unhealthy and a failover event appears
// within 5 s. Screenshots of each state go to build/console-screenshots/.
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/api/api_testing.h"
#include "tests/e2e/cluster_harness.h"

namespace shardserve::e2e {
namespace {

TEST(Console, ShowsTopologyLoadAndAFailoverInABrowser) {
  constexpr char kKey[] = "console-key-123";
  const int http = FreePort();
  Cluster cluster(
      {.model = Stories260K(),
       .stages = 2,
       .replicas = 2,
       .router_args = {"--http-listen", absl::StrCat("127.0.0.1:", http), "--api-key", kKey}});
  ASSERT_TRUE(cluster.WaitServing(absl::Seconds(60)).ok());
  auto modules = api_testing::ConsoleNodeModules();
  ASSERT_TRUE(modules.ok()) << modules.status();
  const std::filesystem::path shots =
      std::filesystem::path(BinPath("shardserve")).parent_path().parent_path() /
      "console-screenshots";
  std::filesystem::create_directories(shots);
  // Worker 3 is pipeline 1's second stage.
  auto r = api_testing::Run(absl::StrCat(
      "NODE_PATH='", *modules, "' node tests/console/console_test.js http://127.0.0.1:", http, " ",
      kKey, " ", cluster.router_address(), " '", BinPath("shardserve"), "' ",
      cluster.worker(3).pid(), " 0-2,3-4 '", shots.string(), "'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto found = nlohmann::json::parse(r.output.substr(r.output.rfind("{\"console_errors\"")));
  EXPECT_EQ(found["pipelines"], nlohmann::json::array({"0-2,3-4", "0-2,3-4"})) << r.output;
  EXPECT_GT(found["tokens_per_second"].get<double>(), 0) << r.output;
  EXPECT_LT(found["failover_seen_ms"].get<int>(), 5000) << r.output;
  EXPECT_TRUE(found["console_errors"].empty()) << r.output;
  EXPECT_TRUE(found["urls_with_key"].empty()) << r.output;
  for (const char* shot :
       {"console-key.png", "console-ready.png", "console-load.png", "console-failover.png"}) {
    EXPECT_TRUE(std::filesystem::exists(shots / shot)) << shot;
  }
}

}  // namespace
}  // namespace shardserve::e2e
