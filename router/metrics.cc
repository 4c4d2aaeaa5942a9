#include "router/metrics.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/listen.h"

namespace shardserve {
namespace {

// Latency buckets (seconds) as vLLM uses them for TTFT; inter-token and step times use finer
// ones at the low end.
const std::vector<double> kFirstTokenBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
const std::vector<double> kTokenBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.075,  0.1,   0.15,   0.2,   0.3,  0.4,   0.5,
                                           0.75,   1.0,   2.5,    5.0,   10.0, 20.0};
const std::vector<double> kRequestBuckets = {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,
                                             5.0,  10.0, 15.0, 20.0, 30.0, 40.0,  50.0,
                                             60.0, 120., 240., 480., 960., 1920., 7680.};

std::string FormatValue(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string LabelText(const MetricLabels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, labels[i].first, "=\"", EscapeLabel(labels[i].second), "\"");
  }
  return out + "}";
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  absl::MutexLock lock(&mu_);
  ++counts_[i];
  sum_ += value;
  ++count_;
}

Histogram::Snapshot Histogram::Read() const {
  absl::MutexLock lock(&mu_);
  return {bounds_, counts_, sum_, count_};
}

void ExpositionWriter::Family(const std::string& name, const std::string& help,
                              const std::string& type) {
  // In text format 0.0.4 a counter's HELP/TYPE lines carry its full name, _total included.
  const std::string& family = name;
  absl::StrAppend(&out_, "# HELP ", family, " ", help, "\n# TYPE ", family, " ", type, "\n");
}

void ExpositionWriter::Sample(const std::string& name, const MetricLabels& labels, double value) {
  absl::StrAppend(&out_, name, LabelText(labels), " ", FormatValue(value), "\n");
}

void ExpositionWriter::HistogramSamples(const std::string& name, const MetricLabels& labels,
                                        const Histogram::Snapshot& h) {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    MetricLabels l = labels;
    l.emplace_back("le", i < h.upper_bounds.size() ? FormatValue(h.upper_bounds[i]) : "+Inf");
    Sample(name + "_bucket", l, static_cast<double>(cumulative));
  }
  Sample(name + "_sum", labels, h.sum);
  Sample(name + "_count", labels, static_cast<double>(h.count));
}

RouterMetrics::RouterMetrics()
    : ttft_(kFirstTokenBuckets), itl_(kTokenBuckets), e2e_(kRequestBuckets) {}

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
      trace.seen_token = true;
      // Tokens that came with the first one arrived with it: one observation each, so the count
      // is always generated tokens - 1 per request, however the stream was batched.
      for (int i = 1; i < tokens; ++i) itl_.Observe(0.0);
    } else {
      // Tokens that arrive together share the gap since the previous output.
      const double gap = absl::ToDoubleSeconds(now - trace.last_token) / tokens;
      for (int i = 0; i < tokens; ++i) itl_.Observe(gap);
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

std::string RouterMetrics::Render(const std::vector<ReplicaGauges>& replicas) const {
  ExpositionWriter w;
  auto per_pipeline = [&](const std::string& name, const std::string& help, const std::string& type,
                          auto value) {
    w.Family(name, help, type);
    for (const ReplicaGauges& r : replicas) {
      w.Sample(name, {{"pipeline", std::to_string(r.pipeline)}}, static_cast<double>(value(r)));
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
  per_pipeline("shardserve_failovers_total",
               "Pipeline failures that moved its sequences off the pipeline.", "counter",
               [](const ReplicaGauges& r) { return r.failovers; });
  per_pipeline("shardserve_sequences_resumed_total",
               "Sequences this pipeline took over from a failed one (re-prefilled from the "
               "token log).",
               "counter", [](const ReplicaGauges& r) { return r.resumed; });
  per_pipeline("shardserve_sequences_parked",
               "Sequences of a failed pipeline waiting for a new one.", "gauge",
               [](const ReplicaGauges& r) { return r.parked; });

  w.Family("shardserve_time_to_first_token_seconds", "Time to first token.", "histogram");
  w.HistogramSamples("shardserve_time_to_first_token_seconds", {}, ttft_.Read());
  w.Family("shardserve_inter_token_latency_seconds",
           "Time between output tokens (vLLM's time_per_output_token).", "histogram");
  w.HistogramSamples("shardserve_inter_token_latency_seconds", {}, itl_.Read());
  w.Family("shardserve_e2e_request_latency_seconds", "Request latency, arrival to last token.",
           "histogram");
  w.HistogramSamples("shardserve_e2e_request_latency_seconds", {}, e2e_.Read());

  w.Family("shardserve_prompt_tokens_total", "Prompt tokens of admitted requests.", "counter");
  w.Sample("shardserve_prompt_tokens_total", {}, prompt_tokens_.load());
  w.Family("shardserve_generation_tokens_total", "Generated tokens.", "counter");
  w.Sample("shardserve_generation_tokens_total", {}, generation_tokens_.load());
  w.Family("shardserve_request_success_total",
           "Finished requests by finish reason (stop, length, abort, error).", "counter");
  w.Sample("shardserve_request_success_total", {{"finished_reason", "stop"}},
           finished_stop_.load());
  w.Sample("shardserve_request_success_total", {{"finished_reason", "length"}},
           finished_length_.load());
  w.Sample("shardserve_request_success_total", {{"finished_reason", "abort"}},
           finished_abort_.load());
  w.Sample("shardserve_request_success_total", {{"finished_reason", "error"}},
           finished_error_.load());
  return w.Take();
}

StageMetrics& StageMetrics::Global() {
  static StageMetrics* metrics = new StageMetrics();
  return *metrics;
}

StageMetrics::StageMetrics() : step_(kTokenBuckets) {}

void StageMetrics::ObserveStep(absl::Duration duration) {
  step_.Observe(absl::ToDoubleSeconds(duration));
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
  }
  const MetricLabels stage = {
      {"layers", absl::StrCat(stats.layer_begin(), "-", stats.layer_end())}};
  w.Family("shardserve_stage_loaded", "1 while a shard is loaded.", "gauge");
  w.Sample("shardserve_stage_loaded", {}, stats.loaded() ? 1 : 0);
  w.Family("shardserve_stage_step_duration_seconds", "Time to run one step plan on this stage.",
           "histogram");
  w.HistogramSamples("shardserve_stage_step_duration_seconds", stage, step_.Read());
  w.Family("shardserve_stage_steps_total", "Step plans run by the loaded shard.", "counter");
  w.Sample("shardserve_stage_steps_total", stage, stats.steps());
  w.Family("shardserve_stage_tokens_total", "Tokens run through the loaded shard.", "counter");
  w.Sample("shardserve_stage_tokens_total", stage, stats.tokens());
  w.Family("shardserve_kv_cache_blocks_used", "KV cache blocks held on this stage.", "gauge");
  w.Sample("shardserve_kv_cache_blocks_used", stage, stats.kv_blocks_used());
  w.Family("shardserve_kv_cache_blocks_capacity", "KV cache blocks on this stage.", "gauge");
  w.Sample("shardserve_kv_cache_blocks_capacity", stage, stats.kv_blocks_total());
  w.Family("shardserve_activation_bytes_total", "Activation bytes over each link.", "counter");
  for (const v1::LinkStats& l : stats.links()) {
    w.Sample("shardserve_activation_bytes_total",
             {{"direction", l.direction()}, {"peer", l.peer()}}, l.bytes());
  }
  w.Family("shardserve_activation_messages_total", "Activation messages over each link.",
           "counter");
  for (const v1::LinkStats& l : stats.links()) {
    w.Sample("shardserve_activation_messages_total",
             {{"direction", l.direction()}, {"peer", l.peer()}}, l.messages());
  }
  return w.Take();
}

struct MetricsServer::Impl {
  httplib::Server server;
  std::thread thread;
};

MetricsServer::MetricsServer() = default;
MetricsServer::~MetricsServer() { Stop(); }

absl::Status MetricsServer::Start(const std::string& address, std::function<std::string()> render) {
  auto hp = SplitHostPort(address, "--metrics-listen");
  if (!hp.ok()) return hp.status();
  impl_ = std::make_unique<Impl>();
  impl_->server.set_socket_options(ExclusiveSocketOptions);
  impl_->server.Get("/metrics", [render](const httplib::Request&, httplib::Response& res) {
    res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (hp->second == 0) {
    port_ = impl_->server.bind_to_any_port(hp->first);
  } else {
    port_ = impl_->server.bind_to_port(hp->first, hp->second) ? hp->second : -1;
  }
  if (port_ <= 0) return CannotListen("--metrics-listen", address);
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return absl::OkStatus();
}

void MetricsServer::Stop() {
  if (impl_ == nullptr) return;
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_.reset();
}

}  // namespace shardserve
