#include "common/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace shardserve {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Waiters spin with pause for a few microseconds, then yield the core (another thread of the
// pool may be waiting for it), then sleep on the futex.
constexpr int kSpinIterations = 2000;
constexpr int kYieldIterations = 2100;

}  // namespace

ThreadPool::ThreadPool(int num_threads)
    : num_threads_(num_threads > 0
                       ? num_threads
                       : std::max(1, static_cast<int>(std::thread::hardware_concurrency()))) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint32_t seen = 0;
  while (true) {
    int spins = 0;
    uint32_t gen;
    while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpinIterations) {
        CpuRelax();
      } else if (spins < kYieldIterations) {
        std::this_thread::yield();
      } else {
        generation_.wait(seen, std::memory_order_acquire);
      }
    }
    seen = gen;
    if (stop_.load()) return;
    (*job_)(index, num_threads_);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

void ThreadPool::Run(const std::function<void(int, int)>& fn) {
  if (num_threads_ == 1) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> lock(run_mu_);
  job_ = &fn;
  pending_.store(num_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  fn(0, num_threads_);
  int spins = 0;
  int left;
  while ((left = pending_.load(std::memory_order_acquire)) != 0) {
    if (++spins < kSpinIterations) {
      CpuRelax();
    } else if (spins < kYieldIterations) {
      std::this_thread::yield();
    } else {
      pending_.wait(left, std::memory_order_acquire);
    }
  }
  job_ = nullptr;
}

int ThreadPool::ThreadsFor(int64_t work) const {
  return static_cast<int>(std::clamp<int64_t>(work / 65536, 1, num_threads_));
}

void ThreadPool::ParallelFor(int64_t n, int64_t align,
                             const std::function<void(int64_t, int64_t)>& fn, int max_threads) {
  if (n <= 0) return;
  align = std::max<int64_t>(align, 1);
  const int64_t units = (n + align - 1) / align;
  const int threads =
      static_cast<int>(std::min<int64_t>(std::min(num_threads_, std::max(1, max_threads)), units));
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  Run([&](int t, int) {
    if (t >= threads) return;
    const int64_t ub = units * t / threads;
    const int64_t ue = units * (t + 1) / threads;
    const int64_t b = std::min(n, ub * align);
    const int64_t e = std::min(n, ue * align);
    if (b < e) fn(b, e);
  });
}

}  // namespace shardserve
