#include "common/thread_pool.h"

#include <atomic>
#include <vector>

#include "gtest/gtest.h"

namespace shardserve {
namespace {

TEST(ThreadPoolTest, RunCallsEveryThreadOnce) {
  ThreadPool pool(3);
  ASSERT_EQ(pool.size(), 3);
  for (int rep = 0; rep < 200; ++rep) {
    std::vector<std::atomic<int>> calls(3);
    pool.Run([&](int t, int n) {
      ASSERT_EQ(n, 3);
      calls[t].fetch_add(1);
    });
    for (auto& c : calls) ASSERT_EQ(c.load(), 1);
  }
}

TEST(ThreadPoolTest, ParallelForCoversTheRangeOnceInAlignedPieces) {
  ThreadPool pool(2);
  for (int64_t n : {1, 3, 7, 64, 1000, 1001}) {
    for (int64_t align : {1, 4, 16}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, align, [&](int64_t b, int64_t e) {
        EXPECT_LT(b, e);
        EXPECT_EQ(b % align, 0) << "begin not aligned";
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << align << " " << i;
    }
  }
}

TEST(ThreadPoolTest, MaxThreadsLimitsTheFanOut) {
  ThreadPool pool(2);
  std::atomic<int> pieces{0};
  pool.ParallelFor(
      1000, 1, [&](int64_t, int64_t) { pieces.fetch_add(1); }, 1);
  EXPECT_EQ(pieces.load(), 1);
  EXPECT_EQ(pool.ThreadsFor(10), 1);
  EXPECT_EQ(pool.ThreadsFor(int64_t{1} << 30), 2);
}

TEST(ThreadPoolTest, ConcurrentCallersAreSerialised) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) {
        pool.ParallelFor(100, 1, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 4 * 50 * 100);
}

}  // namespace
}  // namespace shardserve
