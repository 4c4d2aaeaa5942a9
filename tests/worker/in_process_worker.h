// One WorkerServiceImpl behind an in-process gRPC server, for the worker's unit tests, with the
// calls they share: loading layers of stories260K and reading Stats.
#ifndef SHARDSERVE_TESTS_WORKER_IN_PROCESS_WORKER_H_
#define SHARDSERVE_TESTS_WORKER_IN_PROCESS_WORKER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "shardserve/v1/worker.grpc.pb.h"
#include "worker/worker_service.h"

namespace shardserve::testing_worker {

inline constexpr char kStories260K[] = "../shared/models/stories260K";  // 5 layers

class InProcessWorker {
 public:
  // `backend` must outlive the worker; `health`, when set, receives its serving status.
  InProcessWorker(Backend* backend, const WorkerOptions& options,
                  grpc::HealthCheckServiceInterface* health = nullptr)
      : service_(std::make_unique<WorkerServiceImpl>(backend, options)) {
    if (health != nullptr) service_->SetHealth(health);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    stub_ = v1::WorkerService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  ~InProcessWorker() { server_->Shutdown(); }

  v1::WorkerService::Stub& stub() { return *stub_; }

  // Layers [begin, end) of stories260K for `owner`: 16 KV blocks of 16 tokens, steps of up to
  // 64 tokens.
  grpc::Status LoadStories(int begin, int end, const std::string& owner) {
    v1::LoadShardRequest q;
    q.set_model_path(kStories260K);
    q.set_layer_begin(begin);
    q.set_layer_end(end);
    q.set_is_first(begin == 0);
    q.set_is_last(end == 5);
    q.set_kv_block_size(16);
    q.set_kv_num_blocks(16);
    q.set_max_step_tokens(64);
    q.set_owner(owner);
    grpc::ClientContext c;
    v1::LoadShardResponse r;
    return stub_->LoadShard(&c, q, &r);
  }

  v1::StatsResponse Stats() {
    grpc::ClientContext c;
    v1::StatsResponse r;
    EXPECT_TRUE(stub_->Stats(&c, {}, &r).ok());
    return r;
  }

 private:
  std::unique_ptr<WorkerServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

}  // namespace shardserve::testing_worker

#endif  // SHARDSERVE_TESTS_WORKER_IN_PROCESS_WORKER_H_
