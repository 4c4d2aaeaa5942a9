// shardserve-worker: hosts one pipeline stage behind WorkerService.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <fstream>

#include "CLI/CLI.hpp"
#include "common/cluster_auth.h"
#include "common/listen.h"
#include "common/logging.h"
#include "common/metrics.h"
#include "common/tls.h"
#include "common/tls_flags.h"
#include "common/wire.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "worker/grpc_link.h"
#include "worker/stage_metrics.h"
#include "worker/worker_service.h"

namespace {
grpc::Server* g_server = nullptr;
}  // namespace

int main(int argc, char** argv) {
  // Block SIGINT/SIGTERM before any thread starts, so only sigwait() below sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  CLI::App app{"shardserve-worker: one pipeline stage of a shardserve cluster"};
  std::string listen;
  std::string backend_name = "cpu";
  int threads = 1;
  int recv_timeout_s = 30;
  int fault_delay_ms = 0;
  int fault_fail_after = -1;
  app.add_option("--listen", listen, "host:port to serve on (port 0: any free port)")->required();
  std::string port_file;
  app.add_option("--port-file", port_file,
                 "once listening, write the bound gRPC port to this file (for --listen :0)");
  std::string model_root;
  app.add_option("--model-root", model_root,
                 "only load model folders inside this one (LoadShard paths are resolved, "
                 "symlinks included; default: any folder this process can read)");
  shardserve::ClusterAuthFlags cluster_auth;
  shardserve::AddClusterAuthFlags(app, &cluster_auth);
  int device = 0;
  double gpu_memory_fraction = 0.9;
  app.add_option("--backend", backend_name, "compute backend: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--device", device, "GPU index with --backend cuda")->capture_default_str();
  app.add_option("--gpu-memory-fraction", gpu_memory_fraction,
                 "share of the GPU's memory for weights, KV pages and workspaces")
      ->check(CLI::Range(0.05, 1.0))
      ->capture_default_str();
  app.add_option("--threads", threads, "compute threads")->check(CLI::Range(1, 1024));
  app.add_option("--recv-timeout-s", recv_timeout_s,
                 "how long a stage waits for the previous stage's activations")
      ->check(CLI::Range(1, 3600));
  app.add_option("--fault-send-delay-ms", fault_delay_ms,
                 "test hook: delay every activation send by this much")
      ->check(CLI::Range(0, 60000));
  app.add_option("--fault-fail-after-sends", fault_fail_after,
                 "test hook: fail activation sends from this one on")
      ->check(CLI::Range(-1, 1 << 30));
  std::string metrics_listen;
  app.add_option("--metrics-listen", metrics_listen, "host:port for Prometheus /metrics");
  shardserve::TlsFiles tls;
  shardserve::AddTlsFlags(
      app, &tls, "PEM certificate: serve TLS, and present it to the next stage",
      "PEM CA bundle: require and verify client certificates signed by it (mutual TLS: only "
      "routers and workers of the cluster may call), and verify the next stage");
  double lease_ttl_s = 10;
  app.add_option("--lease-ttl-s", lease_ttl_s,
                 "how long the router that loaded this worker's shard keeps it without sending "
                 "a step (other routers are refused meanwhile)")
      ->check(CLI::Range(0.5, 3600.0))
      ->capture_default_str();
  std::string router, advertise;
  app.add_option("--router", router,
                 "router host:port to announce this worker to, as a spare that replaces an "
                 "unreachable stage (repeated every second)");
  app.add_option("--advertise", advertise,
                 "host:port the router reaches this worker at (default: --listen)");
  double drain_grace_s = 30;
  app.add_option("--drain-grace-s", drain_grace_s,
                 "on SIGTERM/SIGINT, how long to wait for routers to move their sequences off "
                 "this worker before exiting (a second signal exits at once)")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "shardserve-worker: error: %s\n", std::string(s.message()).c_str());
    return 2;
  };
  for (const auto& [address, flag] :
       {std::pair{listen, "--listen"}, std::pair{metrics_listen, "--metrics-listen"}}) {
    if (address.empty()) continue;
    if (absl::Status s = shardserve::ValidateListenAddress(address, flag); !s.ok()) return fail(s);
  }
  if (!model_root.empty() && !std::filesystem::is_directory(model_root)) {
    return fail(absl::InvalidArgumentError("--model-root " + model_root + " is not a folder"));
  }

  auto server_credentials = shardserve::MakeServerCredentials(tls, /*require_client_cert=*/true);
  auto channel_credentials = shardserve::MakeChannelCredentials(tls);
  for (const absl::Status& s : {server_credentials.status(), channel_credentials.status()}) {
    if (!s.ok()) {
      std::fprintf(stderr, "shardserve-worker: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  shardserve::SetProcessChannelCredentials(*channel_credentials);
  auto authenticator = shardserve::ResolveClusterAuth(cluster_auth, tls, "shardserve-worker");
  if (!authenticator.ok()) return fail(authenticator.status());

  shardserve::BackendOptions backend_options;
  backend_options.cpu.threads = threads;
  backend_options.device = device;
  backend_options.memory_fraction = gpu_memory_fraction;
  auto made = shardserve::NewBackend(backend_name, backend_options);
  if (!made.ok()) {
    std::fprintf(stderr, "shardserve-worker: error: %s\n",
                 std::string(made.status().message()).c_str());
    return 1;
  }
  std::unique_ptr<shardserve::Backend> backend = std::move(*made);
  shardserve::WorkerOptions options;
  options.threads = threads;
  options.recv_timeout = absl::Seconds(recv_timeout_s);
  options.lease_ttl = absl::Seconds(lease_ttl_s);
  options.send_faults.send_delay = absl::Milliseconds(fault_delay_ms);
  options.send_faults.fail_after_sends = fault_fail_after;
  options.auth = *authenticator;
  options.model_root = model_root;
  shardserve::WorkerServiceImpl service(backend.get(), options);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  shardserve::ConfigureExclusivePort(&builder);
  builder.AddListeningPort(listen, *server_credentials, &port);
  builder.SetMaxReceiveMessageSize(shardserve::kMaxMessageBytes);
  builder.SetMaxSendMessageSize(shardserve::kMaxMessageBytes);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return fail(shardserve::CannotListen("--listen", listen));
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::ofstream(tmp) << port << "\n";
    std::filesystem::rename(tmp, port_file);
  }
  g_server = server.get();
  service.SetHealth(server->GetHealthCheckService());
  LOG(INFO) << "shardserve-worker listening on " << listen << " (port " << port << "), backend "
            << backend->name() << ", " << threads << " threads";

  shardserve::MetricsServer metrics;
  if (!metrics_listen.empty()) {
    absl::Status s = metrics.Start(metrics_listen, [&service] {
      shardserve::v1::StatsRequest request;
      shardserve::v1::StatsResponse stats;
      service.Stats(nullptr, &request, &stats);
      return shardserve::StageMetrics::Global().Render(stats);
    });
    if (!s.ok()) return fail(s);
    LOG(INFO) << "metrics on " << metrics_listen << " (port " << metrics.port() << ")";
  }

  // Announces this worker to --router until shutdown.
  std::atomic<bool> stopping{false};
  std::thread announcer;
  if (!router.empty()) {
    if (advertise.empty()) advertise = listen;
    announcer = std::thread([&] {
      auto stub = shardserve::v1::RouterControlService::NewStub(
          grpc::CreateChannel(router, shardserve::ProcessChannelCredentials()));
      bool ok_before = false;
      int wait_ms = 1000;
      while (!stopping) {
        grpc::ClientContext context;
        shardserve::AttachClusterCredential(&context);
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        shardserve::v1::RegisterWorkerRequest request;
        request.set_address(advertise);
        shardserve::v1::RegisterWorkerResponse response;
        grpc::Status s = stub->RegisterWorker(&context, request, &response);
        if (s.ok() != ok_before) {
          if (s.ok()) {
            LOG(INFO) << "announced to router " << router << " as " << advertise;
          } else {
            LOG(WARNING) << "cannot announce to router " << router << ": " << s.error_message();
          }
          ok_before = s.ok();
        }
        if (s.ok() && response.heartbeat_ms() > 0) wait_ms = response.heartbeat_ms();
        for (int waited = 0; waited < wait_ms && !stopping; waited += 50) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    });
  }

  // Every thread inherits the blocked mask; this one waits for the signal.
  int sig = 0;
  sigwait(&set, &sig);
  stopping = true;
  if (announcer.joinable()) announcer.join();
  LOG(INFO) << "shardserve-worker: signal " << sig << ", draining (up to " << drain_grace_s
            << " s)";
  // NOT_SERVING, steps refused as "draining": routers move their sequences elsewhere and close
  // their streams to this worker.
  service.BeginShutdown();
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(drain_grace_s);
  const timespec poll = {0, 100 * 1000 * 1000};
  while (service.open_step_streams() > 0 && std::chrono::steady_clock::now() < give_up) {
    if (sigtimedwait(&set, nullptr, &poll) > 0) break;  // a second signal: now
  }
  LOG(INFO) << "shardserve-worker: shutting down ("
            << (service.open_step_streams() > 0 ? "grace period over" : "no router attached")
            << ")";
  metrics.Stop();
  g_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
