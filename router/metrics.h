// Prometheus text metrics for the router and the workers, written by hand in the text
// exposition format 0.0.4 (checked in CI with `promtool check metrics`). Names follow vLLM's
// (`vllm:time_to_first_token_seconds` -> `shardserve_time_to_first_token_seconds`); see
// docs/API.md for the list.
//
// RouterMetrics is fed by InferenceServiceImpl: Start/Next/Cancel of every generation, whatever
// front end (gRPC, OpenAI HTTP, KServe) asked for it. Queue and KV gauges are read from the
// replicas when scraped. StageMetrics is the worker's: step times are observed where a step
// runs; KV and link traffic come from the worker's own Stats when scraped.
//
// Everything here is thread-safe.
#ifndef SHARDSERVE_ROUTER_METRICS_H_
#define SHARDSERVE_ROUTER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "shardserve/v1/inference.pb.h"
#include "shardserve/v1/worker.pb.h"

namespace shardserve {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A histogram with fixed upper bounds (seconds, usually).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> counts;  // per bucket, not cumulative; last one is +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;
};

// Builds one exposition. Families must be written whole, one after another.
class ExpositionWriter {
 public:
  // type: "counter", "gauge" or "histogram". Counter names end in _total.
  void Family(const std::string& name, const std::string& help, const std::string& type);
  void Sample(const std::string& name, const MetricLabels& labels, double value);
  void HistogramSamples(const std::string& name, const MetricLabels& labels,
                        const Histogram::Snapshot& h);
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Where a generation stands, for latency metrics; one per request, owned by its handler.
struct RequestTrace {
  absl::Time start;
  absl::Time last_token;
  bool seen_token = false;
  bool finished = false;
  int64_t prompt_tokens = 0;
};

// What the router reads from one replica at scrape time.
struct ReplicaGauges {
  int pipeline = 0;
  int64_t waiting = 0;
  int64_t running = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_cached = 0;  // holding a committed prefix, in use or evictable
  uint64_t prefix_query_tokens = 0;
  uint64_t prefix_hit_tokens = 0;
  uint64_t preemptions = 0;
  uint64_t failovers = 0;
  uint64_t resumed = 0;  // sequences taken over from a failed pipeline
  int64_t parked = 0;    // sequences of this failed pipeline waiting for one to take them
  bool ready = false;
};

class RouterMetrics {
 public:
  RouterMetrics();

  void OnStart(RequestTrace& trace, int64_t prompt_tokens);
  // Called with each output a handler takes from its sink (`response` null when none).
  void OnOutput(RequestTrace& trace, const v1::GenerateResponse* response, bool done,
                const absl::Status& error);
  void OnCancel(RequestTrace& trace);

  std::string Render(const std::vector<ReplicaGauges>& replicas) const;

 private:
  void Finish(RequestTrace& trace, const std::string& reason);

  Histogram ttft_;
  Histogram itl_;
  Histogram e2e_;
  std::atomic<uint64_t> prompt_tokens_{0};
  std::atomic<uint64_t> generation_tokens_{0};
  std::atomic<uint64_t> finished_stop_{0};
  std::atomic<uint64_t> finished_length_{0};
  std::atomic<uint64_t> finished_abort_{0};
  std::atomic<uint64_t> finished_error_{0};
};

// The worker's metrics. Step times are process-wide (one stage per worker process).
class StageMetrics {
 public:
  static StageMetrics& Global();
  void ObserveStep(absl::Duration duration);
  // A router's lease ended (reason: "expired" or "stream_closed") and `sequences` of its
  // sequences were dropped with their KV blocks.
  void ObserveLeaseRelease(const std::string& reason, int64_t sequences);
  // A caller without the cluster credential was refused (code: "unauthenticated" or
  // "permission_denied").
  void ObserveRefusedCall(const std::string& code);
  // `stats` is the worker's own Stats answer at scrape time.
  std::string Render(const v1::StatsResponse& stats) const;

 private:
  StageMetrics();
  Histogram step_;
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> lease_releases_ ABSL_GUARDED_BY(mu_);
  uint64_t released_sequences_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> refused_calls_ ABSL_GUARDED_BY(mu_);
};

// Serves GET /metrics from `render` on `address` (host:port) on its own thread until Stop().
class MetricsServer {
 public:
  MetricsServer();
  ~MetricsServer();
  absl::Status Start(const std::string& address, std::function<std::string()> render);
  void Stop();
  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_METRICS_H_
