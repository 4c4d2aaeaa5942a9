#include "router/discovery.h"

#include "gtest/gtest.h"

namespace shardserve {
namespace {

TEST(Discovery, ListsAreTakenAsGiven) {
  auto w = ResolveWorkers("a:1,b:2,,c:3");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, (std::vector<std::string>{"a:1", "b:2", "c:3"}));
  EXPECT_FALSE(IsDnsWorkers("a:1"));
  EXPECT_EQ(ResolveWorkers("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Discovery, DnsNamesResolveToEveryAddressWithThePort) {
  ASSERT_TRUE(IsDnsWorkers("dns:///localhost:50061"));
  auto w = ResolveWorkers("dns:///localhost:50061");
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_FALSE(w->empty());
  for (const std::string& a : *w) {
    EXPECT_TRUE(a == "127.0.0.1:50061" || a == "[::1]:50061") << a;
  }
  auto numeric = ResolveWorkers("dns:///10.1.2.3:7");
  ASSERT_TRUE(numeric.ok());
  EXPECT_EQ(*numeric, (std::vector<std::string>{"10.1.2.3:7"}));
}

TEST(Discovery, MalformedOrUnknownNamesSayWhat) {
  for (const std::string bad : {"dns:///localhost", "dns:///:80", "dns:///host:0", "dns:///h:x"}) {
    auto w = ResolveWorkers(bad);
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(w.status().message().find("--workers"), std::string::npos) << w.status();
  }
  auto unknown = ResolveWorkers("dns:///no-such-host.invalid:80");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnavailable) << unknown.status();
  EXPECT_NE(unknown.status().message().find("no-such-host.invalid"), std::string::npos);
}

}  // namespace
}  // namespace shardserve
