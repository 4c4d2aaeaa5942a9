// StageRuntime: runs the StepPlans of one pipeline stage.
//
// It owns the loaded ModelStage, validates every plan against the shard (token ids, positions,
// block ids, sizes, sampling parameters) before anything touches the model, receives the
// previous stage's hidden states and sends its own on over ActivationLinks, and on the last
// stage samples with each sequence's parameters. It also keeps the bookkeeping the router's
// block tables imply: which KV blocks live sequences hold (for Stats) and each sequence's token
// history (for repetition penalties). A new sequence may start past position 0 when the router
// gives it shared prefix-cache blocks; it then names the tokens at those positions.
//
// Sampling where the logits are: with a LogitsSampler (SetSampler), the last stage samples a
// step's tokens in the backend's memory (on a GPU: kernels/cuda, SampleOnDevice) and only token
// ids and their logprobs leave it. A step with a constrained sequence (allowed_tokens) or one
// asking for top_logprobs copies its logits to the host and samples there instead. Both follow
// the same (seed, position) rule, so the tokens are the same either way.
//
// With async_sends, a non-last stage hands each step's activations to its own sender thread and
// returns as soon as its compute is done, so the next micro-batch's compute overlaps the
// previous one's transfer. At most one send is in flight: the next Execute() waits for it, and
// a failed send fails every later Execute() and goes to the send-error handler at once (the
// router must hear of it even when no further step comes).
//
// Threading: Execute() calls are serialised internally, in arrival order. Stats() may be called
// from any thread. The links are not owned and must outlive the runtime or be replaced first
// (SetLinks waits for a send in flight).
#ifndef SHARDSERVE_WORKER_STAGE_RUNTIME_H_
#define SHARDSERVE_WORKER_STAGE_RUNTIME_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/wire.h"
#include "kernels/sampling.h"
#include "model/stage.h"
#include "shardserve/v1/worker.pb.h"
#include "worker/activation_link.h"

namespace shardserve {

struct StageStats {
  int64_t kv_blocks_total = 0;
  int64_t kv_blocks_used = 0;
  int64_t live_sequences = 0;
  uint64_t steps = 0;
  uint64_t tokens = 0;
  uint64_t prefix_cached_tokens = 0;  // positions new sequences took from shared blocks
  // Time the stage's device spent on steps (Forward's wall time; a simulated stage's modelled
  // compute time), canaries included.
  double busy_seconds = 0;
};

// Samples every row of `logits` ([rows, vocab] F32 in the stage backend's memory) where it
// lies: row i with params[i], at positions[i], with histories[i] for the penalties, by the rules
// of model/sampler.h.
using LogitsSampler = std::function<absl::StatusOr<std::vector<SampleResult>>(
    const Tensor& logits, absl::Span<const SamplingParams> params,
    absl::Span<const int64_t> positions, absl::Span<const absl::Span<const int32_t>> histories)>;

class StageRuntime {
 public:
  using SendErrorFn = std::function<void(uint64_t step, const absl::Status& status)>;

  // max_step_tokens bounds the tokens of one plan.
  StageRuntime(std::unique_ptr<ModelStage> stage, int64_t max_step_tokens,
               bool async_sends = false);
  ~StageRuntime();

  bool is_first() const { return stage_->layer_begin() == 0; }
  bool is_last() const { return stage_->layer_end() == stage_->config().num_layers; }
  const ModelStage& stage() const { return *stage_; }

  // upstream: where a non-first stage receives; downstream: where a non-last stage sends.
  void SetLinks(ActivationLink* upstream, ActivationLink* downstream);

  // Where failed async sends are reported (nullptr: nowhere). Runs on the sender thread; once
  // this returns, the previous handler is not running and will not run again.
  void SetSendErrorHandler(SendErrorFn handler);

  // Last stage: sample where the logits are (see above); null: copy them to the host. Call
  // before the first Execute.
  void SetSampler(LogitsSampler sampler);
  // Steps whose tokens the sampler picked where the logits lay (not copied to the host).
  uint64_t steps_sampled_in_place() const;

  // Runs one plan. On the last stage the response carries one SampledToken per sequence with
  // `sample` set; other stages return an empty response. Validation failures are
  // INVALID_ARGUMENT naming the field; link failures keep the link's status.
  absl::StatusOr<v1::StepsResponse> Execute(const v1::StepPlan& plan);

  // Drops sequences' histories and releases their blocks.
  void Release(absl::Span<const uint64_t> sequence_ids);
  // Drops every sequence (their router went away); waits for a step in progress. Returns how
  // many there were.
  int64_t ReleaseAll();

  StageStats Stats() const;

 private:
  struct SequenceState {
    int64_t length = 0;            // tokens seen so far
    std::vector<int32_t> history;  // last stage only
    std::vector<int32_t> blocks;   // distinct block ids this sequence holds
  };

  struct PendingSend {
    uint64_t step = 0;
    ActivationTensor tensor;
    ActivationLink* link = nullptr;
  };

  absl::Status Validate(const v1::StepPlan& plan) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The model's view of the plan's sequences; adds their tokens to *total_tokens.
  std::vector<SequenceStep> ToBatch(const v1::StepPlan& plan, int64_t* total_tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The previous stage's hidden states for `step`, checked against the plan's token count.
  absl::StatusOr<ActivationTensor> ReceiveInput(uint64_t step, ActivationLink* upstream,
                                                int64_t total_tokens);
  // Counts the plan's tokens and the blocks its sequences now hold (not for canaries).
  void RecordLocked(const v1::StepPlan& plan, int64_t total_tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Last stage: the tokens sequence `id` has seen (its penalties' history); empty when unknown.
  const std::vector<int32_t>& HistoryLocked(uint64_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Last stage: one sampled token per sequence with `sample`, with its penalties' history.
  absl::Status SampleLocked(const v1::StepPlan& plan, const StepOutput& out,
                            v1::StepsResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Last stage, logits left in the backend's memory: the sampler's tokens.
  absl::Status SampleInPlaceLocked(const v1::StepPlan& plan, const StepOutput& out,
                                   v1::StepsResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Last stage of a stage that picks its own tokens (simulated): returns them as sampled.
  absl::Status TakeChosenTokens(const v1::StepPlan& plan, const StepOutput& out,
                                v1::StepsResponse* response) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReleaseLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a send behind the one in flight; the sticky error of an earlier send, if any.
  absl::Status SendAsync(uint64_t step, ActivationTensor tensor, ActivationLink* link);
  void WaitSendIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(send_mu_);
  void SenderLoop();

  const std::unique_ptr<ModelStage> stage_;
  const int64_t max_step_tokens_;
  absl::Mutex send_mu_;
  std::optional<PendingSend> pending_send_ ABSL_GUARDED_BY(send_mu_);
  bool sending_ ABSL_GUARDED_BY(send_mu_) = false;
  bool stop_sender_ ABSL_GUARDED_BY(send_mu_) = false;
  absl::Status send_error_ ABSL_GUARDED_BY(send_mu_);
  SendErrorFn on_send_error_ ABSL_GUARDED_BY(send_mu_);
  std::thread sender_;
  absl::Mutex exec_mu_;  // serialises Execute
  mutable absl::Mutex mu_;
  ActivationLink* upstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  ActivationLink* downstream_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::unordered_map<uint64_t, SequenceState> sequences_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> block_refs_ ABSL_GUARDED_BY(mu_);
  int64_t blocks_used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t tokens_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t prefix_cached_tokens_ ABSL_GUARDED_BY(mu_) = 0;
  double busy_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  LogitsSampler sampler_ ABSL_GUARDED_BY(mu_);
  uint64_t steps_sampled_in_place_ ABSL_GUARDED_BY(mu_) = 0;
};

// A LogitsSampler for backends whose buffers are host memory (the CPU backend): each row is
// sampled where it lies, without a copy.
LogitsSampler NewHostMemorySampler();

// The position argument the sampler gets for a chunk ending at `end_pos` (exclusive): shared by
// every path that samples, so that a pipeline and the single-process reference agree.
inline int64_t SamplePosition(int64_t end_pos) { return end_pos; }

}  // namespace shardserve

#endif  // SHARDSERVE_WORKER_STAGE_RUNTIME_H_
