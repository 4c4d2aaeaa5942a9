// Replica: one pipeline replica at work. It owns the Pipeline (the stages), the Scheduler and
// the KV BlockAllocator, and runs one loop thread that (re)connects the pipeline, sends
// micro-batches as the scheduler allows and tears everything down when a stage fails.
// Results arrive on the pipeline's reader threads, advance the scheduler and feed each
// request's RequestSink with text deltas (TextStream) and token ids.
//
// Health: an idle pipeline gets a canary step (StepPlan.canary) every `canary_interval`, so a
// stage that hangs, drains or lost its shard is found without waiting for traffic; ready()
// turns false as soon as any step or canary fails.
//
// Failover: when a stage fails (a broken stream, an error result, a send that fails, or a step
// overdue past `step_timeout`), every unfinished sequence leaves the pipeline as a Handoff -- its
// token log, its client's sink and the text stream that knows what the client has seen -- and
// goes to the failover handler, which gives it to a healthy replica (Adopt) to be re-prefilled
// from the log. Sampling randomness is a function of (seed, position), so the stream continues
// exactly as it would have. Handoffs no replica takes wait here ("parked") until this pipeline
// reconnects or another becomes ready, for at most `failover_wait`; then they end with
// UNAVAILABLE naming the failed stage.
//
// Thread-safe.
#ifndef SHARDSERVE_ROUTER_REPLICA_H_
#define SHARDSERVE_ROUTER_REPLICA_H_

#include <atomic>
#include <functional>
#include <map>
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
#include "router/worker_registry.h"
#include "shardserve/v1/inference.pb.h"

namespace shardserve {

// Where a request's output accumulates until its handler writes it to the client.
class RequestSink {
 public:
  // Appends to the pending response. A finish reason or an error ends the stream.
  void Push(const std::string& text, const v1::SampledToken* token, bool logprobs,
            v1::FinishReason finish, const v1::Usage* usage);
  void Fail(const absl::Status& status);
  // Why the request waits for a pipeline (its own failed), or empty: what its client is told
  // when its deadline comes first.
  void SetWaiting(std::string reason);
  std::string waiting() const;

  // Waits up to `timeout` for output; moves it into `out`. Returns true when `out` has
  // something or the stream has ended. With `min_tokens` > 1, once output is there it waits up
  // to `max_delay` more for that many tokens (or the end), to send them in one message.
  bool Take(absl::Duration timeout, v1::GenerateResponse* out, bool* done, absl::Status* error,
            int min_tokens = 1, absl::Duration max_delay = absl::ZeroDuration());

 private:
  mutable absl::Mutex mu_;
  v1::GenerateResponse pending_ ABSL_GUARDED_BY(mu_);
  bool has_pending_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::string waiting_ ABSL_GUARDED_BY(mu_);
};

struct ReplicaOptions {
  PipelineOptions pipeline;
  SchedulerOptions scheduler;
  const Tokenizer* tokenizer = nullptr;  // must outlive the replica
  bool prefix_caching = true;
  // A step not answered within this marks the pipeline failed.
  absl::Duration step_timeout = absl::Seconds(10);
  // How long sequences from a failed pipeline wait for one to take them.
  absl::Duration failover_wait = absl::Seconds(30);
  // An idle pipeline gets a canary step this long after its last answer (zero: never).
  absl::Duration canary_interval = absl::Seconds(1);
  // Where spare workers come from when a stage's worker is unreachable (may be null).
  WorkerRegistry* registry = nullptr;
};

// A sequence leaving a failed pipeline, with what its client has seen so far.
struct Handoff {
  std::shared_ptr<Sequence> sequence;
  std::shared_ptr<RequestSink> sink;
  std::unique_ptr<TextStream> text;
  absl::Time since;    // when its pipeline failed
  std::string reason;  // why, for the client if nothing takes it in time
};

class Replica;
// Places handoffs from `from` on other replicas; returns those it could not place.
using FailoverFn = std::function<std::vector<Handoff>(Replica* from, std::vector<Handoff>)>;

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
  // Why the pipeline last failed over; empty before any failover.
  std::string last_failover() const;
  // The stages' current workers (a spare may have replaced one).
  std::vector<StageEndpoint> stages() const;

  // UNAVAILABLE when the pipeline is not ready.
  absl::Status Submit(std::shared_ptr<Sequence> sequence, std::shared_ptr<RequestSink> sink,
                      std::vector<std::string> stop_strings);
  // Ends a sequence early (client cancel or deadline); its blocks are freed on every stage.
  void Cancel(uint64_t sequence_id);

  // Set before Start.
  void set_failover(FailoverFn fn) { failover_ = std::move(fn); }
  // Takes over a sequence from a failed pipeline. UNAVAILABLE (leaving `handoff` as it was)
  // when this pipeline is not ready; OK and nothing queued when its client is gone.
  absl::Status Adopt(Handoff& handoff);

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
  enum class ConnectResult { kReady, kNotReady, kStopping };
  // One attempt to set the pipeline up (or to put a spare in place of an unusable stage); waits
  // out `retry_wait` (doubled, at most 4 s) after a failure, logging its reason once per change.
  ConnectResult ConnectPipeline(std::string* logged_error, absl::Duration* retry_wait);
  // The pipeline failed (failure_): its sequences go to other replicas or wait here.
  void FailOverAndUnlock() ABSL_UNLOCK_FUNCTION(mu_);
  void OnResult(const v1::StepsResponse& result);
  // Applies a result: advances the scheduler and feeds the requests' sinks.
  void DeliverLocked(const v1::StepsResponse& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the next plan and sends it with mu_ released; returns whether there was one.
  bool SendNextPlanAndUnlock() ABSL_UNLOCK_FUNCTION(mu_);
  void OnFailure(const absl::Status& status);
  void FailAllLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes every unfinished sequence off the failed pipeline.
  std::vector<Handoff> TakeAllLocked(const absl::Status& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Offers parked handoffs to the failover handler (mu_ not held); expires those past
  // failover_wait.
  void RetryParked();
  void EnqueueLocked(Handoff handoff) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int index_;
  std::vector<StageEndpoint> stages_ ABSL_GUARDED_BY(mu_);
  const ReplicaOptions options_;
  std::unique_ptr<Pipeline> pipeline_;
  std::thread loop_;
  std::atomic<bool> ready_{false};
  std::atomic<int64_t> load_{0};
  std::atomic<uint64_t> failures_{0};
  // Pipeline failures by the failing stage's status code ("UNAVAILABLE", ...).
  std::map<std::string, uint64_t> failures_by_code_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> resumed_{0};
  FailoverFn failover_;

  mutable absl::Mutex mu_;
  // Orders sends: taken while holding mu_, which is then let go; never held while taking mu_.
  absl::Mutex send_mu_ ABSL_ACQUIRED_AFTER(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_) = "connecting";
  std::string last_failover_ ABSL_GUARDED_BY(mu_);
  BlockAllocator allocator_ ABSL_GUARDED_BY(mu_);
  Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Client> clients_ ABSL_GUARDED_BY(mu_);
  std::vector<Handoff> parked_ ABSL_GUARDED_BY(mu_);
  absl::Time last_answer_ ABSL_GUARDED_BY(mu_);  // last result or canary sent
};

}  // namespace shardserve

#endif  // SHARDSERVE_ROUTER_REPLICA_H_
