#include "worker/grpc_link.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/cluster_auth.h"
#include "common/grpc_util.h"
#include "common/logging.h"
#include "common/status.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve {
namespace {

namespace v1 = ::shardserve::v1;

class GrpcSendLink : public ActivationLink {
 public:
  GrpcSendLink(std::string peer, std::string owner, std::shared_ptr<grpc::Channel> channel)
      : peer_(std::move(peer)),
        owner_(std::move(owner)),
        stub_(v1::WorkerService::NewStub(channel)) {}

  ~GrpcSendLink() override { Close(absl::CancelledError("link closed")); }

  absl::Status Open() {
    absl::MutexLock lock(&mu_);
    context_ = std::make_unique<grpc::ClientContext>();
    AttachClusterCredential(context_.get());
    if (!owner_.empty()) context_->AddMetadata(kOwnerMetadata, owner_);
    // A long-lived stream: liveness comes from keepalive and from the receiver's Recv timeout.
    writer_ = stub_->Activations(context_.get(), &response_);
    if (writer_ == nullptr) return absl::UnavailableError("cannot open activation stream");
    return absl::OkStatus();
  }

  // Writes are serialised by write_mu_, held across the (possibly blocking) Write; mu_ is not,
  // so Close can cancel a write stuck on flow control.
  absl::Status Send(uint64_t step, ActivationTensor tensor) override {
    v1::ActivationsRequest msg;
    msg.set_step_id(step);
    msg.set_rows(tensor.rows);
    msg.set_cols(tensor.cols);
    msg.set_data(reinterpret_cast<const char*>(tensor.data.data()),
                 tensor.data.size() * sizeof(float));
    absl::MutexLock write_lock(&write_mu_);
    {
      absl::MutexLock lock(&mu_);
      if (!closed_.ok()) return closed_;
    }
    const bool written = writer_->Write(msg);
    absl::MutexLock lock(&mu_);
    if (!closed_.ok()) return closed_;
    if (!written) {
      closed_ = absl::UnavailableError(
          absl::StrCat("activation link to next stage ", peer_, " is broken"));
      return closed_;
    }
    counters_.messages++;
    counters_.bytes += msg.data().size();
    return absl::OkStatus();
  }

  absl::StatusOr<ActivationTensor> Recv(uint64_t) override {
    return absl::FailedPreconditionError("the sending end of a gRPC link cannot receive");
  }

  LinkCounters counters() const override {
    absl::MutexLock lock(&mu_);
    LinkCounters c = counters_;
    c.direction = "send";
    c.peer = peer_;
    return c;
  }

  void Close(const absl::Status& reason) override {
    {
      absl::MutexLock lock(&mu_);
      if (!closed_.ok()) return;
      closed_ = reason.ok() ? absl::CancelledError("link closed") : reason;
      // Thread-safe, and ends a Write blocked on flow control.
      if (writer_ != nullptr) context_->TryCancel();
    }
    // Finish must not overlap a Write: wait for the one in flight (now cancelled) to return.
    absl::MutexLock write_lock(&write_mu_);
    if (writer_ != nullptr && !finished_) {
      finished_ = true;
      (void)writer_->Finish();
    }
  }

 private:
  const std::string peer_;
  const std::string owner_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  absl::Mutex write_mu_;  // one Write (or the final Finish) at a time
  bool finished_ ABSL_GUARDED_BY(write_mu_) = false;
  mutable absl::Mutex mu_;
  // Set once by Open, before the link is shared.
  std::unique_ptr<grpc::ClientContext> context_;
  v1::ActivationsResponse response_;
  std::unique_ptr<grpc::ClientWriter<v1::ActivationsRequest>> writer_;
  absl::Status closed_ ABSL_GUARDED_BY(mu_);
  LinkCounters counters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<ActivationLink>> NewGrpcSendLink(const std::string& next_address,
                                                                const std::string& owner,
                                                                absl::Duration connect_timeout) {
  auto channel = NewClusterChannel(next_address);
  if (!channel->WaitForConnected(absl::ToChronoTime(absl::Now() + connect_timeout))) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect the activation link to next stage ", next_address));
  }
  auto link = std::make_unique<GrpcSendLink>(next_address, owner, channel);
  RETURN_IF_ERROR(link->Open());
  return link;
}

}  // namespace shardserve
