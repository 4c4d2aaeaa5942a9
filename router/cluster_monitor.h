// ClusterMonitor: the router's view of its cluster for operators (GetClusterStatus,
// `GET /v1/cluster`, `/console`, `shardserve status`).
//
// A thread polls once a second: every replica's gauges and every stage's worker (Stats; Describe
// once per address), and the router's own latency windows. Rates (a stage's busy fraction,
// tokens/s and activation bytes/s; the router's requests/s and tokens/s) are differences
// between polls. Events are what changed between two polls -- a pipeline became ready or
// failed, its failover or preemption counters moved, a stage's worker was lost, came back,
// started draining or was replaced by a spare, a spare joined or left -- kept 50 deep; counters
// make failovers and preemptions certain to be seen even when they come and go within a poll.
// The last 10 minutes of samples are kept once a second for the console's plots.
//
// Serving a status copies the last poll: readers never call a worker. Thread-safe.
#ifndef SHARDSERVE_ROUTER_CLUSTER_MONITOR_H_
#define SHARDSERVE_ROUTER_CLUSTER_MONITOR_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "shardserve/v1/inference.pb.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve {

class InferenceServiceImpl;
class RouterMetrics;
class WorkerRegistry;

class ClusterMonitor {
 public:
  // All must outlive the monitor. `registry` may be null (no spares). `owner` is this router's
  // lease identity (PipelineOptions.owner): workers say whether it holds their lease.
  ClusterMonitor(InferenceServiceImpl* service, const RouterMetrics* metrics,
                 WorkerRegistry* registry, std::string owner,
                 absl::Duration interval = absl::Seconds(1));
  ~ClusterMonitor();

  void Start();
  void Stop();
  // The last poll; with `history`, the samples of the last 10 minutes too.
  v1::GetClusterStatusResponse Status(bool history) const;
  // Polls once now (the thread's work; public for tests).
  void Poll();

 private:
  // What one worker reported at the previous poll, for rates.
  struct WorkerSample {
    absl::Time at;
    double busy_seconds = 0;
    uint64_t tokens = 0;
    std::map<std::string, uint64_t> link_bytes;  // by direction + "\t" + peer
  };
  struct Described {
    std::string backend;
    std::string device;
  };
  struct Totals {
    absl::Time at;
    uint64_t tokens = 0;
    uint64_t finished = 0;
  };

  void Loop();
  v1::WorkerService::Stub* Stub(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(poll_mu_);
  void FillStage(const std::string& address, absl::Time now, v1::StageStatus* stage)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(poll_mu_);
  void AddEvent(absl::Time now, const std::string& kind, int pipeline, int stage,
                const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(poll_mu_);
  // Events from what changed since `previous_`.
  void Diff(absl::Time now, const v1::GetClusterStatusResponse& current)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(poll_mu_);

  InferenceServiceImpl* const service_;
  const RouterMetrics* const metrics_;
  WorkerRegistry* const registry_;
  const std::string owner_;
  const absl::Duration interval_;
  const absl::Time started_ = absl::Now();

  // Held by Poll (one at a time): the poll's own state.
  absl::Mutex poll_mu_;
  std::map<std::string, std::unique_ptr<v1::WorkerService::Stub>> stubs_ ABSL_GUARDED_BY(poll_mu_);
  std::map<std::string, Described> described_ ABSL_GUARDED_BY(poll_mu_);
  std::map<std::string, WorkerSample> samples_ ABSL_GUARDED_BY(poll_mu_);
  std::deque<Totals> totals_ ABSL_GUARDED_BY(poll_mu_);  // the last 10 s of router totals
  v1::GetClusterStatusResponse previous_ ABSL_GUARDED_BY(poll_mu_);
  bool first_poll_ ABSL_GUARDED_BY(poll_mu_) = true;
  std::deque<v1::ClusterEvent> events_ ABSL_GUARDED_BY(poll_mu_);
  // (pipeline, stage, address) of stages that have served: their return is an event.
  using ServedKey = std::tuple<int, int, std::string>;
  std::set<ServedKey> served_ ABSL_GUARDED_BY(poll_mu_);

  // What readers see.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(poll_mu_);
  v1::GetClusterStatusResponse last_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::ClusterSample> history_ ABSL_GUARDED_BY(mu_);

  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_CLUSTER_MONITOR_H_
