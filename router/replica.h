// Replica: one pipeline replica at work. It owns the Pipeline (the stages), the Scheduler and
// the KV BlockAllocator, and runs one loop thread that (re)connects the pipeline, sends
// micro-batches as the scheduler allows and tears everything down when a stage fails.
// Results arrive on the pipeline's reader threads, advance the scheduler and feed each
// request's RequestSink with text deltas (TextStream) and token ids.
//
// When the pipeline fails, every sequence on it ends with UNAVAILABLE naming the worker, and
// the loop keeps trying to reconnect (re-queueing sequences from their token log is the
// failover work of a later change: Sequence already keeps that log).
//
// Thread-safe.
#ifndef SHARDSERVE_ROUTER_REPLICA_H_
#define SHARDSERVE_ROUTER_REPLICA_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "model/tokenizer/tokenizer.h"
#include "router/block_allocator.h"
#include "router/metrics.h"
#include "router/pipeline.h"
#include "router/scheduler.h"
#include "router/text_stream.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

// Where a request's output accumulates until its handler writes it to the client.
class RequestSink {
 public:
  // Appends to the pending response. A finish reason or an error ends the stream.
  void Push(const std::string& text, const v1::SampledToken* token, bool logprobs,
            v1::FinishReason finish, const v1::Usage* usage);
  void Fail(const absl::Status& status);

  // Waits up to `timeout` for output; moves it into `out`. Returns true when `out` has
  // something or the stream has ended.
  bool Take(absl::Duration timeout, v1::GenerateResponse* out, bool* done, absl::Status* error);

 private:
  absl::Mutex mu_;
  v1::GenerateResponse pending_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
};

struct ReplicaOptions {
  PipelineOptions pipeline;
  SchedulerOptions scheduler;
  const Tokenizer* tokenizer = nullptr;  // must outlive the replica
  bool prefix_caching = true;
};

// What prefix-aware routing weighs for one replica and one prompt.
struct RoutingLoad {
  int64_t cached_blocks = 0;   // leading full blocks of the prompt this replica has cached
  int64_t prompt_blocks = 0;   // full blocks of the prompt
  int64_t active_blocks = 0;   // KV blocks its running sequences hold
  int64_t waiting_blocks = 0;  // blocks its queued sequences will need
};

class Replica {
 public:
  Replica(int index, std::vector<StageEndpoint> stages, ReplicaOptions options);
  ~Replica();

  void Start();
  void Stop();

  int index() const { return index_; }
  bool ready() const { return ready_; }
  // Sequences waiting or running, for least-loaded routing.
  int64_t load() const { return load_; }
  // Why the replica is not ready, when it is not.
  std::string last_error() const;
  const std::vector<StageEndpoint>& stages() const { return stages_; }

  // UNAVAILABLE when the pipeline is not ready.
  absl::Status Submit(std::shared_ptr<Sequence> sequence, std::shared_ptr<RequestSink> sink,
                      std::vector<std::string> stop_strings);
  // Ends a sequence early (client cancel or deadline); its blocks are freed on every stage.
  void Cancel(uint64_t sequence_id);

  // Prefix overlap with `tokens` and current load, for routing.
  RoutingLoad Routing(absl::Span<const int32_t> tokens) const;

  absl::StatusOr<std::vector<v1::StatsResponse>> WorkerStats() const;
  // Queue, KV and failure counts for /metrics.
  ReplicaGauges Gauges() const;
  int64_t kv_blocks() const { return options_.pipeline.kv_num_blocks; }

 private:
  struct Client {
    std::shared_ptr<Sequence> sequence;
    std::shared_ptr<RequestSink> sink;
    std::unique_ptr<TextStream> text;
  };

  void Loop();
  void OnResult(const v1::StepsResponse& result);
  // Applies a result: advances the scheduler and feeds the requests' sinks.
  void DeliverLocked(const v1::StepsResponse& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the next plan and sends it with mu_ released; returns whether there was one.
  bool SendNextPlanAndUnlock() ABSL_UNLOCK_FUNCTION(mu_);
  void OnFailure(const absl::Status& status);
  void FailAllLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int index_;
  const std::vector<StageEndpoint> stages_;
  const ReplicaOptions options_;
  std::unique_ptr<Pipeline> pipeline_;
  std::thread loop_;
  std::atomic<bool> ready_{false};
  std::atomic<int64_t> load_{0};
  std::atomic<uint64_t> failures_{0};

  mutable absl::Mutex mu_;
  // Orders sends: taken while holding mu_, which is then let go; never held while taking mu_.
  absl::Mutex send_mu_ ABSL_ACQUIRED_AFTER(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_) = "connecting";
  BlockAllocator allocator_ ABSL_GUARDED_BY(mu_);
  Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_REPLICA_H_
