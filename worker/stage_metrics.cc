#include "worker/stage_metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/layers.h"

namespace shardserve {

StageMetrics& StageMetrics::Global() {
  static StageMetrics* metrics = new StageMetrics();
  return *metrics;
}

StageMetrics::StageMetrics() : step_(kTokenBuckets), recent_steps_(4096, absl::Minutes(1)) {}

void StageMetrics::ObserveStep(absl::Duration duration) {
  step_.Observe(absl::ToDoubleSeconds(duration));
  recent_steps_.Observe(absl::ToDoubleSeconds(duration));
}

std::pair<double, double> StageMetrics::RecentStepSeconds() const {
  const std::vector<double> q = recent_steps_.Quantiles({0.5, 0.99});
  return {q[0], q[1]};
}

void StageMetrics::ObserveLeaseRelease(const std::string& reason, int64_t sequences) {
  absl::MutexLock lock(&mu_);
  ++lease_releases_[reason];
  released_sequences_ += static_cast<uint64_t>(std::max<int64_t>(0, sequences));
}

void StageMetrics::ObserveRefusedCall(const std::string& code) {
  absl::MutexLock lock(&mu_);
  ++refused_calls_[code];
}

void StageMetrics::ObserveLoadFailure() {
  absl::MutexLock lock(&mu_);
  ++load_failures_;
}

std::string StageMetrics::Render(const v1::StatsResponse& stats) const {
  ExpositionWriter w;
  {
    absl::MutexLock lock(&mu_);
    w.Family("shardserve_worker_lease_releases_total",
             "Router leases that ended, by reason (expired, stream_closed); the router's "
             "sequences and KV blocks were freed.",
             "counter");
    for (const char* reason : {"expired", "stream_closed"}) {
      auto it = lease_releases_.find(reason);
      w.Sample("shardserve_worker_lease_releases_total", {{"reason", reason}},
               it == lease_releases_.end() ? 0 : it->second);
    }
    w.Family("shardserve_worker_released_sequences_total",
             "Sequences dropped because the router holding them went away.", "counter");
    w.Sample("shardserve_worker_released_sequences_total", {}, released_sequences_);
    w.Family("shardserve_worker_refused_calls_total",
             "Worker RPCs refused for a missing or wrong cluster credential.", "counter");
    for (const char* code : {"unauthenticated", "permission_denied"}) {
      auto it = refused_calls_.find(code);
      w.Sample("shardserve_worker_refused_calls_total", {{"code", code}},
               it == refused_calls_.end() ? 0 : it->second);
    }
    w.Family("shardserve_worker_shard_load_failures_total",
             "LoadShard calls that failed (bad request, unreadable model, no room).", "counter");
    w.Sample("shardserve_worker_shard_load_failures_total", {}, load_failures_);
  }
  w.Family("shardserve_worker_device_failed",
           "1 once the device failed (a sticky CUDA error, a lost device): the worker is "
           "NOT_SERVING until it restarts.",
           "gauge");
  w.Sample("shardserve_worker_device_failed", {}, stats.device_error().empty() ? 0 : 1);
  // The loaded shard's families carry the model's served name (vLLM's `model_name`) and its
  // layers; with no shard loaded there is only `shardserve_stage_loaded 0`.
  MetricLabels stage;
  if (stats.loaded()) {
    stage = {{"model_name", stats.model_name()},
             {"layers", LayerRangeText(stats.layer_begin(), stats.layer_end())}};
  }
  w.Family("shardserve_stage_loaded", "1 while a shard is loaded.", "gauge");
  w.Sample("shardserve_stage_loaded", stage, stats.loaded() ? 1 : 0);
  if (!stats.loaded()) return w.Take();
  w.Family("shardserve_stage_step_duration_seconds", "Time to run one step plan on this stage.",
           "histogram");
  w.HistogramSamples("shardserve_stage_step_duration_seconds", stage, step_.Read());
  w.Family("shardserve_stage_steps_total", "Step plans run by the loaded shard.", "counter");
  w.Sample("shardserve_stage_steps_total", stage, stats.steps());
  w.Family("shardserve_stage_tokens_total", "Tokens run through the loaded shard.", "counter");
  w.Sample("shardserve_stage_tokens_total", stage, stats.tokens());
  w.Family("shardserve_stage_busy_seconds_total",
           "Seconds the loaded shard's device spent running steps (simulated stages: the cost "
           "model's time); its rate is the stage's utilization.",
           "counter");
  w.Sample("shardserve_stage_busy_seconds_total", stage, stats.busy_seconds());
  // Not the router's shardserve_kv_cache_blocks_*: one name, one meaning, one set of labels.
  w.Family("shardserve_stage_kv_cache_blocks_used", "KV cache blocks held on this stage.", "gauge");
  w.Sample("shardserve_stage_kv_cache_blocks_used", stage, stats.kv_blocks_used());
  w.Family("shardserve_stage_kv_cache_blocks_capacity", "KV cache blocks on this stage.", "gauge");
  w.Sample("shardserve_stage_kv_cache_blocks_capacity", stage, stats.kv_blocks_total());
  w.Family("shardserve_activation_bytes_total", "Activation bytes over each link.", "counter");
  for (const v1::LinkStats& l : stats.links()) {
    MetricLabels labels = stage;
    labels.insert(labels.end(), {{"direction", l.direction()}, {"peer", l.peer()}});
    w.Sample("shardserve_activation_bytes_total", labels, l.bytes());
  }
  w.Family("shardserve_activation_messages_total", "Activation messages over each link.",
           "counter");
  for (const v1::LinkStats& l : stats.links()) {
    MetricLabels labels = stage;
    labels.insert(labels.end(), {{"direction", l.direction()}, {"peer", l.peer()}});
    w.Sample("shardserve_activation_messages_total", labels, l.messages());
  }
  return w.Take();
}

}  // namespace shardserve
