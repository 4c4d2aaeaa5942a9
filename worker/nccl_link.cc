#include "worker/nccl_link.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <map>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/wire.h"
#include "kernels/cuda/cuda_handles.h"

namespace shardserve {

static_assert(sizeof(ncclUniqueId::internal) == kNcclLinkIdBytes,
              "kNcclLinkIdBytes (common/wire.h) is NCCL_UNIQUE_ID_BYTES");
namespace {

constexpr absl::Duration kPollInterval = absl::Microseconds(50);

absl::Status NcclStatus(ncclResult_t r, absl::string_view what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

struct Header {
  int64_t step = 0;
  int64_t rows = 0;
  int64_t cols = 0;
};

class NcclLink : public ActivationLink {
 public:
  NcclLink(const NcclLinkOptions& o, ncclComm_t comm, CudaStream stream, CudaEvent event)
      : options_(o), comm_(comm), stream_(std::move(stream)), event_(std::move(event)) {}

  ~NcclLink() override {
    if (cudaError_t e = cudaSetDevice(options_.device); e != cudaSuccess) {
      LOG(WARNING) << "NCCL link shutdown: cudaSetDevice: " << cudaGetErrorString(e);
    }
    Abort(absl::CancelledError("link destroyed"));
  }

  absl::Status Send(uint64_t step, ActivationTensor tensor) override {
    if (options_.role == NcclLinkOptions::Role::kReceiver) {
      return absl::FailedPreconditionError("Send on the receiving end of an NCCL link");
    }
    if (tensor.rows < 0 || tensor.cols <= 0 ||
        static_cast<int64_t>(tensor.data.size()) != tensor.rows * tensor.cols) {
      return absl::InvalidArgumentError(absl::StrCat("activation tensor of ", tensor.data.size(),
                                                     " values is not ", tensor.rows, " x ",
                                                     tensor.cols));
    }
    const absl::Time deadline = absl::Now() + options_.timeout;
    // LockWhenWithDeadline holds the mutex on return whatever it returns.
    if (!io_mu_.LockWhenWithDeadline(absl::Condition::kTrue, deadline)) {
      io_mu_.Unlock();
      return absl::DeadlineExceededError(absl::StrCat("NCCL link to ", options_.peer, " busy"));
    }
    absl::Status st = SendLocked(step, tensor, deadline);
    io_mu_.Unlock();
    if (!st.ok()) return Break(st);
    absl::MutexLock lock(&mu_);
    counters_.messages++;
    counters_.bytes += tensor.data.size() * sizeof(float);
    if (options_.role == NcclLinkOptions::Role::kLoopback) {
      mailbox_[step] = std::move(loopback_);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ActivationTensor> Recv(uint64_t step) override {
    if (options_.role == NcclLinkOptions::Role::kSender) {
      return absl::FailedPreconditionError("Recv on the sending end of an NCCL link");
    }
    const absl::Time deadline = absl::Now() + options_.timeout;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (options_.role == NcclLinkOptions::Role::kLoopback) {
          // Loopback tensors arrive through Send; just wait for ours.
          auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return mailbox_.count(step) > 0 || !broken_.ok();
          };
          mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
        }
        if (auto t = Take(step); t.has_value()) return std::move(*t);
        if (!broken_.ok()) return broken_;
        if (options_.role == NcclLinkOptions::Role::kLoopback) return TimedOut(step);
      }
      // LockWhenWithDeadline holds the mutex on return whatever it returns.
      if (!io_mu_.LockWhenWithDeadline(absl::Condition::kTrue, deadline)) {
        io_mu_.Unlock();
        return TimedOut(step);
      }
      {
        absl::MutexLock lock(&mu_);  // another caller may have received our step meanwhile
        if (mailbox_.count(step) > 0 || !broken_.ok()) {
          io_mu_.Unlock();
          continue;
        }
      }
      Header h;
      ActivationTensor t;
      absl::Status st = ReceiveLocked(deadline, &h, &t);
      io_mu_.Unlock();
      if (!st.ok()) return Break(st);
      absl::MutexLock lock(&mu_);
      counters_.messages++;
      counters_.bytes += t.data.size() * sizeof(float);
      if (!mailbox_.emplace(static_cast<uint64_t>(h.step), std::move(t)).second) {
        return Break(absl::DataLossError(
            absl::StrCat("duplicate activations for step ", h.step, " from ", options_.peer)));
      }
    }
  }

  LinkCounters counters() const override {
    absl::MutexLock lock(&mu_);
    LinkCounters c = counters_;
    c.direction = options_.role == NcclLinkOptions::Role::kSender ? "send" : "recv";
    c.peer = options_.peer;
    return c;
  }

  void Close(const absl::Status& reason) override {
    Abort(reason.ok() ? absl::CancelledError("link closed") : reason);
  }

 private:
  std::optional<ActivationTensor> Take(uint64_t step) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = mailbox_.find(step);
    if (it == mailbox_.end()) return std::nullopt;
    ActivationTensor t = std::move(it->second);
    mailbox_.erase(it);
    return t;
  }

  absl::Status TimedOut(uint64_t step) {
    return absl::DeadlineExceededError(absl::StrCat("no activations for step ", step, " from ",
                                                    options_.peer, " within ",
                                                    absl::FormatDuration(options_.timeout)));
  }

  // Records the failure, aborts the communicator and returns the status every later call gets.
  absl::Status Break(const absl::Status& st) {
    LOG(ERROR) << "NCCL link with " << options_.peer << ": " << st.message();
    Abort(st);
    absl::MutexLock lock(&mu_);
    return broken_;
  }

  void Abort(const absl::Status& reason) {
    ncclComm_t comm = nullptr;
    {
      absl::MutexLock lock(&mu_);
      if (broken_.ok()) broken_ = reason;
      comm = std::exchange(comm_, nullptr);
    }
    // Abort does not wait for in-flight operations, so it is safe while another thread polls
    // (that thread then sees the comm's error and returns).
    if (comm != nullptr) {
      const ncclResult_t r = ncclCommAbort(comm);
      if (r != ncclSuccess) LOG(WARNING) << "ncclCommAbort: " << ncclGetErrorString(r);
    }
  }

  ncclComm_t comm() {
    absl::MutexLock lock(&mu_);
    return comm_;
  }

  // Waits until the operations enqueued on the stream so far are done, polling NCCL's async
  // error and the deadline.
  absl::Status Wait(ncclComm_t comm, absl::Time deadline, absl::string_view what) {
    ncclResult_t async = ncclInProgress;
    while (async == ncclInProgress) {  // a non-blocking call may still be enqueuing
      RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError"));
      if (async == ncclInProgress && absl::Now() > deadline) break;
      if (async == ncclInProgress) absl::SleepFor(kPollInterval);
    }
    if (async != ncclSuccess && async != ncclInProgress) return NcclStatus(async, what);
    RETURN_IF_ERROR(event_.Record(stream_.get()));
    for (;;) {
      ASSIGN_OR_RETURN(const bool done, event_.Done());
      if (done) return absl::OkStatus();
      RETURN_IF_ERROR(NcclStatus(ncclCommGetAsyncError(comm, &async), "ncclCommGetAsyncError"));
      RETURN_IF_ERROR(NcclStatus(async, what));
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat(what, " with ", options_.peer,
                                                        " did not finish within ",
                                                        absl::FormatDuration(options_.timeout)));
      }
      absl::SleepFor(kPollInterval);
    }
  }

  absl::Status Reserve(DeviceMemory* m, size_t bytes) {
    if (m->size() >= bytes) return absl::OkStatus();
    ASSIGN_OR_RETURN(*m, DeviceMemory::Allocate(bytes));
    return absl::OkStatus();
  }

  // Binds the link's device; the communicator, or the link's error once it is broken.
  absl::StatusOr<ncclComm_t> BoundComm() {
    RETURN_IF_ERROR(CudaStatus(cudaSetDevice(options_.device), "cudaSetDevice"));
    if (ncclComm_t c = comm(); c != nullptr) return c;
    absl::MutexLock lock(&mu_);
    if (broken_.ok()) return absl::FailedPreconditionError("the NCCL link is closed");
    return broken_;
  }

  absl::Status SendLocked(uint64_t step, const ActivationTensor& t, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu_) {
    ASSIGN_OR_RETURN(ncclComm_t c, BoundComm());
    const Header h{static_cast<int64_t>(step), t.rows, t.cols};
    const size_t bytes = t.data.size() * sizeof(float);
    RETURN_IF_ERROR(Reserve(&tx_header_, sizeof(Header)));
    RETURN_IF_ERROR(Reserve(&tx_, bytes));
    cudaStream_t s = stream_.get();
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(tx_header_.get(), &h, sizeof(h), cudaMemcpyHostToDevice, s), "header"));
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(tx_.get(), t.data.data(), bytes, cudaMemcpyHostToDevice, s), "payload"));
    const bool loop = options_.role == NcclLinkOptions::Role::kLoopback;
    const int peer = loop ? 0 : 1;
    if (loop) {
      RETURN_IF_ERROR(Reserve(&rx_header_, sizeof(Header)));
      RETURN_IF_ERROR(Reserve(&rx_, bytes));
    }
    RETURN_IF_ERROR(NcclStatus(ncclGroupStart(), "ncclGroupStart"));
    absl::Status st = NcclStatus(ncclSend(tx_header_.get(), sizeof(Header), ncclUint8, peer, c, s),
                                 "ncclSend header");
    if (st.ok() && t.data.size() > 0) {
      st = NcclStatus(ncclSend(tx_.get(), t.data.size(), ncclFloat32, peer, c, s), "ncclSend");
    }
    if (st.ok() && loop) {
      st = NcclStatus(ncclRecv(rx_header_.get(), sizeof(Header), ncclUint8, peer, c, s),
                      "ncclRecv header");
      if (st.ok() && t.data.size() > 0) {
        st = NcclStatus(ncclRecv(rx_.get(), t.data.size(), ncclFloat32, peer, c, s), "ncclRecv");
      }
    }
    const absl::Status end = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(end);
    RETURN_IF_ERROR(Wait(c, deadline, "NCCL send"));
    if (loop) {
      ActivationTensor back;
      Header got;
      RETURN_IF_ERROR(CopyOut(&got, &back, t.rows, t.cols, deadline));
      if (got.step != h.step || got.rows != h.rows || got.cols != h.cols) {
        return absl::DataLossError("loopback header differs from the one sent");
      }
      absl::MutexLock lock(&mu_);
      loopback_ = std::move(back);
    }
    return absl::OkStatus();
  }

  // Copies the received header and `rows x cols` payload to the host.
  absl::Status CopyOut(Header* h, ActivationTensor* t, int64_t rows, int64_t cols,
                       absl::Time deadline) {
    cudaStream_t s = stream_.get();
    t->rows = rows;
    t->cols = cols;
    t->data.resize(static_cast<size_t>(rows * cols));
    RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(h, rx_header_.get(), sizeof(Header), cudaMemcpyDeviceToHost, s),
                   "header to host"));
    if (!t->data.empty()) {
      RETURN_IF_ERROR(
          CudaStatus(cudaMemcpyAsync(t->data.data(), rx_.get(), t->data.size() * sizeof(float),
                                     cudaMemcpyDeviceToHost, s),
                     "payload to host"));
    }
    return CudaStatus(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }

  absl::Status ReceiveLocked(absl::Time deadline, Header* h, ActivationTensor* t)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu_) {
    ASSIGN_OR_RETURN(ncclComm_t c, BoundComm());
    cudaStream_t s = stream_.get();
    RETURN_IF_ERROR(Reserve(&rx_header_, sizeof(Header)));
    RETURN_IF_ERROR(
        NcclStatus(ncclRecv(rx_header_.get(), sizeof(Header), ncclUint8, 0, c, s), "ncclRecv"));
    RETURN_IF_ERROR(Wait(c, deadline, "NCCL receive (header)"));
    RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(h, rx_header_.get(), sizeof(Header), cudaMemcpyDeviceToHost, s),
                   "header to host"));
    RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(s), "cudaStreamSynchronize"));
    if (h->rows < 0 || h->cols <= 0 || h->step < 0 || h->rows > options_.max_elements / h->cols) {
      return absl::DataLossError(absl::StrCat("bad activation header from ", options_.peer,
                                              ": step ", h->step, ", ", h->rows, " x ", h->cols));
    }
    const size_t n = static_cast<size_t>(h->rows * h->cols);
    RETURN_IF_ERROR(Reserve(&rx_, n * sizeof(float)));
    if (n > 0) {
      RETURN_IF_ERROR(NcclStatus(ncclRecv(rx_.get(), n, ncclFloat32, 0, c, s), "ncclRecv"));
      RETURN_IF_ERROR(Wait(c, deadline, "NCCL receive"));
    }
    Header again;
    return CopyOut(&again, t, h->rows, h->cols, deadline);
  }

  const NcclLinkOptions options_;
  mutable absl::Mutex mu_;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_);
  absl::Status broken_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, ActivationTensor> mailbox_ ABSL_GUARDED_BY(mu_);
  ActivationTensor loopback_ ABSL_GUARDED_BY(mu_);
  LinkCounters counters_ ABSL_GUARDED_BY(mu_);

  absl::Mutex io_mu_;  // serialises transfers; the buffers and stream below belong to its holder
  CudaStream stream_;
  CudaEvent event_;
  DeviceMemory tx_header_, tx_, rx_header_, rx_;
};

}  // namespace

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  RETURN_IF_ERROR(NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"));
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<ActivationLink>> NewNcclLink(const std::string& unique_id,
                                                            const NcclLinkOptions& options) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL unique id has ", unique_id.size(),
                                                   " bytes, expected ", sizeof(id.internal)));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || options.device < 0 || options.device >= count) {
    return absl::UnavailableError(
        absl::StrCat("NCCL link: CUDA device ", options.device, " is not available"));
  }
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"));
  ASSIGN_OR_RETURN(CudaStream stream, CudaStream::Create());
  ASSIGN_OR_RETURN(CudaEvent event, CudaEvent::Create());

  const bool loop = options.role == NcclLinkOptions::Role::kLoopback;
  const int nranks = loop ? 1 : 2;
  const int rank = options.role == NcclLinkOptions::Role::kReceiver ? 1 : 0;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, nranks, id, rank, &config);
  const absl::Time deadline = absl::Now() + options.timeout;
  while (r == ncclInProgress && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
    if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) break;
  }
  if (r != ncclSuccess) {
    const absl::Status st =
        r == ncclInProgress
            ? absl::UnavailableError(absl::StrCat("NCCL peer ", options.peer,
                                                  " did not join within ",
                                                  absl::FormatDuration(options.timeout)))
            : NcclStatus(r, absl::StrCat("joining the NCCL link with ", options.peer));
    if (comm != nullptr) ncclCommAbort(comm);
    return st;
  }
  return std::unique_ptr<ActivationLink>(
      std::make_unique<NcclLink>(options, comm, std::move(stream), std::move(event)));
}

namespace {

class NcclLinkFactory : public LinkFactory {
 public:
  explicit NcclLinkFactory(int device) : device_(device) {}
  std::string name() const override { return "nccl"; }
  size_t id_bytes() const override { return sizeof(ncclUniqueId::internal); }
  absl::StatusOr<std::string> NewId() override { return NewNcclUniqueId(); }
  absl::StatusOr<std::unique_ptr<ActivationLink>> Join(const std::string& id,
                                                       const LinkJoin& join) override {
    NcclLinkOptions options;
    options.role = join.role == LinkJoin::Role::kReceiver ? NcclLinkOptions::Role::kReceiver
                                                          : NcclLinkOptions::Role::kSender;
    options.device = device_;
    options.peer = join.peer;
    options.timeout = join.timeout;
    if (join.max_elements > 0) options.max_elements = join.max_elements;
    return NewNcclLink(id, options);
  }

 private:
  const int device_;
};

}  // namespace

std::shared_ptr<LinkFactory> NewNcclLinkFactory(int device) {
  return std::make_shared<NcclLinkFactory>(device);
}

}  // namespace shardserve
