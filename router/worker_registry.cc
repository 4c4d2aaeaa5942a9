#include "router/worker_registry.h"

#include <algorithm>

#include "absl/strings/numbers.h"
#include "common/logging.h"

namespace shardserve {

void WorkerRegistry::Claim(const std::string& address) {
  absl::MutexLock lock(&mu_);
  claimed_.insert(address);
}

void WorkerRegistry::Release(const std::string& address, absl::Duration cooldown) {
  absl::MutexLock lock(&mu_);
  claimed_.erase(address);
  last_seen_.erase(address);  // a spare only once it announces itself again
  if (cooldown > absl::ZeroDuration()) cooldown_until_[address] = now_() + cooldown;
}

void WorkerRegistry::AddListed(const std::string& address) {
  absl::MutexLock lock(&mu_);
  listed_.insert(address);
}

bool WorkerRegistry::Heartbeat(const std::string& address) {
  absl::MutexLock lock(&mu_);
  if (!last_seen_.contains(address) && !claimed_.contains(address)) {
    LOG(INFO) << "worker " << address << " registered as a spare";
  }
  last_seen_[address] = now_();
  return claimed_.contains(address);
}

std::optional<std::string> WorkerRegistry::ClaimSpare() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = now_();
  std::optional<std::string> best;
  auto consider = [&](const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (claimed_.contains(address)) return;
    if (auto it = cooldown_until_.find(address); it != cooldown_until_.end() && now < it->second) {
      return;
    }
    if (!best || address < *best) best = address;
  };
  for (const auto& [address, seen] : last_seen_) {
    if (now - seen <= ttl_) consider(address);
  }
  for (const std::string& address : listed_) consider(address);
  if (best) claimed_.insert(*best);
  return best;
}

std::vector<std::string> WorkerRegistry::Spares() const {
  absl::MutexLock lock(&mu_);
  const absl::Time now = now_();
  std::vector<std::string> out;
  for (const auto& [address, seen] : last_seen_) {
    if (!claimed_.contains(address) && now - seen <= ttl_) out.push_back(address);
  }
  for (const std::string& address : listed_) {
    if (!claimed_.contains(address) && !last_seen_.contains(address)) out.push_back(address);
  }
  std::sort(out.begin(), out.end());
  return out;
}

grpc::Status RegistrationService::RegisterWorker(grpc::ServerContext* context,
                                                 const v1::RegisterWorkerRequest* request,
                                                 v1::RegisterWorkerResponse* response) {
  if (auth_ != nullptr) {
    if (grpc::Status s = auth_->Check(context); !s.ok()) return s;
  }
  const std::string& a = request->address();
  const size_t colon = a.rfind(':');
  int port = 0;
  if (a.empty() || a.size() > 256 || colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(a.substr(colon + 1), &port) || port <= 0 || port > 65535) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "address: '" + a.substr(0, 64) + "' is not host:port");
  }
  response->set_serving(registry_->Heartbeat(a));
  response->set_heartbeat_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(heartbeat_)));
  return grpc::Status::OK;
}

}  // namespace shardserve
