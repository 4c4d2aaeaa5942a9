#include "worker/activation_link.h"

#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shardserve {
namespace {

class LocalLink : public ActivationLink {
 public:
  LocalLink(std::string peer, absl::Duration timeout, int capacity)
      : peer_(std::move(peer)), timeout_(timeout), capacity_(capacity) {}

  absl::Status Send(uint64_t step, ActivationTensor tensor) override {
    absl::MutexLock lock(&mu_);
    if (!closed_.ok()) return closed_;
    if (static_cast<int>(pending_.size()) >= capacity_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("activation mailbox from ", peer_, " holds ", capacity_, " steps"));
    }
    if (pending_.count(step)) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate activations for step ", step));
    }
    recv_.messages++;
    recv_.bytes += tensor.data.size() * sizeof(float);
    pending_.emplace(step, std::move(tensor));
    return absl::OkStatus();
  }

  absl::StatusOr<ActivationTensor> Recv(uint64_t step) override {
    absl::MutexLock lock(&mu_);
    auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pending_.count(step) > 0 || !closed_.ok();
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&ready), timeout_)) {
      return absl::DeadlineExceededError(absl::StrCat("no activations for step ", step, " from ",
                                                      peer_, " within ",
                                                      absl::FormatDuration(timeout_)));
    }
    auto it = pending_.find(step);
    if (it == pending_.end()) return closed_;
    ActivationTensor t = std::move(it->second);
    pending_.erase(it);
    return t;
  }

  LinkCounters counters() const override {
    absl::MutexLock lock(&mu_);
    LinkCounters c = recv_;
    c.direction = "recv";
    c.peer = peer_;
    return c;
  }

  void Close(const absl::Status& reason) override {
    absl::MutexLock lock(&mu_);
    closed_ = reason.ok() ? absl::CancelledError("link closed") : reason;
    pending_.clear();
  }

 private:
  const std::string peer_;
  const absl::Duration timeout_;
  const int capacity_;
  mutable absl::Mutex mu_;
  std::map<uint64_t, ActivationTensor> pending_ ABSL_GUARDED_BY(mu_);
  absl::Status closed_ ABSL_GUARDED_BY(mu_);
  LinkCounters recv_ ABSL_GUARDED_BY(mu_);
};

class FaultyLink : public ActivationLink {
 public:
  FaultyLink(ActivationLink* base, FaultOptions options) : base_(base), options_(options) {}

  absl::Status Send(uint64_t step, ActivationTensor tensor) override {
    int64_t n;
    {
      absl::MutexLock lock(&mu_);
      n = sends_++;
    }
    if (options_.fail_after_sends >= 0 && n >= options_.fail_after_sends) {
      return absl::UnavailableError(absl::StrCat("injected link failure at send ", n));
    }
    if (options_.send_delay > absl::ZeroDuration()) absl::SleepFor(options_.send_delay);
    if (options_.corrupt_shape && tensor.rows > 0) {
      tensor.rows -= 1;
      tensor.data.resize(tensor.rows * tensor.cols);
    }
    return base_->Send(step, std::move(tensor));
  }
  absl::StatusOr<ActivationTensor> Recv(uint64_t step) override { return base_->Recv(step); }
  LinkCounters counters() const override { return base_->counters(); }
  void Close(const absl::Status& reason) override { base_->Close(reason); }

 private:
  ActivationLink* const base_;
  const FaultOptions options_;
  absl::Mutex mu_;
  int64_t sends_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::unique_ptr<ActivationLink> NewLocalLink(std::string peer, absl::Duration recv_timeout,
                                             int capacity) {
  return std::make_unique<LocalLink>(std::move(peer), recv_timeout, capacity);
}

std::unique_ptr<ActivationLink> NewFaultyLink(ActivationLink* base, FaultOptions options) {
  return std::make_unique<FaultyLink>(base, options);
}

}  // namespace shardserve
