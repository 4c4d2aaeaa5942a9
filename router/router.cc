#include "router/router.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <future>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/cluster_auth.h"
#include "common/grpc_util.h"
#include "common/layers.h"
#include "common/listen.h"
#include "common/logging.h"
#include "common/status.h"
#include "router/discovery.h"
#include "router/routing.h"

namespace shardserve {

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterConfig config) {
  RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Router> r(new Router(std::move(config)));
  const RouterConfig& c = r->config_;
  // Public clients need no certificate: the router's server only verifies one when presented.
  ASSIGN_OR_RETURN(ProcessCredentials credentials,
                   SetUpProcessCredentials(c.tls, c.cluster_auth, /*require_client_cert=*/false,
                                           "shardserve-router"));
  r->server_credentials_ = credentials.server;
  r->cluster_.emplace(std::move(credentials.cluster));
  ASSIGN_OR_RETURN(r->model_config_, ModelConfig::FromFile(c.model + "/config.json"));
  ASSIGN_OR_RETURN(r->tokenizer_, Tokenizer::Load(c.model));
  RETURN_IF_ERROR(r->FindWorkers());
  RETURN_IF_ERROR(r->PlanLayout());
  RETURN_IF_ERROR(r->ChooseTemplates());
  r->BuildReplicas();
  return r;
}

Router::~Router() {
  stopping_ = true;
  for (std::thread* t : {&health_thread_, &scaler_, &discovery_}) {
    if (t->joinable()) t->join();
  }
}

// The --workers list, or the addresses a dns:/// name resolves to once there are enough for
// every pipeline (pods behind a headless Service appear in DNS as they become ready).
absl::Status Router::FindWorkers() {
  const RouterConfig& c = config_;
  if (!IsDnsWorkers(c.workers)) {
    ASSIGN_OR_RETURN(workers_, ResolveWorkers(c.workers));
    return absl::OkStatus();
  }
  if (c.stages == 0 && c.layers.empty()) {
    return absl::InvalidArgumentError(
        "--workers dns:///...: give --stages (or --layers); the number of workers behind the "
        "name changes");
  }
  const int want_stages =
      c.stages != 0 ? c.stages
                    : 1 + static_cast<int>(std::count(c.layers.begin(), c.layers.end(), ','));
  const int want = want_stages * c.replicas;
  const absl::Time give_up = absl::Now() + absl::Seconds(c.discovery_timeout_s);
  std::string last;
  while (true) {
    auto found = ResolveWorkers(c.workers);
    if (found.ok() && static_cast<int>(found->size()) >= want) {
      workers_ = *found;
      return absl::OkStatus();
    }
    const std::string now = found.ok()
                                ? absl::StrCat(found->size(), " of ", want, " workers resolved")
                                : std::string(found.status().message());
    if (now != last) LOG(INFO) << c.workers << ": " << now << "; waiting";
    last = now;
    if (absl::Now() > give_up) {
      return absl::UnavailableError(absl::StrCat(
          c.workers, ": ", now, " after ", c.discovery_timeout_s, " s (--discovery-timeout-s)"));
    }
    absl::SleepFor(absl::Seconds(1));
  }
}

// The Describe of every worker the pipelines start with (not the spares), asked in parallel.
std::vector<absl::StatusOr<v1::DescribeResponse>> Router::DescribePipelineWorkers() const {
  const int n = std::min<int>(static_cast<int>(workers_.size()), config_.stages * config_.replicas);
  std::vector<std::future<absl::StatusOr<v1::DescribeResponse>>> pending;
  for (int i = 0; i < n; ++i) {
    pending.push_back(
        std::async(std::launch::async, [this, i]() -> absl::StatusOr<v1::DescribeResponse> {
          const std::string& worker = workers_[i];
          auto stub = v1::WorkerService::NewStub(NewClusterChannel(worker));
          grpc::ClientContext context;
          AttachClusterCredential(&context);
          context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
          v1::DescribeResponse info;
          grpc::Status s = stub->Describe(&context, v1::DescribeRequest(), &info);
          if (!s.ok()) return absl::UnavailableError(absl::StrCat(worker, ": ", s.error_message()));
          return info;
        }));
  }
  std::vector<absl::StatusOr<v1::DescribeResponse>> described;
  for (auto& p : pending) described.push_back(p.get());
  return described;
}

// The cost model `worker` reports in its Describe.
absl::StatusOr<DeviceProfile> Router::CostOf(const std::string& worker,
                                             const v1::DescribeResponse& info) {
  const v1::DeviceCost& c = info.cost();
  if (!(c.memory_bandwidth() > 0 && c.flops() > 0 && c.link_bandwidth() > 0)) {
    return absl::NotFoundError(absl::StrCat(worker, " reports no cost model"));
  }
  DeviceProfile p;
  p.name = c.name();
  p.memory_bytes = c.memory_bytes();
  p.memory_bandwidth = c.memory_bandwidth();
  p.flops = c.flops();
  p.step_overhead_s = c.step_overhead_seconds();
  p.token_overhead_s = c.token_overhead_seconds();
  p.sample_s_per_logit = c.sample_seconds_per_logit();
  p.serial_fraction = c.serial_fraction();
  p.kv_bandwidth = c.kv_bandwidth();
  p.pair_overhead_s = c.pair_overhead_seconds();
  p.link_bandwidth = c.link_bandwidth();
  p.link_latency_s = c.link_latency_seconds();
  p.weight_bytes_per_param = c.weight_bytes_per_param();
  p.kv_bytes_per_value = c.kv_bytes_per_value();
  p.activation_bytes_per_value = c.activation_bytes_per_value();
  return p;
}

// With --kv-blocks 0: the KV blocks every pipeline worker's device holds after its stage's
// weights, from its Describe. A simulated device's memory caps the default (as on a real
// accelerator); a GPU's free memory under its --gpu-memory-fraction, less the stage's
// workspace, is what the pool gets (vLLM's gpu_memory_utilization). CPU workers keep the
// default. INVALID_ARGUMENT naming the worker when a device cannot hold one full context.
absl::Status Router::SizeKvForDevices(
    const std::vector<absl::StatusOr<v1::DescribeResponse>>& described,
    int64_t blocks_per_context) {
  RouterConfig& c = config_;
  std::vector<KvDevice> devices;
  bool gpu = false;
  for (size_t i = 0; i < described.size(); ++i) {
    const absl::StatusOr<v1::DescribeResponse>& d = described[i];
    // An unreachable worker is reported when its pipeline connects.
    if (!d.ok()) continue;
    if (d->device() != v1::DEVICE_KIND_SIM && d->device() != v1::DEVICE_KIND_CUDA) continue;
    KvDevice k;
    k.stage = i % c.stages;
    k.worker = workers_[i];
    k.name = d->device_name();
    k.gpu = d->device() == v1::DEVICE_KIND_CUDA;
    k.gpu_id = absl::StrCat(d->host_id(), "/", d->device_uuid());
    k.free_bytes = static_cast<double>(d->free_memory_bytes());
    if (k.gpu) {
      // Weights are uploaded as stored; KV pages are F32.
      k.precision.weight_bytes_per_param = static_cast<double>(DTypeSize(model_config_.dtype));
      k.precision.kv_bytes_per_value = sizeof(float);
    } else {
      k.precision.weight_bytes_per_param = d->cost().weight_bytes_per_param();
      k.precision.kv_bytes_per_value = d->cost().kv_bytes_per_value();
    }
    gpu = gpu || k.gpu;
    devices.push_back(std::move(k));
  }
  if (devices.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const int64_t blocks,
                   KvBlocksForDevices(model_config_, ranges_, devices, c.kv_blocks,
                                      {.block_size = c.kv_block_size,
                                       .blocks_per_context = blocks_per_context,
                                       .max_step_tokens = c.max_batch_tokens,
                                       .max_seqs = c.max_seqs}));
  LOG(INFO) << "KV blocks per pipeline: " << blocks << " (" << blocks * c.kv_block_size
            << " tokens), sized by the " << (gpu ? "GPUs'" : "simulated devices'") << " memory";
  c.kv_blocks = blocks;
  return absl::OkStatus();
}

// Stages per pipeline, their layer ranges and the KV blocks per pipeline.
absl::Status Router::PlanLayout() {
  RouterConfig& c = config_;
  if (!c.layers.empty()) {
    ASSIGN_OR_RETURN(ranges_, ParseLayerRanges(c.layers, model_config_.num_layers));
    if (c.stages != 0 && c.stages != static_cast<int>(ranges_.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("--layers names ", ranges_.size(), " stages but --stages is ", c.stages));
    }
    c.stages = static_cast<int>(ranges_.size());
  }
  if (c.stages == 0) c.stages = std::max<int>(1, workers_.size() / c.replicas);
  // More workers than the pipelines need are spares (with --stages given).
  if (static_cast<int>(workers_.size()) < c.stages * c.replicas) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers lists ", workers_.size(), " addresses; ", c.stages, " stages x ",
                     c.replicas, " replicas need ", c.stages * c.replicas));
  }
  // The workers' Describe serves placement and KV sizing; neither needs it when both are given.
  const std::vector<absl::StatusOr<v1::DescribeResponse>> described =
      ranges_.empty() || c.kv_blocks == 0 ? DescribePipelineWorkers()
                                          : std::vector<absl::StatusOr<v1::DescribeResponse>>();
  if (ranges_.empty()) {
    // Balance by the first worker's cost model (a simulated device's profile, or cpu-here) for a
    // decode micro-batch of the pipeline's share of --max-seqs; by bytes when it cannot say.
    const absl::StatusOr<DeviceProfile> cost =
        described[0].ok() ? CostOf(workers_[0], *described[0]) : described[0].status();
    if (cost.ok()) {
      const int64_t seqs = std::max<int64_t>(1, std::min<int64_t>(c.max_seqs, 64) / c.stages);
      const int64_t context = std::min<int64_t>(512, model_config_.max_position_embeddings);
      const PlacementWeights weights = CostWeights(model_config_, *cost, seqs, context);
      ASSIGN_OR_RETURN(ranges_, BalancedPlacement(model_config_, c.stages, {}, &weights));
      LOG(INFO) << "placement by the " << cost->name << " cost model: layers "
                << FormatLayerRanges(ranges_);
    } else {
      LOG(INFO) << "placement by weight bytes (" << cost.status().message() << ")";
      ASSIGN_OR_RETURN(ranges_, BalancedPlacement(model_config_, c.stages));
    }
  }
  const int64_t context = model_config_.max_position_embeddings;
  const int64_t blocks_per_context = (context + c.kv_block_size - 1) / c.kv_block_size;
  if (c.kv_blocks == 0) {
    c.kv_blocks = DefaultKvBlocks(model_config_, ranges_, c.kv_block_size, c.max_seqs);
    RETURN_IF_ERROR(SizeKvForDevices(described, blocks_per_context));
  }
  if (c.kv_blocks < blocks_per_context) {
    return absl::InvalidArgumentError(absl::StrCat("--kv-blocks ", c.kv_blocks,
                                                   " cannot hold one full context (",
                                                   blocks_per_context, " blocks)"));
  }
  return absl::OkStatus();
}

// The chat template (named, detected, or ChatML as a fallback) and the reasoning parser.
absl::Status Router::ChooseTemplates() {
  const Tokenizer& tok = *tokenizer_;
  auto t = config_.chat_template.empty()
               ? ChatTemplate::Detect(tok.chat_template(), tok.bos_token(), tok.eos_token())
               : ChatTemplate::FromName(config_.chat_template, tok.bos_token(), tok.eos_token());
  if (t.ok()) {
    chat_template_ = *t;
  } else if (!config_.chat_template.empty()) {
    return t.status();
  } else {
    auto fallback = ChatTemplate::FromName("chatml", tok.bos_token(), tok.eos_token());
    if (fallback.ok()) chat_template_ = *fallback;
    LOG(INFO) << "no chat template detected (" << t.status().message() << "); using chatml";
  }
  bool template_opens = false;
  if (chat_template_.has_value()) {
    auto probe = chat_template_->Render({{"user", "hi"}}, /*add_generation_prompt=*/true);
    template_opens = probe.ok() && PromptOpensReasoning(*probe);
  }
  const bool vocabulary_has_tags = tok.PieceToId("<think>") >= 0 && tok.PieceToId("</think>") >= 0;
  ASSIGN_OR_RETURN(reasoning_parser_, ResolveReasoningParser(config_.reasoning_parser,
                                                             template_opens, vocabulary_has_tags));
  LOG(INFO) << "reasoning parser: " << ReasoningParserName(reasoning_parser_);
  return absl::OkStatus();
}

void Router::BuildReplicas() {
  const RouterConfig& c = config_;
  ReplicaOptions& o = replica_options_;
  const std::filesystem::path path = std::filesystem::path(c.model).lexically_normal();
  model_name_ = c.served_model_name;
  if (model_name_.empty()) model_name_ = path.filename().string();
  if (model_name_.empty()) model_name_ = path.parent_path().filename().string();
  o.pipeline.model_path = std::filesystem::absolute(c.model).string();
  o.pipeline.model_name = model_name_;
  o.pipeline.num_layers = model_config_.num_layers;
  o.pipeline.kv_block_size = c.kv_block_size;
  o.pipeline.kv_num_blocks = static_cast<int32_t>(c.kv_blocks);
  o.pipeline.max_step_tokens = static_cast<int32_t>(c.max_batch_tokens);
  // This router's name in the workers' leases: routers sharing workers never double-book one.
  // A cluster member that knew it could act as this router, so it is 128 bits from the OS's
  // random source, not something one could work out (address, pid, start time).
  std::random_device entropy;
  o.pipeline.owner =
      absl::StrFormat("router-%08x%08x%08x%08x", entropy(), entropy(), entropy(), entropy());
  o.prefix_caching = !c.no_prefix_cache;
  o.step_timeout = absl::Seconds(c.step_timeout_s);
  o.failover_wait = absl::Seconds(c.failover_wait_s);
  o.canary_interval = absl::Seconds(c.canary_interval_s);
  o.registry = &registry_;
  o.scheduler.max_batch_tokens = c.max_batch_tokens;
  o.scheduler.max_seqs = c.max_seqs;
  o.scheduler.max_in_flight = c.stages;
  o.scheduler.vocab_size = model_config_.vocab_size;
  o.tokenizer = tokenizer_.get();
  // The --workers the pipelines start with are in use; the rest are spares, and workers that
  // announce themselves (shardserve-worker --router) join them.
  for (size_t i = 0; i < workers_.size(); ++i) {
    if (static_cast<int>(i) < c.stages * c.replicas) {
      registry_.Claim(workers_[i]);
    } else {
      registry_.AddListed(workers_[i]);
    }
  }
  std::vector<Replica*> pointers;
  for (int r = 0; r < c.replicas; ++r) {
    std::vector<StageEndpoint> endpoints;
    for (int s = 0; s < c.stages; ++s)
      endpoints.push_back({workers_[r * c.stages + s], ranges_[s]});
    replicas_.push_back(std::make_unique<Replica>(r, std::move(endpoints), o));
    pointers.push_back(replicas_.back().get());
  }
  service_ = std::make_unique<InferenceServiceImpl>(model_name_, model_config_, tokenizer_.get(),
                                                    chat_template_, pointers);
  service_->set_metrics(&metrics_);
  AdmissionLimits admission = c.admission;
  admission.api_key = c.api_key;
  service_->set_admission_limits(admission);
  service_->set_reasoning_parser(reasoning_parser_);
  service_->set_stream_interval(c.stream_interval);
  service_->set_routing(*ParseRoutingPolicy(c.routing));
  service_->set_registry(&registry_);
  monitor_ = std::make_unique<ClusterMonitor>(service_.get(), &metrics_, &registry_,
                                              replica_options_.pipeline.owner);
  service_->set_cluster_monitor(monitor_.get());
}

absl::Status Router::StartHttp() {
  if (config_.http_listen.empty()) return absl::OkStatus();
  HttpServerOptions options;
  options.api_key = config_.api_key;
  options.max_connections = config_.http_max_connections;
  // JSON may spell a byte as \uXXXX (6 bytes).
  options.max_body_bytes =
      std::min<int64_t>(int64_t{64} << 20, 6 * service_->max_prompt_bytes() + (1 << 20));
  http_ = std::make_unique<HttpServer>(service_.get(), tokenizer_.get(), &metrics_, options);
  RETURN_IF_ERROR(http_->Start(config_.http_listen));
  LOG(INFO) << "OpenAI-compatible HTTP and /metrics on " << config_.http_listen << " (port "
            << http_->port() << ")";
  return absl::OkStatus();
}

absl::Status Router::StartGrpc() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  ConfigureExclusivePort(&builder);
  ReportUnparsableRequests(&builder);
  builder.AddListeningPort(config_.listen, server_credentials_, &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_receive_message_bytes));
  builder.RegisterService(service_.get());
  kserve_ = std::make_unique<KServeService>(service_.get());
  builder.RegisterService(kserve_.get());
  registration_ = std::make_unique<RegistrationService>(&registry_, absl::Seconds(1), &*cluster_);
  builder.RegisterService(registration_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) return CannotListen("--listen", config_.listen);
  if (!config_.port_file.empty()) RETURN_IF_ERROR(WritePortFile(config_.port_file, port));
  health_ = server_->GetHealthCheckService();
  health_->SetServingStatus(false);
  LOG(INFO) << "shardserve-router on " << config_.listen << " (port " << port << "): model "
            << model_name_ << ", " << config_.replicas << " x " << config_.stages
            << " stages, layers " << FormatLayerRanges(ranges_) << ", " << config_.kv_blocks
            << " KV blocks per pipeline";
  return absl::OkStatus();
}

absl::Status Router::Serve() {
  RETURN_IF_ERROR(StartHttp());
  if (absl::Status s = StartGrpc(); !s.ok()) {
    if (http_ != nullptr) http_->Stop();
    return s;
  }
  for (auto& r : replicas_) r->Start();
  monitor_->Start();
  health_thread_ = std::thread([this] { HealthLoop(); });
  if (config_.max_replicas > config_.replicas) scaler_ = std::thread([this] { ScaleOutLoop(); });
  if (IsDnsWorkers(config_.workers)) discovery_ = std::thread([this] { DiscoveryLoop(); });
  return absl::OkStatus();
}

void Router::HealthLoop() {
  bool last = false;
  bool first = true;
  while (!stopping_) {
    const bool serving = service_->serving();
    if (serving != last || first) {
      health_->SetServingStatus(serving);
      LOG(INFO) << "health: " << (serving ? "SERVING" : "NOT_SERVING");
      last = serving;
      first = false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// A new replica from free spares, while under --max-replicas.
void Router::ScaleOutLoop() {
  const int stages = config_.stages;
  while (!stopping_) {
    for (int i = 0; i < 20 && !stopping_; ++i) absl::SleepFor(absl::Milliseconds(50));
    if (stopping_ || static_cast<int>(replicas_.size()) >= config_.max_replicas) continue;
    if (static_cast<int>(registry_.Spares().size()) < stages) continue;
    std::vector<StageEndpoint> endpoints;
    for (int st = 0; st < stages; ++st) {
      auto spare = registry_.ClaimSpare();
      if (!spare) break;
      endpoints.push_back({*spare, ranges_[st]});
    }
    if (static_cast<int>(endpoints.size()) < stages) {
      for (const StageEndpoint& e : endpoints) registry_.Release(e.address);
      continue;
    }
    const int index = static_cast<int>(replicas_.size());
    std::vector<std::string> addresses;
    for (const StageEndpoint& e : endpoints) addresses.push_back(e.address);
    LOG(INFO) << "spare workers " << absl::StrJoin(addresses, ",") << " make pipeline " << index;
    replicas_.push_back(std::make_unique<Replica>(index, std::move(endpoints), replica_options_));
    service_->AddReplica(replicas_.back().get());
    replicas_.back()->Start();
  }
}

// A DNS name is resolved again every 5 s: workers that appear join the pool as spares.
void Router::DiscoveryLoop() {
  while (!stopping_) {
    for (int i = 0; i < 100 && !stopping_; ++i) absl::SleepFor(absl::Milliseconds(50));
    auto found = ResolveWorkers(config_.workers);
    if (!found.ok()) continue;
    for (const std::string& w : *found) registry_.AddListed(w);
  }
}

void Router::DrainAndStop(const sigset_t& signals) {
  LOG(INFO) << "shardserve-router: draining " << service_->admitted()
            << " admitted requests (up to " << config_.drain_grace_s << " s)";
  service_->StartDraining();
  health_->SetServingStatus(false);
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(config_.drain_grace_s);
  const timespec poll = {0, 50 * 1000 * 1000};
  while (service_->admitted() > 0 && std::chrono::steady_clock::now() < give_up) {
    if (sigtimedwait(&signals, nullptr, &poll) > 0) break;  // a second signal: now
  }
  LOG(INFO) << "shardserve-router: shutting down, " << service_->admitted()
            << " requests unfinished";
  stopping_ = true;
  for (std::thread* t : {&health_thread_, &scaler_, &discovery_}) {
    if (t->joinable()) t->join();
  }
  health_->SetServingStatus(false);
  if (http_ != nullptr) http_->Stop();
  monitor_->Stop();
  for (auto& r : replicas_) r->Stop();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace shardserve
