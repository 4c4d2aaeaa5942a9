// A fixed-size pool of compute threads for kernels, sized by --threads.
//
// Run() fans a function out to every thread (the caller participates as thread 0) and returns
// when all are done; it is a barrier, built for the many short parallel regions of a decode
// step, so idle workers spin briefly before sleeping. Calls to Run() from different threads are
// serialised by an internal mutex; a Run() must not call Run() on the same pool.
#ifndef SHARDSERVE_COMMON_THREAD_POOL_H_
#define SHARDSERVE_COMMON_THREAD_POOL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace shardserve {

class ThreadPool {
 public:
  // num_threads >= 1 counts the calling thread; 0 means the number of online CPUs.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return num_threads_; }

  // Calls fn(thread_index, num_threads) once on every thread.
  void Run(const std::function<void(int, int)>& fn);

  // Splits [0, n) into up to min(size(), max_threads) contiguous ranges, rounded to multiples of
  // `align`, and calls fn(begin, end) for each non-empty one. Small jobs should pass a small
  // max_threads: a fan-out costs microseconds, more when other processes hold the cores.
  void ParallelFor(int64_t n, int64_t align, const std::function<void(int64_t, int64_t)>& fn,
                   int max_threads = 1 << 30);

  // Threads worth using for `work` units of arithmetic (about one per 64K multiply-adds).
  int ThreadsFor(int64_t work) const;

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace shardserve

#endif  // SHARDSERVE_COMMON_THREAD_POOL_H_
