#include "worker/link_factory.h"

#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shardserve {
namespace {

// What the joining thread and the link share: the thread may outlive the link (a join blocks
// until its own timeout), so neither owns the other.
struct JoinState {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::Status failed ABSL_GUARDED_BY(mu);
  absl::Status closed ABSL_GUARDED_BY(mu);
  std::shared_ptr<ActivationLink> link ABSL_GUARDED_BY(mu);

  // Joined, failed or closed: nothing more to wait for.
  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return done || !closed.ok(); }
};

class JoiningLink : public ActivationLink {
 public:
  JoiningLink(std::function<absl::StatusOr<std::unique_ptr<ActivationLink>>()> join,
              std::string peer, absl::Duration timeout)
      : state_(std::make_shared<JoinState>()), peer_(std::move(peer)), timeout_(timeout) {
    std::thread([state = state_, join = std::move(join)] {
      absl::StatusOr<std::unique_ptr<ActivationLink>> joined = join();
      absl::MutexLock lock(&state->mu);
      state->done = true;
      if (!joined.ok()) {
        state->failed = joined.status();
      } else if (!state->closed.ok()) {
        (*joined)->Close(state->closed);  // closed while joining: nobody will read it
      } else {
        state->link = std::move(*joined);
      }
    }).detach();
  }

  ~JoiningLink() override { Close(absl::CancelledError("link destroyed")); }

  absl::Status Send(uint64_t, ActivationTensor) override {
    return absl::FailedPreconditionError("a receiving link does not send");
  }

  absl::StatusOr<ActivationTensor> Recv(uint64_t step) override {
    std::shared_ptr<ActivationLink> link;
    {
      absl::MutexLock lock(&state_->mu);
      if (!state_->mu.AwaitWithTimeout(absl::Condition(state_.get(), &JoinState::Ready),
                                       timeout_)) {
        return absl::DeadlineExceededError(absl::StrCat(
            "the link from ", peer_, " was not joined within ", absl::FormatDuration(timeout_)));
      }
      if (!state_->closed.ok()) return state_->closed;
      if (!state_->failed.ok()) {
        return absl::UnavailableError(
            absl::StrCat("the link from ", peer_, " failed to join: ", state_->failed.message()));
      }
      link = state_->link;
    }
    return link->Recv(step);
  }

  LinkCounters counters() const override {
    std::shared_ptr<ActivationLink> link;
    {
      absl::MutexLock lock(&state_->mu);
      link = state_->link;
    }
    if (link != nullptr) return link->counters();
    return LinkCounters{.direction = "recv", .peer = peer_};
  }

  void Close(const absl::Status& reason) override {
    std::shared_ptr<ActivationLink> link;
    {
      absl::MutexLock lock(&state_->mu);
      if (state_->closed.ok()) {
        state_->closed = reason.ok() ? absl::CancelledError("link closed") : reason;
      }
      link = state_->link;
    }
    if (link != nullptr) link->Close(reason);
  }

 private:
  const std::shared_ptr<JoinState> state_;
  const std::string peer_;
  const absl::Duration timeout_;
};

}  // namespace

std::unique_ptr<ActivationLink> NewJoiningLink(
    std::function<absl::StatusOr<std::unique_ptr<ActivationLink>>()> join, std::string peer,
    absl::Duration timeout) {
  return std::make_unique<JoiningLink>(std::move(join), std::move(peer), timeout);
}

}  // namespace shardserve
