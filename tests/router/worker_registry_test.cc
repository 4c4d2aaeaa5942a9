#include "router/worker_registry.h"

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace shardserve {
namespace {

// Time that moves only when the test says so.
class FakeClock {
 public:
  absl::Time Now() const {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  WorkerRegistry::Clock AsClock() {
    return [this] { return Now(); };
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1'700'000'000);
};

TEST(WorkerRegistry, SparesAreLiveUnclaimedAnnouncers) {
  FakeClock clock;
  WorkerRegistry registry(absl::Milliseconds(200), clock.AsClock());
  registry.Claim("a:1");
  EXPECT_TRUE(registry.Heartbeat("a:1"));   // in use
  EXPECT_FALSE(registry.Heartbeat("b:2"));  // a spare
  EXPECT_FALSE(registry.Heartbeat("c:3"));
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"b:2", "c:3"}));
  EXPECT_EQ(registry.ClaimSpare(), "b:2");
  EXPECT_TRUE(registry.Heartbeat("b:2"));
  registry.Release("a:1");  // a failed stage's worker: a spare only once it announces again
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"c:3"}));
  clock.Advance(absl::Milliseconds(200));  // c:3 is silent, but its last announcement is in ttl
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"c:3"}));
  clock.Advance(absl::Milliseconds(100));  // c:3 stopped announcing: past the ttl
  EXPECT_TRUE(registry.Spares().empty());
  EXPECT_FALSE(registry.ClaimSpare().has_value());
  EXPECT_FALSE(registry.Heartbeat("a:1"));
  EXPECT_EQ(registry.ClaimSpare(), "a:1");
}

TEST(WorkerRegistry, ListedSparesNeverExpireButCoolDownAfterALease) {
  FakeClock clock;
  WorkerRegistry registry(absl::Milliseconds(100), clock.AsClock());
  registry.AddListed("w:3");
  registry.AddListed("w:4");
  clock.Advance(absl::Milliseconds(150));  // past the ttl: listed workers need no announcements
  EXPECT_EQ(registry.Spares(), (std::vector<std::string>{"w:3", "w:4"}));
  EXPECT_EQ(registry.ClaimSpare(), "w:3");
  // w:3 turned out to be leased by another router: not offered again during the cooldown.
  registry.Release("w:3", absl::Milliseconds(200));
  EXPECT_EQ(registry.ClaimSpare(), "w:4");
  EXPECT_FALSE(registry.ClaimSpare().has_value());
  clock.Advance(absl::Milliseconds(199));  // still cooling down
  EXPECT_FALSE(registry.ClaimSpare().has_value());
  clock.Advance(absl::Milliseconds(51));  // the cooldown is over
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
