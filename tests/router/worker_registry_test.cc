#include "router/worker_registry.h"

#include "gtest/gtest.h"

namespace shardserve {
namespace {

TEST(WorkerRegistry, SparesAreLiveUnclaimedAnnouncers) {
  WorkerRegistry registry(absl::Milliseconds(200));
  registry.Claim("a:1");
  EXPECT_TRUE(registry.Heartbeat("a:1"));   // in use
  EXPECT_FALSE(registry.Heartbeat("b:2"));  // a spare
  EXPECT_FALSE(registry.Heartbeat("c:3"));
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"b:2", "c:3"}));
  EXPECT_EQ(registry.ClaimSpare(), "b:2");
  EXPECT_TRUE(registry.Heartbeat("b:2"));
  registry.Release("a:1");  // a failed stage's worker: a spare only once it announces again
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"c:3"}));
  absl::SleepFor(absl::Milliseconds(300));  // c:3 stopped announcing
  EXPECT_FALSE(registry.ClaimSpare().has_value());
  EXPECT_FALSE(registry.Heartbeat("a:1"));
  EXPECT_EQ(registry.ClaimSpare(), "a:1");
}

TEST(WorkerRegistry, ListedSparesNeverExpireButCoolDownAfterALease) {
  WorkerRegistry registry(absl::Milliseconds(100));
  registry.AddListed("w:3");
  registry.AddListed("w:4");
  absl::SleepFor(absl::Milliseconds(150));  // listed workers need no announcements
  EXPECT_EQ(registry.ClaimSpare(), "w:3");
  // w:3 turned out to be leased by another router: not offered again during the cooldown.
  registry.Release("w:3", absl::Milliseconds(200));
  EXPECT_EQ(registry.ClaimSpare(), "w:4");
  EXPECT_FALSE(registry.ClaimSpare().has_value());
  absl::SleepFor(absl::Milliseconds(250));
  EXPECT_EQ(registry.ClaimSpare(), "w:3");
}

TEST(RegistrationService, RejectsAddressesThatAreNotHostPort) {
  WorkerRegistry registry;
  RegistrationService service(&registry, absl::Seconds(1), nullptr);
  for (const std::string& bad :
       std::vector<std::string>{"", "nohost", ":50051", "host:", "host:0", "host:70000",
                                "host:12ab", std::string(300, 'h') + ":1"}) {
    v1::RegisterWorkerRequest req;
    req.set_address(bad);
    v1::RegisterWorkerResponse resp;
    EXPECT_EQ(service.RegisterWorker(nullptr, &req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT)
        << bad;
  }
  EXPECT_TRUE(registry.Spares().empty());
  v1::RegisterWorkerRequest req;
  req.set_address("10.0.0.7:50061");
  v1::RegisterWorkerResponse resp;
  ASSERT_TRUE(service.RegisterWorker(nullptr, &req, &resp).ok());
  EXPECT_EQ(resp.heartbeat_ms(), 1000);
  EXPECT_FALSE(resp.serving());
}

}  // namespace
}  // namespace shardserve
