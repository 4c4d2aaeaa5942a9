// The gRPC activation link's sending end against a next stage that stops reading: Close must end
// a Send blocked on flow control, and the stream carries the credential and the owner.
#include "worker/grpc_link.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <future>
#include <thread>

#include "common/cluster_auth.h"
#include "gtest/gtest.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve {
namespace {

// Accepts the activation stream, records its metadata, and never reads a message until the
// call is cancelled.
class StalledStage final : public v1::WorkerService::Service {
 public:
  grpc::Status Activations(grpc::ServerContext* context,
                           grpc::ServerReader<v1::ActivationsRequest>*,
                           v1::ActivationsResponse*) override {
    const auto& md = context->client_metadata();
    auto owner = md.find(kOwnerMetadata);
    auto secret = md.find(kClusterSecretMetadata);
    if (owner != md.end()) owner_ = std::string(owner->second.data(), owner->second.size());
    if (secret != md.end()) secret_ = std::string(secret->second.data(), secret->second.size());
    opened_ = true;
    while (!context->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return grpc::Status::CANCELLED;
  }
  std::atomic<bool> opened_{false};
  std::string owner_, secret_;
};

TEST(GrpcSendLink, CloseEndsASendBlockedOnFlowControl) {
  SetProcessClusterSecret("link-test-secret-0123456789");
  StalledStage stage;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.RegisterService(&stage);
  auto server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  auto link = NewGrpcSendLink("127.0.0.1:" + std::to_string(port), "router-a", absl::Seconds(5));
  ASSERT_TRUE(link.ok()) << link.status();
  ActivationLink* l = link->get();

  // Sends 1 MiB tensors until one blocks: the receiver reads nothing, so flow control stops
  // the writer after the transport's windows fill.
  std::atomic<uint64_t> sent{0};
  auto sender = std::async(std::launch::async, [&] {
    while (true) {
      ActivationTensor t;
      t.rows = 256;
      t.cols = 1024;
      t.data.assign(t.rows * t.cols, 1.0f);
      absl::Status s = l->Send(sent.load(), std::move(t));
      if (!s.ok()) return s;
      ++sent;
    }
  });
  // Blocked: no send completes for a while (each completes in well under a millisecond when
  // the window is open).
  uint64_t last = ~0ull;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    const uint64_t now = sent.load();
    if (now == last && now > 0) break;
    last = now;
    absl::SleepFor(absl::Milliseconds(300));
  }
  ASSERT_TRUE(stage.opened_);
  ASSERT_EQ(sender.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the sender never blocked";

  auto closing = std::async(std::launch::async, [&] { l->Close(absl::AbortedError("replaced")); });
  ASSERT_EQ(closing.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "Close waited on the blocked Send";
  ASSERT_EQ(sender.wait_for(std::chrono::seconds(5)), std::future_status::ready)
      << "the blocked Send did not end";
  EXPECT_FALSE(sender.get().ok());
  EXPECT_FALSE(l->Send(0, ActivationTensor{1, 1024, std::vector<float>(1024)}).ok());
  EXPECT_EQ(stage.owner_, "router-a");
  EXPECT_EQ(stage.secret_, "link-test-secret-0123456789");
  server->Shutdown();
}

}  // namespace
}  // namespace shardserve
