// RecentWindow: quantiles over the observations younger than the window, nearest rank, bounded
// by the ring's capacity.
#include "common/metrics.h"

#include "gtest/gtest.h"

namespace shardserve {
namespace {

TEST(RecentWindow, QuantilesOfRecentObservationsByNearestRank) {
  RecentWindow w(1000, absl::Minutes(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(w.Quantiles({0.5, 0.99}, t0), (std::vector<double>{0, 0}));
  for (int i = 1; i <= 100; ++i) w.Observe(i, t0);
  EXPECT_EQ(w.Quantiles({0.0, 0.5, 0.99, 1.0}, t0), (std::vector<double>{1, 50, 99, 100}));
  // A minute later those are old: only what came since counts.
  const absl::Time t1 = t0 + absl::Seconds(61);
  w.Observe(7, t1);
  EXPECT_EQ(w.Quantiles({0.5, 0.99}, t1), (std::vector<double>{7, 7}));
}

TEST(RecentWindow, KeepsOnlyTheLastCapacityObservations) {
  RecentWindow w(10, absl::Hours(1));
  const absl::Time t = absl::FromUnixSeconds(1000);
  for (int i = 1; i <= 25; ++i) w.Observe(i, t);
  EXPECT_EQ(w.Quantiles({0.0, 1.0}, t), (std::vector<double>{16, 25}));
}

}  // namespace
}  // namespace shardserve
