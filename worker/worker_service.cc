#include "worker/worker_service.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/grpc_util.h"
#include "common/layers.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/wire.h"
#include "model/config.h"
#include "worker/grpc_link.h"
#include "worker/stage_metrics.h"

namespace shardserve {
namespace {

constexpr char kServiceName[] = "shardserve.v1.WorkerService";

void ToProto(const DeviceProfile& p, v1::DeviceCost* out) {
  out->set_name(p.name);
  out->set_memory_bytes(p.memory_bytes);
  out->set_memory_bandwidth(p.memory_bandwidth);
  out->set_flops(p.flops);
  out->set_step_overhead_seconds(p.step_overhead_s);
  out->set_token_overhead_seconds(p.token_overhead_s);
  out->set_sample_seconds_per_logit(p.sample_s_per_logit);
  out->set_link_bandwidth(p.link_bandwidth);
  out->set_link_latency_seconds(p.link_latency_s);
  out->set_weight_bytes_per_param(p.weight_bytes_per_param);
  out->set_kv_bytes_per_value(p.kv_bytes_per_value);
  out->set_activation_bytes_per_value(p.activation_bytes_per_value);
  out->set_serial_fraction(p.serial_fraction);
  out->set_kv_bandwidth(p.kv_bandwidth);
  out->set_pair_overhead_seconds(p.pair_overhead_s);
}

grpc::Status Invalid(absl::string_view field, absl::string_view what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat(field, ": ", what));
}

uint64_t AvailableMemoryBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (meminfo >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return static_cast<uint64_t>(sysconf(_SC_AVPHYS_PAGES)) * sysconf(_SC_PAGESIZE);
}

uint64_t PhysicalMemoryBytes() {
  return static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
}

// This machine: its hostname and boot id (a container's hostname alone may repeat).
std::string HostId() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string boot;
  std::getline(in, boot);
  return absl::StrCat(name, "/", boot);
}

// A short single-threaded multiply-add loop: enough to rank workers for placement.
double MeasureGflops() {
  constexpr int n = 96;
  std::vector<float> a(n * n, 1.0f), b(n * n, 0.5f), c(n * n, 0.0f);
  auto start = std::chrono::steady_clock::now();
  int reps = 0;
  do {
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < n; ++k) {
        const float x = a[i * n + k];
        for (int j = 0; j < n; ++j) c[i * n + j] += x * b[k * n + j];
      }
    ++reps;
  } while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(20));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float sink = c[0];
  (void)sink;
  return 2.0 * n * n * n * reps / seconds / 1e9;
}

}  // namespace

WorkerServiceImpl::WorkerServiceImpl(Backend* backend, WorkerOptions options)
    : backend_(backend),
      options_(std::move(options)),
      speed_gflops_(options_.sim ? options_.sim->profile.flops / 1e9 : MeasureGflops()) {
  const absl::Duration period =
      std::min(absl::Seconds(1), std::max(absl::Milliseconds(20), options_.lease_ttl / 4));
  reaper_ = std::thread([this, period] {
    absl::MutexLock lock(&reaper_mu_);
    while (!reaper_mu_.AwaitWithTimeout(absl::Condition(&stop_reaper_), period)) {
      reaper_mu_.Unlock();
      ExpireLeases();
      reaper_mu_.Lock();
    }
  });
}

WorkerServiceImpl::~WorkerServiceImpl() {
  {
    absl::MutexLock lock(&reaper_mu_);
    stop_reaper_ = true;
  }
  reaper_.join();
  if (auto shard = current(); shard != nullptr) {
    shard->CloseLinks(absl::CancelledError("worker shutting down"));
  }
}

void WorkerServiceImpl::SetHealth(grpc::HealthCheckServiceInterface* health) {
  absl::MutexLock lock(&mu_);
  health_ = health;
  UpdateHealth();
}

void WorkerServiceImpl::UpdateHealth() {
  if (health_ == nullptr) return;
  const bool can_serve = !draining_ && device_error_.ok();
  health_->SetServingStatus("", can_serve);
  health_->SetServingStatus(kServiceName, shard_ != nullptr && can_serve);
}

absl::Status WorkerServiceImpl::CheckDevice() {
  absl::Status fault = backend_->Health();
  if (fault.ok()) return fault;
  absl::MutexLock lock(&mu_);
  if (device_error_.ok()) {
    device_error_ = fault;
    LOG(ERROR) << "the device failed: " << fault
               << "; this worker is NOT_SERVING (its pipelines fail over) until it restarts";
    UpdateHealth();
  }
  return DeviceFailureLocked();
}

absl::Status WorkerServiceImpl::DeviceFailureLocked() const {
  if (device_error_.ok()) return device_error_;
  return absl::UnavailableError(absl::StrCat("device failed: ", device_error_.message(),
                                             " (the worker must restart to compute again)"));
}

std::shared_ptr<WorkerServiceImpl::Shard> WorkerServiceImpl::current() const {
  absl::MutexLock lock(&mu_);
  return shard_;
}

grpc::Status WorkerServiceImpl::Authorize(const grpc::ServerContext* context) const {
  grpc::Status s = options_.auth.Check(context);
  if (!s.ok()) {
    StageMetrics::Global().ObserveRefusedCall(s.error_code() == grpc::StatusCode::UNAUTHENTICATED
                                                  ? "unauthenticated"
                                                  : "permission_denied");
  }
  return s;
}

absl::StatusOr<std::string> WorkerServiceImpl::ResolveModelPath(const std::string& path) const {
  namespace fs = std::filesystem;
  if (options_.model_root.empty()) return path;
  std::error_code ec;
  const fs::path root = fs::weakly_canonical(options_.model_root, ec);
  if (ec) return absl::FailedPreconditionError("the worker's --model-root cannot be resolved");
  const fs::path resolved = fs::weakly_canonical(fs::path(path), ec);
  auto outside = [&] {
    return absl::InvalidArgumentError(
        "model_path: not inside the worker's --model-root (paths are resolved on the worker; "
        "give one under the folder the worker serves models from)");
  };
  if (ec || !fs::path(path).is_absolute()) return outside();
  auto r = root.begin();
  auto p = resolved.begin();
  for (; r != root.end() && !r->empty(); ++r, ++p) {
    if (p == resolved.end() || *p != *r) return outside();
  }
  return resolved.string();
}

grpc::Status WorkerServiceImpl::Describe(grpc::ServerContext* context, const v1::DescribeRequest*,
                                         v1::DescribeResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  const bool sim = options_.sim.has_value();
  const bool cuda = absl::StartsWith(backend_->name(), "cuda");
  response->set_device(sim    ? v1::DEVICE_KIND_SIM
                       : cuda ? v1::DEVICE_KIND_CUDA
                              : v1::DEVICE_KIND_CPU);
  response->set_host_id(HostId());
  response->set_link_version(kLinkVersion);
  response->add_links(v1::LINK_KIND_GRPC);
  if (options_.nccl != nullptr) response->add_links(v1::LINK_KIND_NCCL);
  const DeviceInfo device = backend_->device_info();
  response->set_device_uuid(device.uuid);
  response->set_device_name(sim ? "sim " + options_.sim->profile.name
                                : std::string(backend_->name()));
  response->set_threads(options_.threads);
  if (sim) {
    response->set_free_memory_bytes(static_cast<uint64_t>(options_.sim->profile.memory_bytes));
    response->set_total_memory_bytes(static_cast<uint64_t>(options_.sim->profile.memory_bytes));
  } else if (device.total_bytes > 0) {
    response->set_free_memory_bytes(device.free_bytes);
    response->set_total_memory_bytes(device.total_bytes);
  } else {
    response->set_free_memory_bytes(AvailableMemoryBytes());
    response->set_total_memory_bytes(PhysicalMemoryBytes());
  }
  response->set_speed_gflops(sim ? speed_gflops_ : speed_gflops_ * std::max(1, options_.threads));
  auto shard = current();
  DeviceProfile profile;
  if (sim) {
    profile = options_.sim->profile;
  } else if (shard != nullptr) {
    profile = shard->cost;
  } else {
    profile = *BuiltinProfile("cpu-here");
  }
  ToProto(profile, response->mutable_cost());
  if (shard != nullptr) {
    response->set_loaded(true);
    response->set_model_path(shard->model_path);
    response->set_layer_begin(shard->runtime->stage().layer_begin());
    response->set_layer_end(shard->runtime->stage().layer_end());
  }
  return grpc::Status::OK;
}

// The request's model folder (resolved) and its config, once every field is checked against it
// and the KV pool is known to fit this machine's memory.
absl::StatusOr<std::pair<std::string, ModelConfig>> WorkerServiceImpl::CheckLoadRequest(
    const v1::LoadShardRequest& req) const {
  auto invalid = [](absl::string_view field, absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
  };
  if (req.model_path().empty()) return invalid("model_path", "empty");
  if (req.model_path().size() > 4096) return invalid("model_path", "longer than 4096 bytes");
  ASSIGN_OR_RETURN(std::string model_path, ResolveModelPath(req.model_path()));
  std::error_code ec;
  if (!std::filesystem::is_directory(model_path, ec)) {
    return invalid("model_path", absl::StrCat(req.model_path(), " is not a folder on this worker"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(model_path + "/config.json"));
  const int64_t layers = config.num_layers;
  if (req.layer_begin() < 0 || req.layer_begin() >= req.layer_end() || req.layer_end() > layers) {
    return invalid(
        "layer_begin/layer_end",
        absl::StrCat(req.layer_begin(), " and ", req.layer_end(), " (layers ",
                     LayerRangeText(req.layer_begin(), req.layer_end()),
                     ") are not a range of the model's ", layers, " layers (0-", layers - 1, ")"));
  }
  if (req.is_first() != (req.layer_begin() == 0)) {
    return invalid("is_first", "disagrees with layer_begin");
  }
  if (req.is_last() != (req.layer_end() == layers)) {
    return invalid("is_last", "disagrees with layer_end");
  }
  if (!req.dtype().empty() && req.dtype() != "auto") {
    return invalid("dtype", absl::StrCat("'", req.dtype(), "' is not supported; use auto"));
  }
  if (req.kv_block_size() < 1 || req.kv_block_size() > kMaxKvBlockSize) {
    return invalid("kv_block_size", absl::StrCat("outside [1, ", kMaxKvBlockSize, "]"));
  }
  if (req.kv_num_blocks() < 1 || req.kv_num_blocks() > kMaxKvBlocks) {
    return invalid("kv_num_blocks", absl::StrCat("outside [1, ", kMaxKvBlocks, "]"));
  }
  if (req.max_step_tokens() < 1 || req.max_step_tokens() > kMaxStepTokens) {
    return invalid("max_step_tokens", absl::StrCat("outside [1, ", kMaxStepTokens, "]"));
  }
  if (req.model_name().size() > 256) return invalid("model_name", "longer than 256 bytes");
  if (std::any_of(req.model_name().begin(), req.model_name().end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
    return invalid("model_name", "has a control character");
  }
  // A simulated stage bounds weights and KV by its profile's memory when it loads.
  if (options_.sim) return std::make_pair(std::move(model_path), std::move(config));
  // The KV pool is allocated (and touched) at load: bound it by the memory it goes to first (a
  // GPU's free memory under its fraction, or this machine's).
  const double kv_bytes = static_cast<double>(KvCacheValuesPerToken(config)) * sizeof(float) *
                          req.kv_block_size() * req.kv_num_blocks() *
                          (req.layer_end() - req.layer_begin());
  const DeviceInfo device = backend_->device_info();
  const bool on_device = device.total_bytes > 0;
  const double available =
      on_device ? static_cast<double>(device.free_bytes) : 0.9 * AvailableMemoryBytes();
  if (kv_bytes > available) {
    return absl::ResourceExhaustedError(
        absl::StrCat("kv_num_blocks: ", req.kv_num_blocks(), " blocks of ", req.kv_block_size(),
                     " tokens need ", absl::StrFormat("%.2f", kv_bytes / (1 << 30)),
                     " GiB of KV cache; ", on_device ? backend_->name() : "this worker", " has ",
                     absl::StrFormat("%.2f", available / (1 << 30)), " GiB available"));
  }
  return std::make_pair(std::move(model_path), std::move(config));
}

// Takes the current shard away (health NOT_SERVING) and closes its links, so a step still
// running on it ends; the caller then holds backend_mu_ before the shard is destroyed.
std::shared_ptr<WorkerServiceImpl::Shard> WorkerServiceImpl::DetachShard() {
  std::shared_ptr<Shard> old;
  {
    absl::MutexLock lock(&mu_);
    old = std::move(shard_);
    shard_ = nullptr;
    UpdateHealth();
  }
  if (old != nullptr) old->CloseLinks(absl::AbortedError("shard unloaded"));
  return old;
}

grpc::Status WorkerServiceImpl::LoadShard(grpc::ServerContext* context,
                                          const v1::LoadShardRequest* req,
                                          v1::LoadShardResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  absl::MutexLock load_lock(&load_mu_);
  const auto start = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "worker is shutting down");
    }
    if (absl::Status failed = DeviceFailureLocked(); !failed.ok()) return ToGrpc(failed);
    if (grpc::Status s = TakeLease(req->owner()); !s.ok()) return s;
  }
  auto checked = CheckLoadRequest(*req);
  if (!checked.ok()) {
    StageMetrics::Global().ObserveLoadFailure();
    return ToGrpc(checked.status());
  }
  const auto& [model_path, config] = *checked;

  std::shared_ptr<Shard> old = DetachShard();
  absl::MutexLock backend_lock(&backend_mu_);
  old.reset();
  StageSpec spec{req->layer_begin(), req->layer_end()};
  KvCacheSpec kv{req->kv_block_size(), req->kv_num_blocks()};
  auto stage = options_.sim ? LoadSimStage(model_path, spec, kv, *options_.sim)
                            : LoadStage(model_path, spec, kv, backend_);
  if (!stage.ok()) {
    StageMetrics::Global().ObserveLoadFailure();
    if (absl::Status failed = CheckDevice(); !failed.ok()) return ToGrpc(failed);
    return ToGrpc(Annotate(stage.status(), "loading shard"));
  }
  auto shard = std::make_shared<Shard>();
  shard->model_path = req->model_path();
  shard->model_name = req->model_name();
  shard->cost = options_.sim ? options_.sim->profile : CalibrateCpuProfile(**stage);
  response->set_kv_bytes_per_token((*stage)->KvBytesPerToken());
  response->set_num_layers(config.num_layers);
  response->set_hidden_size(config.hidden_size);
  response->set_vocab_size(config.vocab_size);
  shard->runtime = std::make_unique<StageRuntime>(std::move(*stage), req->max_step_tokens(),
                                                  /*async_sends=*/true);
  if (!options_.sim && options_.sampler != nullptr) shard->runtime->SetSampler(options_.sampler);
  shard->inbox = NewLocalLink("previous stage", options_.recv_timeout);
  shard->runtime->SetLinks(shard->inbox.get(), nullptr);
  response->set_load_seconds(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  LOG(INFO) << "loaded layers " << LayerRangeText(req->layer_begin(), req->layer_end()) << " of "
            << req->model_path() << " with " << req->kv_num_blocks() << " KV blocks in "
            << response->load_seconds() << " s";
  absl::MutexLock lock(&mu_);
  shard_ = std::move(shard);
  draining_ = false;
  UpdateHealth();
  return grpc::Status::OK;
}

absl::StatusOr<LinkFactory*> WorkerServiceImpl::LinkFactoryFor(v1::LinkKind kind,
                                                               uint32_t version) const {
  const bool grpc = kind == v1::LINK_KIND_UNSPECIFIED || kind == v1::LINK_KIND_GRPC;
  // Routers before link_version sent none; gRPC links need nothing else.
  if (version != kLinkVersion && !(grpc && version == 0)) {
    return absl::FailedPreconditionError(
        absl::StrCat("link_version ", version, ": this worker speaks link version ", kLinkVersion));
  }
  if (grpc) return nullptr;
  if (kind == v1::LINK_KIND_NCCL) {
    if (options_.nccl != nullptr) return options_.nccl.get();
    return absl::FailedPreconditionError(
        absl::StrCat("link nccl: this worker does not offer NCCL links (backend ", backend_->name(),
                     "; they need --backend cuda in a build with NCCL)"));
  }
  return absl::FailedPreconditionError(absl::StrCat("link ", v1::LinkKind_Name(kind),
                                                    ": not offered by this worker (see "
                                                    "Describe.links)"));
}

grpc::Status WorkerServiceImpl::LeasedShard(const std::string& owner,
                                            std::shared_ptr<Shard>* shard) {
  {
    absl::MutexLock lock(&mu_);
    if (grpc::Status s = TakeLease(owner); !s.ok()) return s;
  }
  *shard = current();
  if (*shard == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no shard loaded");
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::PrepareLink(grpc::ServerContext* context,
                                            const v1::PrepareLinkRequest* req,
                                            v1::PrepareLinkResponse* resp) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  absl::MutexLock load_lock(&load_mu_);
  std::shared_ptr<Shard> shard;
  if (grpc::Status s = LeasedShard(req->owner(), &shard); !s.ok()) return s;
  if (shard->runtime->is_first()) {
    return Invalid("link", "the first stage receives no activations");
  }
  if (req->previous_address().size() > 255) {
    return Invalid("previous_address", "longer than 255 bytes");
  }
  auto factory = LinkFactoryFor(req->link(), req->link_version());
  if (!factory.ok()) return ToGrpc(factory.status());
  resp->set_link_version(kLinkVersion);
  // A link that needs an id gets one here, and steps read from it; gRPC fills the inbox.
  std::shared_ptr<ActivationLink> prev;
  if (*factory != nullptr) {
    auto id = (*factory)->NewId();
    if (!id.ok()) return ToGrpc(id.status());
    resp->set_link_id(*id);
    LinkJoin join{.role = LinkJoin::Role::kReceiver,
                  .peer = req->previous_address(),
                  .max_elements = kMaxStepTokens * shard->runtime->stage().activation_width(),
                  .timeout = options_.recv_timeout};
    // The join finishes once the previous stage joins in its ConnectNext; steps wait for it.
    prev = NewJoiningLink([f = *factory, id = *id, join] { return f->Join(id, join); },
                          req->previous_address(), options_.recv_timeout);
  }
  ActivationLink* upstream = prev ? prev.get() : shard->inbox.get();
  std::shared_ptr<ActivationLink> old_prev;
  ActivationLink* downstream;
  {
    absl::MutexLock lock(&shard->links_mu);
    old_prev = std::exchange(shard->prev, std::move(prev));
    downstream = shard->next_faulty ? shard->next_faulty.get() : shard->next.get();
  }
  shard->runtime->SetLinks(upstream, downstream);
  if (old_prev) old_prev->Close(absl::AbortedError("replaced"));
  LOG(INFO) << "link from " << req->previous_address() << ": "
            << (*factory != nullptr ? (*factory)->name() : std::string("grpc"));
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::ConnectNext(grpc::ServerContext* context,
                                            const v1::ConnectNextRequest* req,
                                            v1::ConnectNextResponse*) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  absl::MutexLock load_lock(&load_mu_);
  std::shared_ptr<Shard> shard;
  if (grpc::Status s = LeasedShard(req->owner(), &shard); !s.ok()) return s;
  if (req->next_address().size() > 255) return Invalid("next_address", "longer than 255 bytes");
  if (req->next_address().empty() != shard->runtime->is_last()) {
    return Invalid("next_address", shard->runtime->is_last() ? "set on the last stage"
                                                             : "empty on a stage that is not last");
  }
  if (req->link_id().size() > 4096) return Invalid("link_id", "longer than 4096 bytes");
  auto factory = LinkFactoryFor(req->link(), req->link_version());
  if (!factory.ok()) return ToGrpc(factory.status());
  if (*factory != nullptr && req->link_id().size() != (*factory)->id_bytes()) {
    return Invalid("link_id", absl::StrCat(req->link_id().size(), " bytes; a ", (*factory)->name(),
                                           " link id has ", (*factory)->id_bytes()));
  }
  if (*factory == nullptr && !req->link_id().empty()) {
    return Invalid("link_id", "set for a gRPC link");
  }
  ActivationLink* upstream;
  {
    absl::MutexLock lock(&shard->links_mu);
    upstream = shard->prev ? shard->prev.get() : shard->inbox.get();
  }
  if (req->next_address().empty()) return grpc::Status::OK;
  absl::StatusOr<std::unique_ptr<ActivationLink>> link;
  if (*factory != nullptr) {
    // Blocks until the next stage (which made the id in PrepareLink) has joined too.
    link = (*factory)->Join(
        req->link_id(),
        LinkJoin{.role = LinkJoin::Role::kSender,
                 .peer = req->next_address(),
                 .max_elements = kMaxStepTokens * shard->runtime->stage().activation_width(),
                 .timeout = options_.recv_timeout});
  } else {
    // The next stage accepts the stream only if the same router holds its lease.
    link = NewGrpcSendLink(req->next_address(), req->owner(), absl::Seconds(5));
  }
  if (!link.ok()) return ToGrpc(link.status());
  // Detach the old link (waiting out a send in flight) before it goes away.
  shard->runtime->SetLinks(upstream, nullptr);
  ActivationLink* downstream;
  {
    absl::MutexLock lock(&shard->links_mu);
    if (shard->next) shard->next->Close(absl::AbortedError("replaced"));
    shard->next = std::shared_ptr<ActivationLink>(std::move(*link));
    shard->next_faulty = nullptr;
    downstream = shard->next.get();
    const FaultOptions& f = options_.send_faults;
    if (f.send_delay > absl::ZeroDuration() || f.fail_after_sends >= 0 || f.corrupt_shape) {
      shard->next_faulty = NewFaultyLink(downstream, f);
      downstream = shard->next_faulty.get();
    }
  }
  // The runtime uses `downstream` only until the next SetLinks, which ConnectNext (serialised
  // by load_mu_) calls before replacing the links again.
  shard->runtime->SetLinks(upstream, downstream);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Activations(grpc::ServerContext* context,
                                            grpc::ServerReader<v1::ActivationsRequest>* reader,
                                            v1::ActivationsResponse*) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  {
    // Only the previous stage of this worker's own pipeline: its sender names the router that
    // linked it, which must be the router holding this worker.
    const auto& metadata = context->client_metadata();
    auto it = metadata.find(kOwnerMetadata);
    const std::string owner =
        it == metadata.end() ? std::string() : std::string(it->second.data(), it->second.size());
    absl::MutexLock lock(&mu_);
    if (!lease_owner_.empty() && owner != lease_owner_) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "activations from a stage of another router's pipeline");
    }
  }
  v1::ActivationsRequest msg;
  while (reader->Read(&msg)) {
    auto shard = current();
    if (shard == nullptr)
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no shard loaded");
    const int64_t hidden = shard->runtime->stage().activation_width();
    if (msg.cols() != hidden || msg.rows() < 1 || msg.rows() > kMaxStepTokens ||
        msg.data().size() != static_cast<size_t>(msg.rows() * msg.cols() * sizeof(float))) {
      return Invalid("activations",
                     absl::StrCat("step ", msg.step_id(), ": [", msg.rows(), ", ", msg.cols(),
                                  "] with ", msg.data().size(), " bytes, hidden size ", hidden));
    }
    ActivationTensor t;
    t.rows = msg.rows();
    t.cols = msg.cols();
    t.data.resize(t.rows * t.cols);
    std::memcpy(t.data.data(), msg.data().data(), msg.data().size());
    absl::Status s = shard->inbox->Send(msg.step_id(), std::move(t));
    if (!s.ok()) return ToGrpc(s);
  }
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Steps(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::StepsResponse, v1::StepsRequest>* stream) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  // Results and errors from this thread and send errors from the runtime's sender thread share
  // the stream.
  absl::Mutex write_mu;
  auto write = [&](const v1::StepsResponse& response) {
    absl::MutexLock lock(&write_mu);
    return stream->Write(response);
  };
  std::shared_ptr<Shard> reporting;  // the shard whose send errors go to this stream
  auto report_to = [&](std::shared_ptr<Shard> shard) {
    if (shard == reporting) return;
    if (reporting != nullptr) reporting->runtime->SetSendErrorHandler(nullptr);
    reporting = std::move(shard);
    if (reporting == nullptr) return;
    reporting->runtime->SetSendErrorHandler([&write](uint64_t step, const absl::Status& s) {
      LOG(WARNING) << "sending activations of step " << step << " failed: " << s;
      v1::StepsResponse response;
      response.set_step_id(step);
      response.set_error_code(static_cast<int>(s.code()));
      response.set_error_message(std::string(s.message()));
      write(response);
    });
  };
  {
    absl::MutexLock lock(&mu_);
    ++open_step_streams_;
  }
  v1::StepsRequest req;
  std::string owner;  // of this stream: the owner its first request names
  bool first = true;
  while (stream->Read(&req)) {
    if (first) owner = req.owner();
    first = false;
    auto shard = current();
    report_to(shard);
    absl::StatusOr<v1::StepsResponse> result = RunStep(shard, owner, req.plan());
    v1::StepsResponse response;
    if (!result.ok()) {
      LOG(WARNING) << "step " << req.plan().step_id() << " failed: " << result.status();
      response.set_step_id(req.plan().step_id());
      response.set_error_code(static_cast<int>(result.status().code()));
      response.set_error_message(std::string(result.status().message()));
    } else if (shard->runtime->is_last() && req.plan().sequences_size() > 0) {
      response = std::move(*result);
    } else {
      continue;
    }
    if (!write(response)) break;
  }
  report_to(nullptr);
  CloseStepStream(owner);
  return grpc::Status::OK;
}

absl::StatusOr<v1::StepsResponse> WorkerServiceImpl::RunStep(const std::shared_ptr<Shard>& shard,
                                                             const std::string& owner,
                                                             const v1::StepPlan& plan) {
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    draining = draining_;
    // Renews the owner's lease.
    if (grpc::Status lease = TakeLease(owner); !lease.ok()) {
      return absl::FailedPreconditionError(lease.error_message());
    }
    RETURN_IF_ERROR(DeviceFailureLocked());
  }
  if (shard == nullptr) return absl::FailedPreconditionError("no shard loaded");
  if (draining && plan.sequences_size() > 0) return absl::UnavailableError("worker is draining");
  const absl::Time step_start = absl::Now();
  absl::MutexLock backend_lock(&backend_mu_);
  if (options_.device_faults != nullptr && plan.sequences_size() > 0) {
    options_.device_faults->BeginStep();
  }
  absl::StatusOr<v1::StepsResponse> result = shard->runtime->Execute(plan);
  StageMetrics::Global().ObserveStep(absl::Now() - step_start);
  // A step that failed on the device fails as the device: the router moves the pipeline's
  // sequences elsewhere.
  if (!result.ok()) RETURN_IF_ERROR(CheckDevice());
  return result;
}

void WorkerServiceImpl::CloseStepStream(const std::string& owner) {
  bool released = false;
  {
    absl::MutexLock lock(&mu_);
    --open_step_streams_;
    // The owner let go of its pipeline (or went away): the worker is free for any router, and
    // the sequences it left here are dropped.
    if (!owner.empty() && owner == lease_owner_ && open_step_streams_ == 0) {
      lease_owner_.clear();
      released = true;
    }
  }
  if (released) ReleaseSequences(current(), "stream_closed");
}

void WorkerServiceImpl::ReleaseSequences(const std::shared_ptr<Shard>& shard,
                                         const std::string& reason) {
  if (shard == nullptr) return;
  const int64_t n = shard->runtime->ReleaseAll();
  StageMetrics::Global().ObserveLeaseRelease(reason, n);
  LOG(INFO) << "router lease ended (" << reason << "): dropped " << n
            << " sequences and their KV blocks";
}

void WorkerServiceImpl::ExpireLeases() {
  {
    absl::MutexLock lock(&mu_);
    if (lease_owner_.empty() || absl::Now() < lease_until_) return;
    lease_owner_.clear();
  }
  ReleaseSequences(current(), "expired");
}

grpc::Status WorkerServiceImpl::TakeLease(const std::string& owner) {
  const absl::Time now = absl::Now();
  if (!lease_owner_.empty() && lease_owner_ != owner && now < lease_until_) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        "worker is leased by another router (it holds this worker's pipeline)");
  }
  if (owner.empty()) return grpc::Status::OK;
  lease_owner_ = owner;
  lease_until_ = now + options_.lease_ttl;
  return grpc::Status::OK;
}

void WorkerServiceImpl::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  shutting_down_ = true;
  UpdateHealth();
}

int WorkerServiceImpl::open_step_streams() const {
  absl::MutexLock lock(&mu_);
  return open_step_streams_;
}

grpc::Status WorkerServiceImpl::Drain(grpc::ServerContext* context, const v1::DrainRequest*,
                                      v1::DrainResponse*) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  draining_ = true;
  UpdateHealth();
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Stats(grpc::ServerContext* context, const v1::StatsRequest* request,
                                      v1::StatsResponse* response) {
  if (grpc::Status s = Authorize(context); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    response->set_draining(draining_);
    if (!device_error_.ok()) response->set_device_error(std::string(device_error_.message()));
    response->set_leased(!lease_owner_.empty());
    response->set_leased_by_caller(request != nullptr && !request->owner().empty() &&
                                   request->owner() == lease_owner_);
  }
  auto shard = current();
  if (shard == nullptr) return grpc::Status::OK;
  const auto [p50, p99] = StageMetrics::Global().RecentStepSeconds();
  response->set_step_seconds_p50(p50);
  response->set_step_seconds_p99(p99);
  StageStats s = shard->runtime->Stats();
  response->set_loaded(true);
  response->set_model_name(shard->model_name);
  response->set_layer_begin(shard->runtime->stage().layer_begin());
  response->set_layer_end(shard->runtime->stage().layer_end());
  response->set_kv_blocks_total(s.kv_blocks_total);
  response->set_kv_blocks_used(s.kv_blocks_used);
  response->set_kv_blocks_free(s.kv_blocks_total - s.kv_blocks_used);
  response->set_live_sequences(s.live_sequences);
  response->set_steps(s.steps);
  response->set_tokens(s.tokens);
  response->set_prefix_cached_tokens(s.prefix_cached_tokens);
  response->set_busy_seconds(s.busy_seconds);
  std::shared_ptr<ActivationLink> next, prev;
  {
    absl::MutexLock lock(&shard->links_mu);
    next = shard->next;
    prev = shard->prev;
  }
  // The link steps read from (the gRPC inbox unless PrepareLink set up another), then the sender.
  for (const auto& link : {prev ? prev : shard->inbox, next}) {
    if (link == nullptr) continue;
    LinkCounters c = link->counters();
    v1::LinkStats* out = response->add_links();
    out->set_direction(c.direction);
    out->set_peer(c.peer);
    out->set_messages(c.messages);
    out->set_bytes(c.bytes);
  }
  return grpc::Status::OK;
}

}  // namespace shardserve
