// WorkerService: the gRPC face of one pipeline stage.
//
// Holds at most one loaded shard (a StageRuntime) at a time; LoadShard replaces it. The
// previous stage's Activations stream fills a local mailbox that the runtime receives from;
// ConnectNext opens the gRPC stream to the next stage. Steps runs plans in arrival order on the
// calling stream's thread; activations leave on the runtime's sender thread, whose failures
// Steps reports on its stream as soon as they happen. Health: the default service ("") is SERVING
// once the server runs (it can take a shard); "shardserve.v1.WorkerService" is SERVING only while a
// shard is loaded and the worker is not draining.
//
// Leases: the router that loads the shard holds the worker (LoadShardRequest.owner) while its
// steps keep coming; others are refused with FAILED_PRECONDITION (without naming the holder),
// so routers sharing a pool of workers never double-book one. Callers that name no owner are
// refused only while a lease is live. The activation stream from the previous stage must name
// the same owner. When the holder's last Steps stream closes, or its lease runs out without a
// step, the worker drops that router's sequences and their KV blocks (logged, and counted in
// shardserve_worker_lease_releases_total).
//
// Every RPC first checks the cluster credential (WorkerOptions::auth): strangers get
// UNAUTHENTICATED or PERMISSION_DENIED and nothing else.
//
// Device faults: when the backend reports a failure it cannot recover from (Backend::Health: a
// sticky CUDA error, a lost device) after a step or a load, the worker is done computing. Both
// health entries turn NOT_SERVING (so a liveness probe restarts the process), the failed step
// and every later one answer UNAVAILABLE "device failed: ..." (the router fails the pipeline over
// and resumes its sequences elsewhere, as for a dead process), LoadShard is refused the same way
// (the router puts a spare in its place), and Stats.device_error says why. Errors of a link to
// another stage (a dead peer) only fail that pipeline: its links are made anew when it is
// re-planned.
//
// Shutdown (SIGTERM): BeginShutdown drains for good -- health NOT_SERVING, steps with sequences
// answered with UNAVAILABLE "worker is draining" (so the router moves them to another pipeline),
// LoadShard refused -- and the process waits until no router holds a Steps stream open
// (open_step_streams() == 0) or a grace period ends.
//
// All methods are thread-safe.
#ifndef SHARDSERVE_WORKER_WORKER_SERVICE_H_
#define SHARDSERVE_WORKER_WORKER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "common/cluster_auth.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/sim_stage.h"
#include "shardserve/v1/worker.grpc.pb.h"
#include "worker/activation_link.h"
#include "worker/device_faults.h"
#include "worker/link_factory.h"
#include "worker/stage_runtime.h"

namespace shardserve {

struct WorkerOptions {
  int threads = 1;
  absl::Duration recv_timeout = absl::Seconds(30);
  // Test hooks: faults injected on the link to the next stage.
  FaultOptions send_faults;
  // How long a router's lease lives without a step from it.
  absl::Duration lease_ttl = absl::Seconds(10);
  // Who may call (see common/cluster_auth.h); the default lets anyone (in-process tests).
  ClusterAuthenticator auth{"", false, /*insecure=*/true};
  // When set, LoadShard only loads model folders inside it (symlinks resolved).
  std::string model_root;
  // Set: this worker offers NCCL links (a CUDA backend in a build with NCCL).
  std::shared_ptr<LinkFactory> nccl;
  // Last stages sample where their logits are with this (the backend's own sampler); null: on
  // the host after a copy. Not used by simulated stages.
  LogitsSampler sampler;
  // Test hook: the service's backend, when it is this fault injector (--fault-device-after-steps);
  // the service counts its steps on it. Not owned.
  FaultyBackend* device_faults = nullptr;
  // Set: a simulated device (--backend sim). Shards are SimStages that take the profile's time
  // and need only the model's config.json; KV is bounded by the profile's memory.
  std::optional<SimOptions> sim;
};

class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  // `backend` must outlive the service.
  WorkerServiceImpl(Backend* backend, WorkerOptions options);
  ~WorkerServiceImpl() override;

  // Lets the service flip its health entries; call once the server is built.
  void SetHealth(grpc::HealthCheckServiceInterface* health);

  grpc::Status Describe(grpc::ServerContext*, const v1::DescribeRequest*,
                        v1::DescribeResponse*) override;
  grpc::Status LoadShard(grpc::ServerContext*, const v1::LoadShardRequest*,
                         v1::LoadShardResponse*) override;
  grpc::Status PrepareLink(grpc::ServerContext*, const v1::PrepareLinkRequest*,
                           v1::PrepareLinkResponse*) override;
  grpc::Status ConnectNext(grpc::ServerContext*, const v1::ConnectNextRequest*,
                           v1::ConnectNextResponse*) override;
  grpc::Status Activations(grpc::ServerContext*, grpc::ServerReader<v1::ActivationsRequest>*,
                           v1::ActivationsResponse*) override;
  grpc::Status Steps(grpc::ServerContext*,
                     grpc::ServerReaderWriter<v1::StepsResponse, v1::StepsRequest>*) override;
  grpc::Status Drain(grpc::ServerContext*, const v1::DrainRequest*, v1::DrainResponse*) override;
  grpc::Status Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse*) override;

  // Drains for good: no shard is loaded again.
  void BeginShutdown();
  // Ends a lease that ran out without a step: drops its sequences. Called periodically by the
  // lease reaper thread; public for tests.
  void ExpireLeases();
  // Steps streams open now (a connected router holds one per pipeline using this worker).
  int open_step_streams() const;

 private:
  // Everything tied to one loaded shard; replaced as a unit.
  struct Shard {
    std::string model_path;
    std::string model_name;  // the router's served name, for metric labels
    // The device's cost model (Describe): the sim profile, or cpu-here calibrated at load.
    DeviceProfile cost;
    std::shared_ptr<ActivationLink> inbox;  // filled by Activations; set before publication
    // Replaced by ConnectNext (under the service's load_mu_) while Stats and the runtime's
    // sender use them.
    mutable absl::Mutex links_mu;
    std::shared_ptr<ActivationLink> next ABSL_GUARDED_BY(links_mu);         // to the next stage
    std::shared_ptr<ActivationLink> next_faulty ABSL_GUARDED_BY(links_mu);  // wraps `next`
    // From the previous stage when that hop is not gRPC (PrepareLink); else `inbox`.
    std::shared_ptr<ActivationLink> prev ABSL_GUARDED_BY(links_mu);
    // Last, so that it is destroyed first: its sender thread may be using the links.
    std::unique_ptr<StageRuntime> runtime;

    // Fails both links with `why`, so nothing waits on them (a step in progress ends).
    void CloseLinks(const absl::Status& why) {
      if (inbox) inbox->Close(why);
      absl::MutexLock lock(&links_mu);
      if (next) next->Close(why);
      if (prev) prev->Close(why);
    }
  };

  std::shared_ptr<Shard> current() const;
  // FAILED_PRECONDITION when another router holds a live lease; otherwise `owner` (when not
  // empty) holds it from now for lease_ttl.
  grpc::Status TakeLease(const std::string& owner) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The cluster credential check, counted in metrics when it refuses.
  grpc::Status Authorize(const grpc::ServerContext* context) const;
  absl::StatusOr<std::pair<std::string, ModelConfig>> CheckLoadRequest(
      const v1::LoadShardRequest& req) const;
  std::shared_ptr<Shard> DetachShard();
  // One plan of a Steps stream of `owner`: lease, shard and draining checks, then Execute.
  absl::StatusOr<v1::StepsResponse> RunStep(const std::shared_ptr<Shard>& shard,
                                            const std::string& owner, const v1::StepPlan& plan);
  // A Steps stream of `owner` ended: its last one ends the lease and drops its sequences.
  void CloseStepStream(const std::string& owner);
  // `path` resolved, or INVALID_ARGUMENT that says nothing of what exists outside the root.
  absl::StatusOr<std::string> ResolveModelPath(const std::string& path) const;
  // Takes `owner`'s lease and the loaded shard (FAILED_PRECONDITION without one); for the link
  // set-up calls, under load_mu_.
  grpc::Status LeasedShard(const std::string& owner, std::shared_ptr<Shard>* shard)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(load_mu_);
  // The link factory for `kind`, or FAILED_PRECONDITION saying why this worker does not offer
  // it; checks the set-up protocol's version too.
  absl::StatusOr<LinkFactory*> LinkFactoryFor(v1::LinkKind kind, uint32_t version) const;
  // Drops the current shard's sequences for `reason` ("expired", "stream_closed").
  void ReleaseSequences(const std::shared_ptr<Shard>& shard, const std::string& reason);
  void UpdateHealth() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Asks the backend whether it can still compute (after a step or load failed, under
  // backend_mu_); on a device fault turns the worker NOT_SERVING for good. The fault, or OK.
  absl::Status CheckDevice() ABSL_EXCLUSIVE_LOCKS_REQUIRED(backend_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  // UNAVAILABLE "device failed: ..." once the device has failed; else OK.
  absl::Status DeviceFailureLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Backend* const backend_;
  const WorkerOptions options_;
  const double speed_gflops_;
  // Serialises LoadShard and ConnectNext: the shard and its links change one call at a time.
  absl::Mutex load_mu_;
  // The backend has one issuing thread at a time: a step's Execute and a shard's load or unload
  // never overlap (held around each).
  absl::Mutex backend_mu_;
  mutable absl::Mutex mu_;
  std::shared_ptr<Shard> shard_ ABSL_GUARDED_BY(mu_);
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status device_error_ ABSL_GUARDED_BY(mu_);  // the device's fault; sticky
  int open_step_streams_ ABSL_GUARDED_BY(mu_) = 0;
  std::string lease_owner_ ABSL_GUARDED_BY(mu_);
  absl::Time lease_until_ ABSL_GUARDED_BY(mu_);
  grpc::HealthCheckServiceInterface* health_ ABSL_GUARDED_BY(mu_) = nullptr;
  // The lease reaper: ExpireLeases every lease_ttl / 4 (at most 1 s) until destruction.
  absl::Mutex reaper_mu_;
  bool stop_reaper_ ABSL_GUARDED_BY(reaper_mu_) = false;
  std::thread reaper_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_WORKER_SERVICE_H_
