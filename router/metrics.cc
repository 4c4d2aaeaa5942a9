#include "router/metrics.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace shardserve {

RouterMetrics::RouterMetrics()
    : ttft_(kFirstTokenBuckets),
      itl_(kTokenBuckets),
      e2e_(kRequestBuckets),
      recent_ttft_(65536, absl::Minutes(1)),
      recent_itl_(65536, absl::Minutes(1)) {}

RouterMetrics::RecentLatency RouterMetrics::Recent() const {
  const absl::Time now = absl::Now();
  const std::vector<double> ttft = recent_ttft_.Quantiles({0.5, 0.99}, now);
  const std::vector<double> itl = recent_itl_.Quantiles({0.5, 0.99}, now);
  return {ttft[0], ttft[1], itl[0], itl[1]};
}

void RouterMetrics::OnStart(RequestTrace& trace, int64_t prompt_tokens) {
  trace.start = absl::Now();
  trace.prompt_tokens = prompt_tokens;
  prompt_tokens_ += prompt_tokens;
}

void RouterMetrics::OnOutput(RequestTrace& trace, const v1::GenerateResponse* response, bool done,
                             const absl::Status& error) {
  if (trace.finished) return;
  const absl::Time now = absl::Now();
  const int tokens = response == nullptr ? 0 : response->token_ids_size();
  if (tokens > 0) {
    generation_tokens_ += tokens;
    if (!trace.seen_token) {
      ttft_.Observe(absl::ToDoubleSeconds(now - trace.start));
      recent_ttft_.Observe(absl::ToDoubleSeconds(now - trace.start), now);
      trace.seen_token = true;
      // Tokens that came with the first one arrived with it: one observation each, so the count
      // is always generated tokens - 1 per request, however the stream was batched.
      for (int i = 1; i < tokens; ++i) {
        itl_.Observe(0.0);
        recent_itl_.Observe(0.0, now);
      }
    } else {
      // Tokens that arrive together share the gap since the previous output.
      const double gap = absl::ToDoubleSeconds(now - trace.last_token) / tokens;
      for (int i = 0; i < tokens; ++i) {
        itl_.Observe(gap);
        recent_itl_.Observe(gap, now);
      }
    }
    trace.last_token = now;
  }
  if (!done) return;
  if (!error.ok()) {
    Finish(trace, error.code() == absl::StatusCode::kCancelled ? "abort" : "error");
  } else if (response != nullptr && response->finish_reason() == v1::FINISH_REASON_LENGTH) {
    Finish(trace, "length");
  } else {
    Finish(trace, "stop");
  }
}

void RouterMetrics::OnCancel(RequestTrace& trace) { Finish(trace, "abort"); }

void RouterMetrics::Finish(RequestTrace& trace, const std::string& reason) {
  if (trace.finished) return;
  trace.finished = true;
  e2e_.Observe(absl::ToDoubleSeconds(absl::Now() - trace.start));
  if (reason == "stop") ++finished_stop_;
  if (reason == "length") ++finished_length_;
  if (reason == "abort") ++finished_abort_;
  if (reason == "error") ++finished_error_;
}

namespace {

// The per-pipeline families, from what each replica reported at scrape time.
void RenderPipelines(ExpositionWriter& w, const std::string& model_name,
                     const std::vector<ReplicaGauges>& replicas) {
  // One sample per pipeline and per key of a map the gauges carry (a status code, a link kind).
  auto per_pipeline_by = [&](const std::string& name, const std::string& help,
                             const std::string& type, const std::string& label, auto map) {
    w.Family(name, help, type);
    for (const ReplicaGauges& r : replicas) {
      for (const auto& [key, n] : map(r)) {
        w.Sample(
            name,
            {{"model_name", model_name}, {"pipeline", std::to_string(r.pipeline)}, {label, key}},
            static_cast<double>(n));
      }
    }
  };
  auto per_pipeline = [&](const std::string& name, const std::string& help, const std::string& type,
                          auto value) {
    w.Family(name, help, type);
    for (const ReplicaGauges& r : replicas) {
      w.Sample(name, {{"model_name", model_name}, {"pipeline", std::to_string(r.pipeline)}},
               static_cast<double>(value(r)));
    }
  };
  per_pipeline("shardserve_num_requests_running", "Requests scheduled on a pipeline.", "gauge",
               [](const ReplicaGauges& r) { return r.running; });
  per_pipeline("shardserve_num_requests_waiting", "Requests queued for admission.", "gauge",
               [](const ReplicaGauges& r) { return r.waiting; });
  per_pipeline("shardserve_kv_cache_blocks_used", "KV cache blocks held by sequences.", "gauge",
               [](const ReplicaGauges& r) { return r.kv_blocks_used; });
  per_pipeline("shardserve_kv_cache_blocks_capacity", "KV cache blocks of the pipeline.", "gauge",
               [](const ReplicaGauges& r) { return r.kv_blocks_total; });
  per_pipeline("shardserve_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0..1).",
               "gauge", [](const ReplicaGauges& r) {
                 return r.kv_blocks_total == 0
                            ? 0.0
                            : static_cast<double>(r.kv_blocks_used) / r.kv_blocks_total;
               });
  per_pipeline("shardserve_kv_cache_blocks_cached",
               "KV cache blocks holding a cached prefix (in use or evictable).", "gauge",
               [](const ReplicaGauges& r) { return r.kv_blocks_cached; });
  per_pipeline("shardserve_prefix_cache_queries_total",
               "Tokens looked up in the prefix cache at admission.", "counter",
               [](const ReplicaGauges& r) { return r.prefix_query_tokens; });
  per_pipeline("shardserve_prefix_cache_hits_total",
               "Tokens found in the prefix cache at admission (not computed again).", "counter",
               [](const ReplicaGauges& r) { return r.prefix_hit_tokens; });
  per_pipeline("shardserve_num_preemptions_total",
               "Sequences preempted for KV blocks (recomputed later).", "counter",
               [](const ReplicaGauges& r) { return r.preemptions; });
  per_pipeline("shardserve_pipeline_ready", "1 while the pipeline takes requests.", "gauge",
               [](const ReplicaGauges& r) { return r.ready ? 1 : 0; });
  per_pipeline_by("shardserve_pipeline_links",
                  "Hops between adjacent stages by the link the router chose (grpc, nccl, "
                  "device_local).",
                  "gauge", "link", [](const ReplicaGauges& r) { return r.links; });
  per_pipeline("shardserve_failovers_total",
               "Pipeline failures that moved its sequences off the pipeline.", "counter",
               [](const ReplicaGauges& r) { return r.failovers; });
  per_pipeline_by("shardserve_pipeline_failures_total",
                  "Pipeline failures by the gRPC status code the failing stage reported.",
                  "counter", "code", [](const ReplicaGauges& r) { return r.failures_by_code; });
  per_pipeline("shardserve_sequences_resumed_total",
               "Sequences this pipeline took over from a failed one (re-prefilled from the "
               "token log).",
               "counter", [](const ReplicaGauges& r) { return r.resumed; });
  per_pipeline("shardserve_sequences_parked",
               "Sequences of a failed pipeline waiting for a new one.", "gauge",
               [](const ReplicaGauges& r) { return r.parked; });
}

}  // namespace

std::string RouterMetrics::Render(const std::string& model_name,
                                  const std::vector<ReplicaGauges>& replicas) const {
  ExpositionWriter w;
  RenderPipelines(w, model_name, replicas);
  // Every sample carries the served model's name, as vLLM's do: dashboards filter on it.
  const MetricLabels model = {{"model_name", model_name}};
  auto with_model = [&](const std::string& key, const std::string& value) {
    return MetricLabels{{"model_name", model_name}, {key, value}};
  };

  w.Family("shardserve_time_to_first_token_seconds", "Time to first token.", "histogram");
  w.HistogramSamples("shardserve_time_to_first_token_seconds", model, ttft_.Read());
  w.Family("shardserve_inter_token_latency_seconds",
           "Time between output tokens (vLLM's time_per_output_token).", "histogram");
  w.HistogramSamples("shardserve_inter_token_latency_seconds", model, itl_.Read());
  w.Family("shardserve_e2e_request_latency_seconds", "Request latency, arrival to last token.",
           "histogram");
  w.HistogramSamples("shardserve_e2e_request_latency_seconds", model, e2e_.Read());

  w.Family("shardserve_prompt_tokens_total", "Prompt tokens of admitted requests.", "counter");
  w.Sample("shardserve_prompt_tokens_total", model, prompt_tokens_.load());
  w.Family("shardserve_generation_tokens_total", "Generated tokens.", "counter");
  w.Sample("shardserve_generation_tokens_total", model, generation_tokens_.load());
  w.Family("shardserve_request_success_total",
           "Finished requests by finish reason (stop, length, abort, error).", "counter");
  w.Sample("shardserve_request_success_total", with_model("finished_reason", "stop"),
           finished_stop_.load());
  w.Sample("shardserve_request_success_total", with_model("finished_reason", "length"),
           finished_length_.load());
  w.Sample("shardserve_request_success_total", with_model("finished_reason", "abort"),
           finished_abort_.load());
  w.Sample("shardserve_request_success_total", with_model("finished_reason", "error"),
           finished_error_.load());
  return w.Take();
}

}  // namespace shardserve
