// Link set-up between two workers through PrepareLink and ConnectNext, with a fake transport
// behind the LinkFactory interface that NCCL implements: the id hand-off, version and size
// checks, and the joined link carrying a tensor from the sending stage to the receiving one.
#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/wire.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "shardserve/v1/worker.grpc.pb.h"
#include "tests/worker/in_process_worker.h"
#include "worker/link_factory.h"
#include "worker/worker_service.h"

namespace shardserve {
namespace {

constexpr char kOwner[] = "router-a";

// Pairs a receiver and a sender by id in this process: the receiver's end is a mailbox, the
// sender's end deposits into it. Join blocks until both ends joined, like NCCL.
class FakeTransport : public LinkFactory {
 public:
  std::string name() const override { return "fake"; }
  size_t id_bytes() const override { return kNcclLinkIdBytes; }
  absl::StatusOr<std::string> NewId() override {
    absl::MutexLock lock(&mu_);
    std::string id(kNcclLinkIdBytes, '\0');
    const std::string n = absl::StrCat("fake-", ++ids_);
    id.replace(0, n.size(), n);
    return id;
  }
  absl::StatusOr<std::unique_ptr<ActivationLink>> Join(const std::string& id,
                                                       const LinkJoin& join) override {
    absl::MutexLock lock(&mu_);
    Pair& p = pairs_[id];
    ++p.joined;
    if (join.role == LinkJoin::Role::kReceiver) {
      p.mailbox = NewLocalLink(join.peer, join.timeout).release();
      p.receiver_max_elements = join.max_elements;
    }
    auto both = [&p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return p.joined >= 2; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&both), join.timeout)) {
      return absl::DeadlineExceededError("the other end did not join");
    }
    if (join.role == LinkJoin::Role::kReceiver) return std::unique_ptr<ActivationLink>(p.mailbox);
    return std::unique_ptr<ActivationLink>(new SenderEnd(p.mailbox));
  }
  int joined(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return pairs_.count(id) ? pairs_[id].joined : 0;
  }
  // Waits until `n` ends have joined `id` (the receiver joins on its own thread); whether they did
  // within `timeout`.
  bool WaitJoined(const std::string& id, int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return pairs_.count(id) && pairs_[id].joined >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  // The sending end: Send lands in the receiver's mailbox (owned by the receiving worker).
  class SenderEnd : public ActivationLink {
   public:
    explicit SenderEnd(ActivationLink* mailbox) : mailbox_(mailbox) {}
    absl::Status Send(uint64_t step, ActivationTensor t) override {
      return mailbox_->Send(step, std::move(t));
    }
    absl::StatusOr<ActivationTensor> Recv(uint64_t) override {
      return absl::FailedPreconditionError("send end");
    }
    LinkCounters counters() const override { return {.direction = "send", .peer = "fake"}; }
    void Close(const absl::Status&) override {}

   private:
    ActivationLink* const mailbox_;
  };
  struct Pair {
    int joined = 0;
    ActivationLink* mailbox = nullptr;
    int64_t receiver_max_elements = 0;
  };
  absl::Mutex mu_;
  int ids_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, Pair> pairs_ ABSL_GUARDED_BY(mu_);
};

struct Worker {
  Worker(std::shared_ptr<LinkFactory> nccl) : backend(NewCpuBackend({1})) {
    WorkerOptions options;
    options.recv_timeout = absl::Seconds(5);
    options.nccl = std::move(nccl);
    worker = std::make_unique<testing_worker::InProcessWorker>(backend.get(), options);
    stub = &worker->stub();
  }
  grpc::Status Load(int begin, int end) { return worker->LoadStories(begin, end, kOwner); }
  absl::StatusOr<std::string> Prepare(v1::LinkKind kind, uint32_t version = kLinkVersion) {
    v1::PrepareLinkRequest q;
    q.set_owner(kOwner);
    q.set_link(kind);
    q.set_previous_address("stage-0");
    q.set_link_version(version);
    grpc::ClientContext c;
    v1::PrepareLinkResponse r;
    grpc::Status s = stub->PrepareLink(&c, q, &r);
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    EXPECT_EQ(r.link_version(), kLinkVersion);
    return r.link_id();
  }
  grpc::Status Connect(v1::LinkKind kind, const std::string& id, uint32_t version = kLinkVersion) {
    v1::ConnectNextRequest q;
    q.set_owner(kOwner);
    q.set_next_address("stage-1");
    q.set_link(kind);
    q.set_link_id(id);
    q.set_link_version(version);
    grpc::ClientContext c;
    v1::ConnectNextResponse r;
    return stub->ConnectNext(&c, q, &r);
  }
  v1::StatsResponse Stats() { return worker->Stats(); }
  std::unique_ptr<Backend> backend;
  std::unique_ptr<testing_worker::InProcessWorker> worker;
  v1::WorkerService::Stub* stub;
};

TEST(LinkSetup, DescribeOffersTheLinksTheWorkerHas) {
  Worker plain(nullptr);
  Worker nccl(std::make_shared<FakeTransport>());
  for (Worker* w : {&plain, &nccl}) {
    grpc::ClientContext c;
    v1::DescribeResponse d;
    ASSERT_TRUE(w->stub->Describe(&c, {}, &d).ok());
    EXPECT_EQ(d.device(), v1::DEVICE_KIND_CPU);
    EXPECT_EQ(d.link_version(), kLinkVersion);
    EXPECT_FALSE(d.host_id().empty());
    EXPECT_TRUE(d.device_uuid().empty());
    EXPECT_GE(d.total_memory_bytes(), d.free_memory_bytes());
    ASSERT_GE(d.links_size(), 1);
    EXPECT_EQ(d.links(0), v1::LINK_KIND_GRPC);
    EXPECT_EQ(d.links_size(), w == &nccl ? 2 : 1);
    if (w == &nccl) {
      EXPECT_EQ(d.links(1), v1::LINK_KIND_NCCL);
    }
  }
}

TEST(LinkSetup, TheReceiversIdJoinsBothEndsAndCarriesActivations) {
  auto fake = std::make_shared<FakeTransport>();
  Worker first(fake), second(fake);
  ASSERT_TRUE(first.Load(0, 3).ok());
  ASSERT_TRUE(second.Load(3, 5).ok());
  auto id = second.Prepare(v1::LINK_KIND_NCCL);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->size(), static_cast<size_t>(kNcclLinkIdBytes));
  // The receiver is joining; its Stats name the stage it receives from.
  v1::StatsResponse stats = second.Stats();
  ASSERT_GE(stats.links_size(), 1);
  EXPECT_EQ(stats.links(0).direction(), "recv");
  EXPECT_EQ(stats.links(0).peer(), "stage-0");
  // Ids of another length and other protocol versions are refused before joining.
  grpc::Status s = first.Connect(v1::LINK_KIND_NCCL, id->substr(0, 5));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "link_id")) << s.error_message();
  s = first.Connect(v1::LINK_KIND_NCCL, *id, kLinkVersion + 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "link_version")) << s.error_message();
  EXPECT_TRUE(fake->WaitJoined(*id, 1, absl::Seconds(30)));
  EXPECT_EQ(fake->joined(*id), 1);
  // The sender joins with the id; both ends are one link.
  s = first.Connect(v1::LINK_KIND_NCCL, *id);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(fake->joined(*id), 2);

  // A step on the first stage sends its hidden states over the joined link: the second stage's
  // inbound link (the one its steps read) counts them.
  grpc::ClientContext c;
  auto stream = first.stub->Steps(&c);
  v1::StepsRequest step;
  step.set_owner(kOwner);
  step.mutable_plan()->set_step_id(1);
  v1::SequencePlan* seq = step.mutable_plan()->add_sequences();
  seq->set_sequence_id(7);
  for (int t : {1, 2, 3}) seq->add_tokens(t);
  seq->set_start_pos(0);
  seq->add_block_table(0);
  ASSERT_TRUE(stream->Write(step));
  v1::StatsResponse received;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  do {
    received = second.Stats();
  } while ((received.links_size() == 0 || received.links(0).messages() == 0) &&
           absl::Now() < give_up);
  stream->WritesDone();
  ASSERT_GE(received.links_size(), 1);
  EXPECT_EQ(received.links(0).messages(), 1u);
  // 3 rows of the model's hidden size (64), float32.
  EXPECT_EQ(received.links(0).bytes(), 3u * 64 * sizeof(float));
  c.TryCancel();
  stream->Finish();
}

TEST(LinkSetup, AWorkerWithoutTheLinkSaysWhy) {
  Worker plain(nullptr);
  ASSERT_TRUE(plain.Load(3, 5).ok());
  auto id = plain.Prepare(v1::LINK_KIND_NCCL);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(id.status().message(), "does not offer NCCL")) << id.status();
  id = plain.Prepare(v1::LINK_KIND_DEVICE_LOCAL);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kFailedPrecondition) << id.status();
  // gRPC needs no id: PrepareLink answers an empty one, and ConnectNext refuses a stray one.
  id = plain.Prepare(v1::LINK_KIND_GRPC);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_TRUE(id->empty());
  Worker sender(nullptr);
  ASSERT_TRUE(sender.Load(0, 3).ok());
  grpc::Status s = sender.Connect(v1::LINK_KIND_GRPC, "stray");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << s.error_message();
  s = sender.Connect(v1::LINK_KIND_NCCL, std::string(kNcclLinkIdBytes, 'x'));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  // The first stage receives nothing.
  id = sender.Prepare(v1::LINK_KIND_GRPC);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
}

}  // namespace
}  // namespace shardserve
