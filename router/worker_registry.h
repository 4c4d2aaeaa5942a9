// WorkerRegistry: workers that announced themselves to this router (shardserve-worker --router),
// and which addresses pipelines use.
//
// Addresses the pipelines start with are claimed; further --workers are listed spares. A worker
// whose announcements keep coming (within `ttl` of the last), or a listed one, that no pipeline
// claims and that is not cooling down (it was found leased by another router) is a spare;
// ClaimSpare hands one to a replica whose stage is unreachable, and Release gives the old address
// back (should it announce itself again, it becomes a spare). RegistrationService is the gRPC face
// (RouterControlService).
//
// Time: every read of the current time goes through the `now` clock given to the constructor
// (absl::Now by default), so tests can drive expiry and cooldowns with a fake clock.
//
// Thread-safe.
#ifndef SHARDSERVE_ROUTER_WORKER_REGISTRY_H_
#define SHARDSERVE_ROUTER_WORKER_REGISTRY_H_

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/cluster_auth.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve {

class WorkerRegistry {
 public:
  // The current time, as the registry reads it. Called with the registry's lock held: it must be
  // thread-safe and must not call back into the registry.
  using Clock = std::function<absl::Time()>;

  // `now`: the clock every expiry (`ttl`) and cooldown is measured with; absl::Now by default.
  explicit WorkerRegistry(absl::Duration ttl = absl::Seconds(3), Clock now = absl::Now)
      : ttl_(ttl), now_(now ? std::move(now) : Clock(absl::Now)) {}

  // Marks `address` used by a pipeline.
  void Claim(const std::string& address);
  // A pipeline no longer uses `address`. A worker that announced itself is a spare again once it
  // announces itself again; a listed one (AddListed) once `cooldown` has passed.
  void Release(const std::string& address, absl::Duration cooldown = absl::ZeroDuration());
  // A worker named in --workers beyond those the pipelines start with: a spare that never
  // expires.
  void AddListed(const std::string& address);
  // Records an announcement; returns whether a pipeline uses the address.
  bool Heartbeat(const std::string& address);
  // A live spare, now claimed; nullopt when none.
  std::optional<std::string> ClaimSpare();
  // Live spares, sorted.
  std::vector<std::string> Spares() const;

 private:
  const absl::Duration ttl_;
  const Clock now_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, absl::Time> last_seen_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> claimed_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> listed_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, absl::Time> cooldown_until_ ABSL_GUARDED_BY(mu_);
};

class RegistrationService final : public v1::RouterControlService::Service {
 public:
  // `auth`: who may announce a worker (the cluster credential); must outlive the service.
  RegistrationService(WorkerRegistry* registry, absl::Duration heartbeat,
                      const ClusterAuthenticator* auth)
      : registry_(registry), heartbeat_(heartbeat), auth_(auth) {}

  // UNAUTHENTICATED / PERMISSION_DENIED without the cluster credential; INVALID_ARGUMENT when
  // the address is not host:port.
  grpc::Status RegisterWorker(grpc::ServerContext*, const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override;

 private:
  WorkerRegistry* const registry_;
  const absl::Duration heartbeat_;
  const ClusterAuthenticator* const auth_;
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_WORKER_REGISTRY_H_
