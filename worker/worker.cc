#include "worker/worker.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>

#include "common/cluster_auth.h"
#include "common/grpc_util.h"
#include "common/listen.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/wire.h"
#include "kernels/backend_factory.h"
#include "worker/stage_metrics.h"

#if defined(SHARDSERVE_HAS_NCCL)
#include "worker/nccl_link.h"
#endif
#if defined(SHARDSERVE_HAS_CUDA)
#include "kernels/cuda/cuda_backend.h"
#endif

namespace shardserve {

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(WorkerConfig config) {
  RETURN_IF_ERROR(config.Validate());
  std::unique_ptr<Worker> w(new Worker(std::move(config)));
  const WorkerConfig& c = w->config_;
  ASSIGN_OR_RETURN(ProcessCredentials credentials,
                   SetUpProcessCredentials(c.tls, c.cluster_auth, /*require_client_cert=*/true,
                                           "shardserve-worker"));
  w->server_credentials_ = credentials.server;
  BackendOptions backend_options;
  backend_options.cpu.threads = c.threads;
  backend_options.cpu.avx512_bf16 = !c.f32_activations;
  backend_options.device = c.device;
  backend_options.memory_fraction = c.gpu_memory_fraction;
  WorkerOptions options;
  if (c.backend == "sim") {
    // The simulated device needs no kernels; a one-thread CPU backend stands in for the
    // Backend the service holds.
    ASSIGN_OR_RETURN(options.sim, c.Sim());
    backend_options.cpu.threads = 1;
    ASSIGN_OR_RETURN(w->backend_, NewBackend("cpu", backend_options));
  } else {
    ASSIGN_OR_RETURN(w->backend_, NewBackend(c.backend, backend_options));
  }
  options.threads = c.threads;
  options.recv_timeout = absl::Seconds(c.recv_timeout_s);
  options.lease_ttl = absl::Seconds(c.lease_ttl_s);
  options.send_faults.send_delay = absl::Milliseconds(c.fault_send_delay_ms);
  options.send_faults.fail_after_sends = c.fault_fail_after_sends;
  options.auth = std::move(credentials.cluster);
  options.model_root = c.model_root;
#if defined(SHARDSERVE_HAS_NCCL)
  // A CUDA stage sends to and receives from CUDA stages on other GPUs over NCCL.
  if (c.backend == "cuda") options.nccl = NewNcclLinkFactory(c.device);
#endif
#if defined(SHARDSERVE_HAS_CUDA)
  // The last stage samples where its logits are: on the GPU, or in place in host memory.
  if (c.backend == "cuda") {
    Backend* gpu = w->backend_.get();
    options.sampler = [gpu](const Tensor& logits, absl::Span<const SamplingParams> params,
                            absl::Span<const int64_t> positions,
                            absl::Span<const absl::Span<const int32_t>> histories) {
      return SampleOnDevice(*gpu, logits, params, positions, histories);
    };
  }
#endif
  if (c.backend == "cpu") options.sampler = NewHostMemorySampler();
  Backend* backend = w->backend_.get();
  if (c.fault_device_after_steps >= 0) {
    w->faulty_backend_ = NewFaultyBackend(backend, c.fault_device_after_steps);
    backend = w->faulty_backend_.get();
    options.device_faults = w->faulty_backend_.get();
  }
  w->service_ = std::make_unique<WorkerServiceImpl>(backend, std::move(options));
  return w;
}

Worker::~Worker() {
  stopping_ = true;
  if (announcer_.joinable()) announcer_.join();
}

absl::Status Worker::Serve() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  ConfigureExclusivePort(&builder);
  ReportUnparsableRequests(&builder);
  builder.AddListeningPort(config_.listen, server_credentials_, &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port == 0) return CannotListen("--listen", config_.listen);
  if (!config_.port_file.empty()) RETURN_IF_ERROR(WritePortFile(config_.port_file, port));
  service_->SetHealth(server_->GetHealthCheckService());
  LOG(INFO) << "shardserve-worker listening on " << config_.listen << " (port " << port
            << "), backend "
            << (config_.backend == "sim"
                    ? "sim " +
                          (config_.sim_profile.empty() ? config_.sim_device : config_.sim_profile)
                    : std::string(backend_->name()))
            << ", " << config_.threads << " threads";
  if (config_.model_root.empty()) {
    LOG(WARNING) << "no --model-root: the cluster's routers may load any model folder this "
                    "process can read";
  } else {
    LOG(INFO) << "loads models only from inside --model-root " << config_.model_root;
  }
  RETURN_IF_ERROR(StartMetrics());
  if (!config_.router.empty()) announcer_ = std::thread([this] { AnnounceLoop(); });
  return absl::OkStatus();
}

absl::Status Worker::StartMetrics() {
  if (config_.metrics_listen.empty()) return absl::OkStatus();
  RETURN_IF_ERROR(metrics_.Start(config_.metrics_listen, [this] {
    v1::StatsRequest request;
    v1::StatsResponse stats;
    grpc::Status s = service_->Stats(nullptr, &request, &stats);
    if (!s.ok()) LOG(WARNING) << "/metrics: the worker's Stats failed: " << s.error_message();
    return StageMetrics::Global().Render(stats);
  }));
  LOG(INFO) << "metrics on " << config_.metrics_listen << " (port " << metrics_.port() << ")";
  return absl::OkStatus();
}

// Announces this worker to --router (a spare the router may use) until shutdown.
void Worker::AnnounceLoop() {
  const std::string advertise = config_.advertise.empty() ? config_.listen : config_.advertise;
  auto stub = v1::RouterControlService::NewStub(
      grpc::CreateChannel(config_.router, ProcessChannelCredentials()));
  bool ok_before = false;
  int wait_ms = 1000;
  while (!stopping_) {
    grpc::ClientContext context;
    AttachClusterCredential(&context);
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    v1::RegisterWorkerRequest request;
    request.set_address(advertise);
    v1::RegisterWorkerResponse response;
    grpc::Status s = stub->RegisterWorker(&context, request, &response);
    if (s.ok() != ok_before) {
      if (s.ok()) {
        LOG(INFO) << "announced to router " << config_.router << " as " << advertise;
      } else {
        LOG(WARNING) << "cannot announce to router " << config_.router << ": " << s.error_message();
      }
      ok_before = s.ok();
    }
    if (s.ok() && response.heartbeat_ms() > 0) wait_ms = response.heartbeat_ms();
    for (int waited = 0; waited < wait_ms && !stopping_; waited += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

void Worker::DrainAndStop(const sigset_t& signals) {
  stopping_ = true;
  if (announcer_.joinable()) announcer_.join();
  LOG(INFO) << "shardserve-worker: draining (up to " << config_.drain_grace_s << " s)";
  // NOT_SERVING, steps refused as "draining": routers move their sequences elsewhere and close
  // their streams to this worker.
  service_->BeginShutdown();
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(config_.drain_grace_s);
  const timespec poll = {0, 100 * 1000 * 1000};
  while (service_->open_step_streams() > 0 && std::chrono::steady_clock::now() < give_up) {
    if (sigtimedwait(&signals, nullptr, &poll) > 0) break;  // a second signal: now
  }
  LOG(INFO) << "shardserve-worker: shutting down ("
            << (service_->open_step_streams() > 0 ? "grace period over" : "no router attached")
            << ")";
  metrics_.Stop();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace shardserve
