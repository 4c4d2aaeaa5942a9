// Pipeline: the router's one fan-out primitive to the stages of one pipeline replica.
//
// Connect() checks every worker (Describe), loads each stage's layer range (LoadShard), wires
// the activation links stage to stage (ConnectNext) and opens one Steps control stream per
// worker, with a reader thread each. Send() writes a StepPlan to every stage in stage order and
// returns UNAVAILABLE naming the stage whose stream is broken (it does not call `on_failure`, so
// a caller may hold its own locks around it).
// The last stage's results go to `on_result`; the first failure anywhere (an error result, a
// broken stream) goes once to `on_failure` with UNAVAILABLE naming the worker's address and
// stage. Callers do not know or care what device a stage runs on.
//
// Unary calls carry deadlines; the Steps streams live as long as the pipeline and are torn down
// by Close(). Threading: Connect and Close are called from one thread (the replica's loop);
// Send may also be called from `on_result`, but never concurrently with another Send or with
// Connect. The callbacks run on reader threads and must not call Close.
#ifndef SHARDSERVE_ROUTER_PIPELINE_H_
#define SHARDSERVE_ROUTER_PIPELINE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/placement.h"
#include "shardserve/v1/worker.grpc.pb.h"

namespace shardserve {

struct StageEndpoint {
  std::string address;
  LayerRange layers;
};

struct PipelineOptions {
  std::string model_path;
  // The served model name, for the workers' metric labels (LoadShardRequest.model_name).
  std::string model_name;
  int64_t num_layers = 0;
  int32_t kv_block_size = 16;
  int32_t kv_num_blocks = 0;
  int32_t max_step_tokens = 256;
  absl::Duration rpc_timeout = absl::Seconds(5);
  absl::Duration load_timeout = absl::Seconds(300);
  // This router's identity for the workers' leases (LoadShardRequest.owner).
  std::string owner;
};

// A stub with the channel settings every router-to-worker call uses.
std::unique_ptr<v1::WorkerService::Stub> NewWorkerStub(const std::string& address);

class Pipeline {
 public:
  using ResultFn = std::function<void(const v1::StepsResponse&)>;
  using FailureFn = std::function<void(const absl::Status&)>;

  Pipeline(std::vector<StageEndpoint> stages, PipelineOptions options);
  ~Pipeline();

  absl::Status Connect(ResultFn on_result, FailureFn on_failure);
  absl::Status Send(v1::StepPlan plan);
  void Close();

  // Each stage's Stats, in stage order.
  absl::StatusOr<std::vector<v1::StatsResponse>> Stats() const;

  const std::vector<StageEndpoint>& stages() const { return stages_; }

  // The stage whose worker the last Connect() could not reach (Describe failed), found leased
  // by another router, or found unable to serve (LoadShard UNAVAILABLE: its device failed, or it
  // is shutting down); -1 otherwise.
  int unusable_stage() const { return unusable_stage_; }
  // Whether that worker is leased by another router (rather than unreachable or failed).
  bool unusable_is_leased() const { return unusable_is_leased_; }
  // Why that worker cannot serve: "unreachable", "leased by another router" or the worker's
  // reason.
  const std::string& unusable_why() const { return unusable_why_; }
  // Points stage `i` at another worker; only while not connected (Connect/Close's thread).
  void ReplaceStage(int i, const std::string& address);

  // The link kind of each hop (stage i -> i+1) as the last successful Connect chose it.
  std::vector<v1::LinkKind> links() const {
    absl::MutexLock lock(&links_mu_);
    return links_;
  }

 private:
  struct Stream {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::StepsRequest, v1::StepsResponse>> stream;
    std::thread reader;
    bool finished = false;  // Finish() ran (under write_mu_): no more writes
  };
  // Finishes stage `i`'s control stream once (waiting out a write in flight) and returns the
  // worker's real status.
  grpc::Status FinishStream(int i);

  absl::Status WorkerError(int stage, absl::string_view what, const grpc::Status& s) const;
  // Chooses each hop's link from the stages' Describe and sets it up (PrepareLink on the
  // receiver where the link needs an id, then ConnectNext), from the last stage back.
  absl::Status LinkStages(const std::vector<v1::DescribeResponse>& described);
  void ReadLoop(int stage);
  void Fail(const absl::Status& status);

  std::vector<StageEndpoint> stages_;
  const PipelineOptions options_;
  int unusable_stage_ = -1;
  bool unusable_is_leased_ = false;
  std::string unusable_why_;
  std::vector<std::unique_ptr<v1::WorkerService::Stub>> stubs_;
  std::vector<Stream> streams_;
  // Writes to the control streams and their Finish() never overlap (gRPC forbids it).
  absl::Mutex write_mu_;
  ResultFn on_result_;
  FailureFn on_failure_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> closing_{false};
  mutable absl::Mutex links_mu_;
  std::vector<v1::LinkKind> links_ ABSL_GUARDED_BY(links_mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_PIPELINE_H_
