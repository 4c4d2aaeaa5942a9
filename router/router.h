// Router: one shardserve-router process. Owns everything the flags describe: the model's
// tokenizer and templates, the worker registry, the pipeline replicas, the public services (gRPC
// InferenceService, KServe, RouterControlService, OpenAI HTTP and /metrics), the background
// threads (health, scale-out, DNS discovery) and the drain on shutdown.
//
//   auto router = Router::Create(config);   // reads the model, finds workers, plans the layout
//   router->Serve();                          // binds the ports, starts replicas and threads
//   router->DrainAndStop(signals);            // on SIGTERM: finish admitted streams, then stop
//
// Threads: Serve() starts the replica loops (one per pipeline), the health thread (mirrors
// service readiness into gRPC health every 100 ms), the scaler (only with --max-replicas above
// --replicas: the only writer of the replica list until joined) and the discovery thread (only
// for dns:/// workers). DrainAndStop joins them all before tearing the services down.
#ifndef SHARDSERVE_ROUTER_ROUTER_H_
#define SHARDSERVE_ROUTER_ROUTER_H_

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "common/cluster_auth.h"
#include "model/config.h"
#include "model/reasoning.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"
#include "router/cluster_monitor.h"
#include "router/http_server.h"
#include "router/inference_service.h"
#include "router/kserve_service.h"
#include "router/metrics.h"
#include "router/placement.h"
#include "router/replica.h"
#include "router/router_config.h"
#include "router/worker_registry.h"

namespace shardserve {

class Router {
 public:
  // Everything that can be checked before a port is bound: credentials, model, tokenizer,
  // workers (waiting for DNS when asked), layer split, KV size, chat template, reasoning parser.
  // INVALID_ARGUMENT (or the loader's error) naming the flag on bad input.
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterConfig config);
  ~Router();

  // Binds the HTTP and gRPC ports (an error naming the flag and port when taken) and starts the
  // replicas and background threads.
  absl::Status Serve();

  // Health NOT_SERVING, new requests refused, admitted streams finish for up to
  // --drain-grace-s (a second signal in `signals` ends the wait), then everything stops.
  void DrainAndStop(const sigset_t& signals);

 private:
  explicit Router(RouterConfig config) : config_(std::move(config)) {}

  absl::Status FindWorkers();
  absl::Status PlanLayout();
  std::vector<absl::StatusOr<v1::DescribeResponse>> DescribePipelineWorkers() const;
  static absl::StatusOr<DeviceProfile> CostOf(const std::string& worker,
                                              const v1::DescribeResponse& info);
  absl::Status SizeKvForDevices(const std::vector<absl::StatusOr<v1::DescribeResponse>>& described,
                                int64_t blocks_per_context);
  absl::Status ChooseTemplates();
  void BuildReplicas();
  absl::Status StartHttp();
  absl::Status StartGrpc();
  void HealthLoop();
  void ScaleOutLoop();
  void DiscoveryLoop();

  RouterConfig config_;
  std::shared_ptr<grpc::ServerCredentials> server_credentials_;
  std::optional<ClusterAuthenticator> cluster_;
  ModelConfig model_config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<std::string> workers_;
  std::vector<LayerRange> ranges_;
  std::optional<ChatTemplate> chat_template_;
  ReasoningParserKind reasoning_parser_ = ReasoningParserKind::kNone;
  std::string model_name_;

  WorkerRegistry registry_;
  ReplicaOptions replica_options_;
  std::vector<std::unique_ptr<Replica>> replicas_;  // grows only on the scaler thread
  std::unique_ptr<InferenceServiceImpl> service_;
  RouterMetrics metrics_;
  std::unique_ptr<ClusterMonitor> monitor_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<KServeService> kserve_;
  std::unique_ptr<RegistrationService> registration_;
  std::unique_ptr<grpc::Server> server_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;

  std::atomic<bool> stopping_{false};
  std::thread health_thread_;
  std::thread scaler_;
  std::thread discovery_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_ROUTER_H_
