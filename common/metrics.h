// Prometheus text exposition (format 0.0.4), written by hand and checked in CI with
// `promtool check metrics`: histograms, the writer, the latency buckets every process uses and a
// small /metrics server. The router's metrics (router/metrics.h) and the worker's
// (worker/stage_metrics.h) are built from these. Everything here is thread-safe.
#ifndef SHARDSERVE_COMMON_METRICS_H_
#define SHARDSERVE_COMMON_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace shardserve {

// Latency buckets (seconds): vLLM's for time to first token; finer ones at the low end for
// inter-token and step times; whole requests.
extern const std::vector<double> kFirstTokenBuckets;
extern const std::vector<double> kTokenBuckets;
extern const std::vector<double> kRequestBuckets;

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

// The most recent observations, for "over the last minute" figures (the console, status): keeps
// the last `capacity` values with their times and answers quantiles over those younger than
// `window`.
class RecentWindow {
 public:
  RecentWindow(size_t capacity, absl::Duration window);
  void Observe(double value, absl::Time now = absl::Now());
  // The q-quantile (0..1, nearest rank) of each of `qs`; 0 for each when there is nothing recent.
  std::vector<double> Quantiles(const std::vector<double>& qs, absl::Time now = absl::Now()) const;

 private:
  const size_t capacity_;
  const absl::Duration window_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<absl::Time, double>> ring_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
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

#endif  // SHARDSERVE_COMMON_METRICS_H_
