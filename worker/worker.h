// Worker: one shardserve-worker process. Owns the compute backend, the WorkerService behind its
// gRPC server, the optional /metrics server and the announcer thread (--router), and the drain
// on shutdown.
//
//   auto worker = Worker::Create(config);  // credentials, backend
//   worker->Serve();                        // binds the ports, writes --port-file, announces
//   worker->DrainAndStop(signals);          // on SIGTERM: let routers move their sequences off
//
// Threads: gRPC's server threads run the service; the announcer (only with --router) sends a
// RegisterWorker heartbeat until DrainAndStop joins it.
#ifndef SHARDSERVE_WORKER_WORKER_H_
#define SHARDSERVE_WORKER_WORKER_H_

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <atomic>
#include <memory>
#include <thread>

#include "absl/status/statusor.h"
#include "common/metrics.h"
#include "kernels/backend.h"
#include "worker/worker_config.h"
#include "worker/worker_service.h"

namespace shardserve {

class Worker {
 public:
  // INVALID_ARGUMENT naming the flag on bad TLS files, a missing credential or bad addresses;
  // the backend's error (e.g. no usable GPU) otherwise.
  static absl::StatusOr<std::unique_ptr<Worker>> Create(WorkerConfig config);
  ~Worker();

  // Binds --listen (an error naming the flag and port when taken) and --metrics-listen, writes
  // --port-file, and starts announcing to --router.
  absl::Status Serve();

  // NOT_SERVING, steps refused as draining; waits up to --drain-grace-s (a second signal in
  // `signals` ends the wait) for routers to let go, then stops the servers.
  void DrainAndStop(const sigset_t& signals);

 private:
  explicit Worker(WorkerConfig config) : config_(std::move(config)) {}
  absl::Status StartMetrics();
  void AnnounceLoop();

  WorkerConfig config_;
  std::shared_ptr<grpc::ServerCredentials> server_credentials_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<FaultyBackend> faulty_backend_;  // wraps backend_ (--fault-device-after-steps)
  std::unique_ptr<WorkerServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  MetricsServer metrics_;
  std::atomic<bool> stopping_{false};
  std::thread announcer_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WORKER_H_
