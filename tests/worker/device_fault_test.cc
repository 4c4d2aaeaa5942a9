// A worker whose device fails (a sticky error the backend reports through Health) stops serving
// for good: the failed step and every later one answer UNAVAILABLE naming the fault, both
// health entries turn NOT_SERVING, LoadShard is refused, and Stats says why. A step that fails
// for its own reasons (a bad plan) leaves a healthy device serving. The fault is injected with
// the same FaultyBackend that `shardserve-worker --fault-device-after-steps` uses.
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <map>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "shardserve/v1/worker.grpc.pb.h"
#include "tests/worker/in_process_worker.h"
#include "worker/device_faults.h"
#include "worker/worker_service.h"

namespace shardserve {
namespace {

constexpr char kOwner[] = "router-a";
constexpr char kService[] = "shardserve.v1.WorkerService";

// Records the serving status the service sets for each health entry.
class RecordedHealth : public grpc::HealthCheckServiceInterface {
 public:
  void SetServingStatus(const std::string& service, bool serving) override {
    absl::MutexLock lock(&mu_);
    serving_[service] = serving;
  }
  void SetServingStatus(bool serving) override {
    absl::MutexLock lock(&mu_);
    for (auto& [name, s] : serving_) s = serving;
  }
  // -1: never set.
  int serving(const std::string& service) {
    absl::MutexLock lock(&mu_);
    auto it = serving_.find(service);
    return it == serving_.end() ? -1 : it->second;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, bool> serving_ ABSL_GUARDED_BY(mu_);
};

// One in-process worker on the CPU backend; with `fail_at_step` >= 0 its device fails at that
// step.
struct Worker {
  explicit Worker(int64_t fail_at_step) : backend(NewCpuBackend({1})) {
    WorkerOptions options;
    options.recv_timeout = absl::Seconds(5);
    Backend* b = backend.get();
    if (fail_at_step >= 0) {
      faulty = NewFaultyBackend(b, fail_at_step);
      b = faulty.get();
      options.device_faults = faulty.get();
    }
    worker = std::make_unique<testing_worker::InProcessWorker>(b, options, &health);
  }
  grpc::Status Load() { return worker->LoadStories(0, 5, kOwner); }
  v1::StatsResponse Stats() { return worker->Stats(); }

  RecordedHealth health;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<FaultyBackend> faulty;
  std::unique_ptr<testing_worker::InProcessWorker> worker;
};

// A Steps stream of the whole model: each Run sends one plan and reads its answer.
class Steps {
 public:
  explicit Steps(Worker& w) : stream_(w.worker->stub().Steps(&context_)) {}
  ~Steps() {
    stream_->WritesDone();
    context_.TryCancel();
    stream_->Finish();
  }
  // Sequence 7's tokens at start_pos, sampling the next token greedily; the step's answer.
  v1::StepsResponse Run(uint64_t step_id, std::vector<int> tokens, int start_pos, int block = 0) {
    v1::StepsRequest req;
    req.set_owner(kOwner);
    req.mutable_plan()->set_step_id(step_id);
    v1::SequencePlan* seq = req.mutable_plan()->add_sequences();
    seq->set_sequence_id(7);
    for (int t : tokens) seq->add_tokens(t);
    seq->set_start_pos(start_pos);
    seq->add_block_table(block);
    seq->set_sample(true);
    seq->mutable_sampling()->set_top_p(1);
    seq->mutable_sampling()->set_repetition_penalty(1);
    v1::StepsResponse resp;
    EXPECT_TRUE(stream_->Write(req));
    EXPECT_TRUE(stream_->Read(&resp));
    EXPECT_EQ(resp.step_id(), step_id);
    return resp;
  }

 private:
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::StepsRequest, v1::StepsResponse>> stream_;
};

TEST(DeviceFault, TheWorkerStopsServingAndSaysWhy) {
  Worker w(/*fail_at_step=*/2);
  ASSERT_TRUE(w.Load().ok());
  EXPECT_EQ(w.health.serving(""), 1);
  EXPECT_EQ(w.health.serving(kService), 1);
  {
    Steps steps(w);
    // Steps 0 and 1 run on a healthy device and sample a token.
    v1::StepsResponse r = steps.Run(1, {1, 2, 3}, 0);
    EXPECT_EQ(r.error_code(), 0) << r.error_message();
    ASSERT_EQ(r.tokens_size(), 1);
    r = steps.Run(2, {r.tokens(0).token_id()}, 3);
    EXPECT_EQ(r.error_code(), 0) << r.error_message();
    EXPECT_EQ(w.Stats().device_error(), "");
    // Step 2 fails on the device: UNAVAILABLE, so the router fails the pipeline over.
    r = steps.Run(3, {5}, 4);
    EXPECT_EQ(r.error_code(), grpc::StatusCode::UNAVAILABLE) << r.error_message();
    EXPECT_TRUE(absl::StrContains(r.error_message(), "device failed: injected device fault"))
        << r.error_message();
    EXPECT_EQ(r.tokens_size(), 0);
    // And so does every later step.
    r = steps.Run(4, {5}, 4);
    EXPECT_EQ(r.error_code(), grpc::StatusCode::UNAVAILABLE) << r.error_message();
    EXPECT_TRUE(absl::StrContains(r.error_message(), "device failed")) << r.error_message();
  }
  EXPECT_EQ(w.health.serving(""), 0);
  EXPECT_EQ(w.health.serving(kService), 0);
  EXPECT_TRUE(absl::StrContains(w.Stats().device_error(), "injected device fault"));
  // No router may load it again: a spare should take its place.
  grpc::Status s = w.Load();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_TRUE(absl::StrContains(s.error_message(), "device failed")) << s.error_message();
  EXPECT_EQ(w.health.serving(""), 0);
}

TEST(DeviceFault, AStepsOwnErrorLeavesAHealthyDeviceServing) {
  Worker w(/*fail_at_step=*/-1);
  ASSERT_TRUE(w.Load().ok());
  Steps steps(w);
  // Block 99 is outside the 16-block pool: the plan is refused, the device is fine.
  v1::StepsResponse r = steps.Run(1, {1, 2, 3}, 0, /*block=*/99);
  EXPECT_EQ(r.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << r.error_message();
  EXPECT_EQ(w.health.serving(""), 1);
  EXPECT_EQ(w.health.serving(kService), 1);
  EXPECT_EQ(w.Stats().device_error(), "");
  r = steps.Run(2, {1, 2, 3}, 0);
  EXPECT_EQ(r.error_code(), 0) << r.error_message();
  EXPECT_EQ(r.tokens_size(), 1);
}

}  // namespace
}  // namespace shardserve
