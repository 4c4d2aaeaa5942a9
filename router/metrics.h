// The router's Prometheus metrics. Names follow vLLM's
// (`vllm:time_to_first_token_seconds` -> `shardserve_time_to_first_token_seconds`); see
// docs/API.md for the list. RouterMetrics is fed by InferenceServiceImpl: Start/Next/Cancel of
// every generation, whatever front end (gRPC, OpenAI HTTP, KServe) asked for it. Queue and KV
// gauges are read from the replicas when scraped. Thread-safe.
#ifndef SHARDSERVE_ROUTER_METRICS_H_
#define SHARDSERVE_ROUTER_METRICS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/metrics.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

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
  std::map<std::string, uint64_t> failures_by_code;  // the failing stage's status code
  std::map<std::string, int> links;                  // hops by link kind ("grpc", "nccl", ...)
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

  // Every sample is labelled model_name="`model_name`" (the served name).
  std::string Render(const std::string& model_name,
                     const std::vector<ReplicaGauges>& replicas) const;

  // For the cluster status: totals so far, and latency quantiles over the last minute.
  uint64_t generation_tokens() const { return generation_tokens_.load(); }
  uint64_t finished_requests() const {
    return finished_stop_.load() + finished_length_.load() + finished_abort_.load() +
           finished_error_.load();
  }
  struct RecentLatency {
    double ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0;
  };
  RecentLatency Recent() const;

 private:
  void Finish(RequestTrace& trace, const std::string& reason);

  Histogram ttft_;
  Histogram itl_;
  Histogram e2e_;
  RecentWindow recent_ttft_;
  RecentWindow recent_itl_;
  std::atomic<uint64_t> prompt_tokens_{0};
  std::atomic<uint64_t> generation_tokens_{0};
  std::atomic<uint64_t> finished_stop_{0};
  std::atomic<uint64_t> finished_length_{0};
  std::atomic<uint64_t> finished_abort_{0};
  std::atomic<uint64_t> finished_error_{0};
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_METRICS_H_
