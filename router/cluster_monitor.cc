#include "router/cluster_monitor.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/grpc_util.h"
#include "common/layers.h"
#include "router/inference_service.h"
#include "router/metrics.h"
#include "router/pipeline.h"
#include "router/replica.h"
#include "router/worker_registry.h"

namespace shardserve {
namespace {

constexpr size_t kMaxEvents = 50;
constexpr size_t kHistorySamples = 600;  // 10 minutes, once a second
constexpr absl::Duration kRateWindow = absl::Seconds(10);
constexpr absl::Duration kWorkerDeadline = absl::Milliseconds(500);

std::string DeviceKindName(v1::DeviceKind kind) {
  switch (kind) {
    case v1::DEVICE_KIND_CPU:
      return "cpu";
    case v1::DEVICE_KIND_CUDA:
      return "cuda";
    case v1::DEVICE_KIND_SIM:
      return "sim";
    default:
      return "unknown";
  }
}

int32_t Clamp32(int64_t v) {
  return static_cast<int32_t>(std::clamp<int64_t>(v, 0, int64_t{1} << 30));
}

}  // namespace

ClusterMonitor::ClusterMonitor(InferenceServiceImpl* service, const RouterMetrics* metrics,
                               WorkerRegistry* registry, std::string owner, absl::Duration interval)
    : service_(service),
      metrics_(metrics),
      registry_(registry),
      owner_(std::move(owner)),
      interval_(interval) {}

ClusterMonitor::~ClusterMonitor() { Stop(); }

void ClusterMonitor::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void ClusterMonitor::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ClusterMonitor::Loop() {
  while (true) {
    Poll();
    absl::MutexLock lock(&stop_mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(stop_mu_) { return stop_; };
    if (stop_mu_.AwaitWithTimeout(absl::Condition(&stopping), interval_)) return;
  }
}

v1::WorkerService::Stub* ClusterMonitor::Stub(const std::string& address) {
  auto& stub = stubs_[address];
  if (stub == nullptr) stub = NewWorkerStub(address);
  return stub.get();
}

void ClusterMonitor::FillStage(const std::string& address, absl::Time now, v1::StageStatus* stage) {
  stage->set_address(address);
  v1::WorkerService::Stub* stub = Stub(address);
  if (!described_.count(address)) {
    grpc::ClientContext context;
    AttachClusterCredential(&context);
    // Each call its own deadline: a worker that does not answer costs only its own.
    context.set_deadline(absl::ToChronoTime(absl::Now() + kWorkerDeadline));
    v1::DescribeResponse d;
    if (stub->Describe(&context, v1::DescribeRequest(), &d).ok()) {
      described_[address] = {DeviceKindName(d.device()), d.device_name()};
    }
  }
  if (auto it = described_.find(address); it != described_.end()) {
    stage->set_backend(it->second.backend);
    stage->set_device(it->second.device);
  }
  grpc::ClientContext context;
  AttachClusterCredential(&context);
  // Each call its own deadline: a worker that does not answer costs only its own.
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWorkerDeadline));
  v1::StatsRequest request;
  request.set_owner(owner_);
  v1::StatsResponse s;
  const grpc::Status status = stub->Stats(&context, request, &s);
  if (!status.ok()) {
    stage->set_healthy(false);
    stage->set_health(absl::StrCat("unreachable: ", status.error_message()));
    samples_.erase(address);
    described_.erase(address);  // a worker that comes back may be another one
    return;
  }
  stage->set_lease_owner(s.leased_by_caller() ? "this router"
                         : s.leased()         ? "another router"
                                              : "none");
  if (!s.device_error().empty()) {
    stage->set_healthy(false);
    stage->set_health(absl::StrCat("device failed: ", s.device_error()));
    return;
  }
  if (!s.loaded()) {
    stage->set_healthy(false);
    stage->set_health("no shard");
    return;
  }
  stage->set_healthy(!s.draining());
  stage->set_health(s.draining() ? "draining" : "serving");
  stage->set_step_seconds_p50(s.step_seconds_p50());
  stage->set_step_seconds_p99(s.step_seconds_p99());
  stage->set_kv_blocks_used(Clamp32(s.kv_blocks_used()));
  stage->set_kv_blocks_total(Clamp32(s.kv_blocks_total()));
  WorkerSample sample{now, s.busy_seconds(), s.tokens(), {}};
  for (const v1::LinkStats& l : s.links()) {
    sample.link_bytes[absl::StrCat(l.direction(), "\t", l.peer())] = l.bytes();
  }
  auto previous = samples_.find(address);
  if (previous != samples_.end()) {
    const WorkerSample& p = previous->second;
    const double dt = absl::ToDoubleSeconds(now - p.at);
    // Counters restart when a shard is reloaded: a drop is a new start, not a negative rate.
    if (dt > 0 && sample.busy_seconds >= p.busy_seconds && sample.tokens >= p.tokens) {
      stage->set_busy_fraction(std::min(1.0, (sample.busy_seconds - p.busy_seconds) / dt));
      stage->set_tokens_per_second(static_cast<double>(sample.tokens - p.tokens) / dt);
      for (const auto& [key, bytes] : sample.link_bytes) {
        auto before = p.link_bytes.find(key);
        const size_t tab = key.find('\t');
        v1::LinkRate* link = stage->add_links();
        link->set_direction(key.substr(0, tab));
        link->set_peer(key.substr(tab + 1));
        if (before != p.link_bytes.end() && bytes >= before->second) {
          link->set_bytes_per_second(static_cast<double>(bytes - before->second) / dt);
        }
      }
    }
  }
  samples_[address] = std::move(sample);
}

void ClusterMonitor::AddEvent(absl::Time now, const std::string& kind, int pipeline, int stage,
                              const std::string& message) {
  v1::ClusterEvent e;
  e.set_time_unix(absl::ToDoubleSeconds(now - absl::UnixEpoch()));
  e.set_kind(kind);
  e.set_pipeline(pipeline);
  e.set_stage(stage);
  e.set_message(message);
  events_.push_back(std::move(e));
  while (events_.size() > kMaxEvents) events_.pop_front();
}

void ClusterMonitor::Diff(absl::Time now, const v1::GetClusterStatusResponse& current) {
  std::map<int, const v1::PipelineStatus*> before;
  for (const v1::PipelineStatus& p : previous_.pipelines()) before[p.index()] = &p;
  for (const v1::PipelineStatus& p : current.pipelines()) {
    const int pi = p.index();
    auto it = before.find(pi);
    const v1::PipelineStatus* was = it == before.end() ? nullptr : it->second;
    if (p.ready() && (was == nullptr || !was->ready())) {
      AddEvent(now, "pipeline_ready", pi, -1,
               absl::StrCat("pipeline ", pi, " takes requests (", p.stages_size(), " stages)"));
    }
    if (!p.ready() && was != nullptr && was->ready()) {
      AddEvent(now, "pipeline_failed", pi, -1,
               absl::StrCat("pipeline ", pi, " stopped taking requests: ", p.last_error()));
    }
    if (was != nullptr && p.failovers() > was->failovers()) {
      AddEvent(now, "failover", pi, -1,
               absl::StrCat("pipeline ", pi, " failed over (", p.failovers() - was->failovers(),
                            " time", p.failovers() - was->failovers() == 1 ? "" : "s",
                            "); its sequences moved to other pipelines or wait for it: ",
                            p.last_failover()));
    }
    if (was != nullptr && p.preemptions() > was->preemptions()) {
      AddEvent(now, "preemption", pi, -1,
               absl::StrCat(p.preemptions() - was->preemptions(),
                            " sequences preempted for KV blocks on pipeline ", pi,
                            " (recomputed later)"));
    }
    for (const v1::StageStatus& s : p.stages()) {
      const v1::StageStatus* old = nullptr;
      if (was != nullptr && s.index() < was->stages_size()) old = &was->stages(s.index());
      const std::string where = absl::StrCat("pipeline ", pi, " stage ", s.index(), " (layers ",
                                             s.layers(), ", ", s.address(), ")");
      if (old == nullptr) continue;
      if (old->address() != s.address()) {
        AddEvent(now, "worker_replaced", pi, s.index(),
                 absl::StrCat(where, " replaces ", old->address()));
        continue;
      }
      const ServedKey key{pi, s.index(), s.address()};
      if (old->healthy() && !s.healthy()) {
        const bool draining = s.health() == "draining";
        AddEvent(now, draining ? "worker_draining" : "worker_lost", pi, s.index(),
                 absl::StrCat(where, ": ", s.health()));
      } else if (!old->healthy() && s.healthy() && served_.count(key)) {
        // Not a stage loading its shard for the first time: one that served before.
        AddEvent(now, "worker_back", pi, s.index(), absl::StrCat(where, " is serving again"));
      }
      if (s.healthy()) served_.insert(key);
    }
  }
  const std::set<std::string> spares_before(previous_.spare_workers().begin(),
                                            previous_.spare_workers().end());
  const std::set<std::string> spares_now(current.spare_workers().begin(),
                                         current.spare_workers().end());
  for (const std::string& a : spares_now) {
    if (!spares_before.count(a)) AddEvent(now, "spare_joined", -1, -1, a + " is a spare");
  }
  for (const std::string& a : spares_before) {
    if (!spares_now.count(a)) AddEvent(now, "spare_left", -1, -1, a + " is no longer a spare");
  }
}

void ClusterMonitor::Poll() {
  absl::MutexLock poll(&poll_mu_);
  const absl::Time now = absl::Now();
  v1::GetClusterStatusResponse status;
  status.set_model(service_->model_name());
  status.set_sampled_at_unix(absl::ToDoubleSeconds(now - absl::UnixEpoch()));
  status.set_uptime_seconds(absl::ToDoubleSeconds(now - started_));
  int64_t running = 0, waiting = 0;
  for (Replica* r : service_->replicas()) {
    const ReplicaGauges g = r->Gauges();
    v1::PipelineStatus* p = status.add_pipelines();
    p->set_index(r->index());
    p->set_ready(r->ready());
    if (!r->ready()) p->set_last_error(r->last_error());
    p->set_last_failover(r->last_failover());
    p->set_running(Clamp32(g.running));
    p->set_waiting(Clamp32(g.waiting));
    p->set_kv_blocks_used(Clamp32(g.kv_blocks_used));
    p->set_kv_blocks_total(Clamp32(g.kv_blocks_total));
    p->set_failovers(Clamp32(static_cast<int64_t>(g.failovers)));
    p->set_preemptions(Clamp32(static_cast<int64_t>(g.preemptions)));
    running += g.running;
    waiting += g.waiting;
    int bottleneck = -1;
    double busiest = 0;
    const std::vector<StageEndpoint> stages = r->stages();
    for (size_t i = 0; i < stages.size(); ++i) {
      v1::StageStatus* s = p->add_stages();
      s->set_index(static_cast<int32_t>(i));
      s->set_layers(LayerRangeText(stages[i].layers.begin, stages[i].layers.end));
      FillStage(stages[i].address, now, s);
      if (s->busy_fraction() > busiest) {
        busiest = s->busy_fraction();
        bottleneck = static_cast<int>(i);
      }
    }
    p->set_bottleneck_stage(bottleneck);
  }
  if (registry_ != nullptr) {
    for (const std::string& a : registry_->Spares()) status.add_spare_workers(a);
  }
  // Workers no pipeline uses any more (replaced, or gone from DNS) leave no state behind.
  std::set<std::string> in_use;
  for (const v1::PipelineStatus& p : status.pipelines()) {
    for (const v1::StageStatus& s : p.stages()) in_use.insert(s.address());
  }
  auto unused = [&](const auto& entry) { return !in_use.count(entry.first); };
  std::erase_if(stubs_, unused);
  std::erase_if(described_, unused);
  std::erase_if(samples_, unused);
  std::erase_if(served_, [&](const ServedKey& k) { return !in_use.count(std::get<2>(k)); });

  // Router-wide load: rates over the last 10 s, latency over the last minute.
  totals_.push_back({now, metrics_->generation_tokens(), metrics_->finished_requests()});
  while (totals_.size() > 2 && now - totals_.front().at > kRateWindow) totals_.pop_front();
  v1::ClusterLoad* load = status.mutable_load();
  load->set_running(Clamp32(running));
  load->set_waiting(Clamp32(waiting));
  if (totals_.size() >= 2) {
    const double dt = absl::ToDoubleSeconds(totals_.back().at - totals_.front().at);
    if (dt > 0) {
      load->set_tokens_per_second(
          static_cast<double>(totals_.back().tokens - totals_.front().tokens) / dt);
      load->set_requests_per_second(
          static_cast<double>(totals_.back().finished - totals_.front().finished) / dt);
    }
  }
  const RouterMetrics::RecentLatency latency = metrics_->Recent();
  load->set_ttft_p50_seconds(latency.ttft_p50);
  load->set_ttft_p99_seconds(latency.ttft_p99);
  load->set_itl_p50_seconds(latency.itl_p50);
  load->set_itl_p99_seconds(latency.itl_p99);

  if (!first_poll_) Diff(now, status);
  first_poll_ = false;
  previous_ = status;
  for (const v1::ClusterEvent& e : events_) *status.add_events() = e;

  v1::ClusterSample sample;
  sample.set_time_unix(status.sampled_at_unix());
  sample.set_tokens_per_second(load->tokens_per_second());
  sample.set_requests_per_second(load->requests_per_second());
  sample.set_ttft_p50_seconds(load->ttft_p50_seconds());
  sample.set_itl_p50_seconds(load->itl_p50_seconds());
  sample.set_running(load->running());
  sample.set_waiting(load->waiting());
  absl::MutexLock lock(&mu_);
  last_ = std::move(status);
  history_.push_back(std::move(sample));
  while (history_.size() > kHistorySamples) history_.pop_front();
}

v1::GetClusterStatusResponse ClusterMonitor::Status(bool history) const {
  absl::MutexLock lock(&mu_);
  v1::GetClusterStatusResponse out = last_;
  if (history) {
    for (const v1::ClusterSample& s : history_) *out.add_history() = s;
  }
  return out;
}

}  // namespace shardserve
