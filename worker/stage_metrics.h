// The worker's Prometheus metrics: step times observed where a step runs, lease ends and refused
// calls where they happen; KV use and link traffic from the worker's own Stats at scrape time.
// Thread-safe.
#ifndef SHARDSERVE_WORKER_STAGE_METRICS_H_
#define SHARDSERVE_WORKER_STAGE_METRICS_H_

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "shardserve/v1/worker.pb.h"

namespace shardserve {

// The worker's metrics. Step times are process-wide (one stage per worker process).
class StageMetrics {
 public:
  static StageMetrics& Global();
  void ObserveStep(absl::Duration duration);
  // Step times over the last minute: {p50, p99} in seconds, 0 without steps.
  std::pair<double, double> RecentStepSeconds() const;
  // A router's lease ended (reason: "expired" or "stream_closed") and `sequences` of its
  // sequences were dropped with their KV blocks.
  void ObserveLeaseRelease(const std::string& reason, int64_t sequences);
  // A caller without the cluster credential was refused (code: "unauthenticated" or
  // "permission_denied").
  void ObserveRefusedCall(const std::string& code);
  // A LoadShard that failed (a bad request, or a model that cannot be read or does not fit).
  void ObserveLoadFailure();
  // `stats` is the worker's own Stats answer at scrape time.
  std::string Render(const v1::StatsResponse& stats) const;

 private:
  StageMetrics();
  Histogram step_;
  RecentWindow recent_steps_;
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> lease_releases_ ABSL_GUARDED_BY(mu_);
  uint64_t released_sequences_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> refused_calls_ ABSL_GUARDED_BY(mu_);
  uint64_t load_failures_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_STAGE_METRICS_H_
